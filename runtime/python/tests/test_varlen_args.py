"""power_retention over packed sequences (cu_seqlens) on the CPU (no GPU, no libprt.so): the offsets'
checks name the argument, the expected and the received; the packed path hands the varlen plans the
tables of dsl/plan-varlen.ts's layout, one state per sequence, and routes gradients back (the plan
launches replaced by fakes with the manifest's output names and shapes). Skips, saying why, without
torch (CI). test_torch.py checks the numbers on the GPU."""

import unittest

try:
    from .cpu_torch import cpu_torch
except ImportError:  # run as a script
    from cpu_torch import cpu_torch

torch, REASON = cpu_torch("test_varlen_args")


@unittest.skipIf(REASON is not None, REASON or "")
class VarlenArgumentsTest(unittest.TestCase):
    """Fakes: Y = 2 Q + V, saved outputs 0.5, Sfinal = 1; the backward gives dQ = 2 dY, dK = 0, dV = dY,
    dlogG = 3, dS0 = 4, dZ0 = 5."""

    def setUp(self):
        from prt import ops

        self.ops = ops
        self.calls = []
        self.real = (ops._varlen_forward_impl, ops._varlen_backward_impl)
        ops._varlen_forward_impl, ops._varlen_backward_impl = self.fake_forward, self.fake_backward

    def tearDown(self):
        self.ops._varlen_forward_impl, self.ops._varlen_backward_impl = self.real

    def names(self, kind, Q, K, V, logG, S0, deg, chunk, final_state, ns, nc):
        spec = self.ops._spec_of(Q, V, deg, chunk)
        return self.ops._varlen_names(kind, spec, Q.shape[1], Q.shape[2], K.shape[2], ns, nc, logG is not None, S0 is not None, final_state)

    def fake_forward(self, Q, K, V, logG, S0, Z0, tables, deg, scale, chunk, final_state, ns, nc):
        self.calls.append(("forward", {n: t.tolist() for n, t in tables.items()}, ns, nc, chunk))
        out = []
        for n, dt, shape in self.names("forward_varlen", Q, K, V, logG, S0, deg, chunk, final_state, ns, nc):
            fill = 1.0 if n in ("Sfinal", "Zfinal") else 0.5
            out.append((2 * Q.float() + V.float()).to(Q.dtype) if n == "Y" else torch.full(shape, fill, dtype=self.ops._TORCH[dt]))
        return out

    def fake_backward(self, Q, K, V, logG, S0, Z0, tables, saved, dY, dSfinal, dZfinal, deg, scale, chunk, final_state, ns, nc):
        self.calls.append(("backward", {n: t.tolist() for n, t in tables.items()}, ns, nc, chunk))
        if final_state:
            self.assertEqual(tuple(dSfinal.shape)[0], ns)
        g = {"dQ": (2 * dY.float()).to(Q.dtype), "dK": torch.zeros_like(K), "dV": dY.clone()}
        if logG is not None:
            g["dlogG"] = torch.full_like(logG, 3.0)
        if S0 is not None:
            g["dS0"], g["dZ0"] = torch.full_like(S0, 4.0), torch.full_like(Z0, 5.0)
        return [g.get(n, torch.zeros(shape, dtype=self.ops._TORCH[dt]))
                for n, dt, shape in self.names("backward_varlen", Q, K, V, logG, S0, deg, chunk, final_state, ns, nc)]

    def inputs(self, t=100, hq=2, h=2, d=64):  # hq = h: the fake Y = 2 Q + V
        g = torch.Generator().manual_seed(0)
        Q = torch.randn(1, t, hq, d, generator=g).to(torch.bfloat16).requires_grad_(True)
        K, V = (torch.randn(1, t, h, d, generator=g).to(torch.bfloat16).requires_grad_(True) for _ in range(2))
        G = (-torch.rand(1, t, h, generator=g)).requires_grad_(True)
        return Q, K, V, G

    def test_offsets_errors_name_the_argument(self):
        Q = torch.zeros(1, 10, 2, 64)
        for cu, exc, msg in [
            ([0, 10], TypeError, "cu_seqlens: expected a torch.Tensor of int32 offsets [ns + 1], received list"),
            (torch.tensor([0, 10]), TypeError, "cu_seqlens: expected dtype torch.int32, received torch.int64"),
            (torch.tensor([[0, 10]], dtype=torch.int32), ValueError, "cu_seqlens: expected a 1-D tensor of at least 2 offsets"),
            (torch.tensor([0], dtype=torch.int32), ValueError, "cu_seqlens: expected a 1-D tensor of at least 2 offsets"),
            (torch.tensor([1, 10], dtype=torch.int32), ValueError, "cu_seqlens[0]: expected 0 (the first sequence starts the packed tensor), received 1"),
            (torch.tensor([0, 6, 4, 10], dtype=torch.int32), ValueError, "cu_seqlens[2]: expected offsets that do not decrease, received 4 after 6"),
            (torch.tensor([0, 4, 9], dtype=torch.int32), ValueError, "cu_seqlens[2]: expected the packed length 10 (the t of Q, K, V), received 9"),
        ]:
            with self.assertRaises(exc) as e:
                self.ops._check_cu_seqlens(cu, Q)
            self.assertIn(msg, str(e.exception))
        with self.assertRaises(ValueError) as e:
            self.ops._check_cu_seqlens(torch.tensor([0, 10], dtype=torch.int32), torch.zeros(2, 10, 2, 64))
        self.assertIn("Q: expected b = 1 with cu_seqlens (the sequences packed along t: [1, total, hq, d]), received b = 2", str(e.exception))
        self.assertEqual(self.ops._check_cu_seqlens(torch.tensor([0, 3, 3, 10], dtype=torch.int32), Q), [0, 3, 3, 10])

    def test_the_packed_path_passes_the_layout_and_routes_gradients(self):
        from prt import _manifest

        Q, K, V, G = self.inputs()
        D = self.ops.state_features(64, 2)
        cu = [0, 30, 30, 95, 100]  # 4 sequences, one empty, boundaries inside chunks of 64
        S0 = torch.zeros(4, 2, D, 64, requires_grad=True)
        Z0 = torch.zeros(4, 2, D, requires_grad=True)
        Y, (S, Z) = self.ops._varlen(Q, K, V, G, S0, Z0, cu, 2, 0.125, 64, True)
        lay = _manifest.varlen_layout(cu, 64)
        self.assertEqual(self.calls[0], ("forward", {n: lay[n] for n in ("chunkSrc", "chunkLen", "seqChunk")}, 4, 4, 64))
        self.assertEqual(lay["chunkSrc"], [0, 30, 94, 95])  # 30 | 0 | 64 + 1 | 5
        self.assertEqual((tuple(Y.shape), tuple(S.shape), tuple(Z.shape)), ((1, 100, 2, 64), (4, 2, D, 64), (4, 2, D)))
        self.assertTrue(Y.requires_grad and S.requires_grad)
        dY = torch.randn_like(Y)
        gq, gk, gv, gg, gs, gz = torch.autograd.grad((Y * dY).float().sum() + S.sum(), (Q, K, V, G, S0, Z0))
        self.assertEqual(self.calls[1][0], "backward")
        self.assertTrue(torch.equal(gq, (2 * dY.float()).to(torch.bfloat16)) and torch.equal(gv, dY))
        self.assertTrue(bool((gk == 0).all()) and bool((gg == 3).all()) and bool((gs == 4).all()) and bool((gz == 5).all()))

    def test_ungated_without_states(self):
        Q, K, V, _ = self.inputs(t=64)
        Y = self.ops._varlen(Q, K, V, None, None, None, [0, 64], 2, 0.125, 64, False)
        gq, = torch.autograd.grad(Y.float().sum(), (Q,))
        self.assertTrue(torch.equal(gq, torch.full_like(Q, 2.0)))
        self.assertEqual([c[0] for c in self.calls], ["forward", "backward"])


if __name__ == "__main__":
    unittest.main()
