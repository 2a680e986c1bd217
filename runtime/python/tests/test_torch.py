"""power_retention on the GPU against a float64 reference of SPEC.md (quadratic form), with
autograd, torch.compile(fullgraph=True), CUDA-graph capture and the inference function. Skips,
saying why, without torch or a GPU (run on the GPU machine: see runtime/python/README.md)."""

import math
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

try:
    import torch
except ImportError:  # CI: no torch
    torch = None

REASON = None
if torch is None:
    REASON = "torch is not installed"
elif not torch.cuda.is_available():
    REASON = "torch sees no CUDA device"
if REASON:
    print(f"test_torch: skipped: {REASON}", file=sys.stderr)

TOL = {"f32": 1e-4, "f16": 3e-3, "bf16": 1e-2}  # SPEC.md, outputs; gradients twice these
DT = {} if torch is None else {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def reference(Q, K, V, logG, deg, scale, S0=None, Z0=None):
    """SPEC.md in float64: y_i = sum_j a_ij v_j / sum_j a_ij, a_ij = (scale q_i.k_j)^p exp(L_i - L_j), j <= i,
    plus the initial state's part phi(q_i)^T S0 exp(L_i) / (phi(q_i)^T Z0 exp(L_i)) when given (through the
    quadratic form: S0 enters as extra weight; here only checked with S0 None)."""
    Q, K, V = Q.double(), K.double(), V.double()
    b, t, hq, d = Q.shape
    h = K.shape[2]
    g = hq // h
    Kx = K.repeat_interleave(g, dim=2)
    Vx = V.repeat_interleave(g, dim=2)
    L = torch.zeros(b, t, h, dtype=torch.float64, device=Q.device) if logG is None else logG.double().cumsum(1)
    Lx = L.repeat_interleave(g, dim=2)  # [b, t, hq]
    s = torch.einsum("bihd,bjhd->bhij", Q, Kx) * scale
    decay = Lx.permute(0, 2, 1)[:, :, :, None] - Lx.permute(0, 2, 1)[:, :, None, :]
    mask = torch.ones(t, t, dtype=torch.bool, device=Q.device).tril()
    a = torch.where(mask, s.pow(deg) * torch.exp(torch.where(mask, decay, torch.zeros_like(decay))), torch.zeros_like(s))
    num = torch.einsum("bhij,bjhe->bihe", a, Vx)
    den = a.sum(-1).permute(0, 2, 1)[..., None]
    return torch.where(den > 0, num / den, torch.zeros_like(num))


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


WORST = {}  # (dtype, output) -> (worst relative error against float64, case): printed at the end


def note(dtype, name, err, label):
    if err > WORST.get((dtype, name), (-1.0, ""))[0]:
        WORST[(dtype, name)] = (err, label)


def inputs(b, t, hq, h, d, dtype, gated, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    Q = torch.randn(b, t, hq, d, device="cuda", generator=g).to(DT[dtype])
    K = torch.randn(b, t, h, d, device="cuda", generator=g).to(DT[dtype])
    V = torch.randn(b, t, h, d, device="cuda", generator=g).to(DT[dtype])
    G = torch.nn.functional.logsigmoid(torch.randn(b, t, h, device="cuda", generator=g) + 3) if gated else None
    return Q, K, V, G


@unittest.skipIf(REASON is not None, REASON or "")
class TorchTest(unittest.TestCase):
    def setUp(self):
        import prt

        self.prt = prt

    @classmethod
    def tearDownClass(cls):
        # the numbers behind the assertions, for the README and the device log
        for (dtype, name), (err, label) in sorted(WORST.items()):
            print(f"test_torch: worst relative error against float64, {dtype} {name}: {err:.2e} ({label})", file=sys.stderr)

    def check_case(self, b, t, hq, h, d, deg, dtype, gated, chunk):
        Q, K, V, G = inputs(b, t, hq, h, d, dtype, gated)
        leaves = [x.detach().clone().requires_grad_(True) for x in (Q, K, V)]
        Gl = None if G is None else G.detach().clone().requires_grad_(True)
        Y = self.prt.power_retention(*leaves, log_G=Gl, deg=deg, chunk_size=chunk)
        scale = 1 / math.sqrt(d)
        refl = [x.detach().double().requires_grad_(True) for x in (Q, K, V)]
        Gr = None if G is None else G.detach().double().requires_grad_(True)
        ref = reference(*refl, Gr, deg, scale)
        label = f"b{b} t{t} hq{hq} h{h} d{d} p{deg} {dtype} gated={gated} chunk={chunk}"
        self.assertFalse(torch.isnan(Y).any().item(), label)
        note(dtype, "Y", rel(Y, ref), label)
        self.assertLess(rel(Y, ref), TOL[dtype], label)
        dY = torch.randn_like(ref)
        grads = torch.autograd.grad(Y, leaves + ([Gl] if Gl is not None else []), dY.to(Y.dtype))
        rgrads = torch.autograd.grad(ref, refl + ([Gr] if Gr is not None else []), dY.to(Y.dtype).double())
        for name, x, r in zip(["dQ", "dK", "dV", "dlogG"], grads, rgrads):
            if t == 1 and name != "dV":
                # y_0 = v_0 exactly: dQ, dK, dlogG are 0 and the float64 reference holds only rounding
                # noise there, so compare absolutely (SPEC.md, "Gradients")
                self.assertLess((x.double() - r).norm().item(), 1e-6, f"{label} {name}")
                continue
            note(dtype, name, rel(x, r), label)
            self.assertLess(rel(x, r), 2 * TOL[dtype], f"{label} {name}")

    def test_against_float64(self):
        for dtype in ("bf16", "f16", "f32"):
            for d in (32, 64, 128):
                for gated in (False, True):
                    self.check_case(2, 333, 4, 2, d, 2, dtype, gated, 64 if d == 128 else 128)
        self.check_case(1, 1, 1, 1, 64, 2, "f32", True, 128)

    def test_main_shape_against_float64(self):
        # the training shape's spec on both paths (chunk None: the library's choice, the quadratic form
        # at t = 100 and 1000); the specs of a development build (bench/device-session.sh DEV_SPECS)
        for t in (100, 1000):
            self.check_case(1, t, 2, 2, 64, 2, "bf16", True, None)
        self.check_case(2, 333, 4, 2, 64, 2, "bf16", True, 128)

    def test_final_state_continues(self):
        Q, K, V, G = inputs(1, 300, 2, 2, 64, "f32", True)
        Y, st = self.prt.power_retention(Q, K, V, log_G=G, return_final_state=True, chunk_size=128)
        Y1, st1 = self.prt.power_retention(Q[:, :200], K[:, :200], V[:, :200], log_G=G[:, :200], return_final_state=True, chunk_size=128)
        Y2 = self.prt.power_retention(Q[:, 200:], K[:, 200:], V[:, 200:], log_G=G[:, 200:], initial_state=st1, chunk_size=128)
        self.assertLess(rel(torch.cat([Y1, Y2], 1), Y.double()), 1e-4)

    def test_varlen_equals_one_call_per_sequence(self):
        # packed sequences (cu_seqlens) against one call per sequence with a final state (the chunked
        # form the packed call takes too): the same arithmetic per chunk, so equal to the last bit;
        # boundaries inside chunks and on an edge, an empty and a one-token sequence
        D = self.prt.state_features(64, 2)
        lengths = [70, 0, 128, 1, 300]
        cu = [0]
        for n in lengths:
            cu.append(cu[-1] + n)
        Q, K, V, G = inputs(1, cu[-1], 4, 2, 64, "bf16", True, seed=3)
        g = torch.Generator(device="cuda").manual_seed(4)
        S0 = 0.01 * torch.randn(len(lengths), 2, D, 64, device="cuda", generator=g)
        Z0 = 0.01 * torch.rand(len(lengths), 2, D, device="cuda", generator=g)
        leaves = [x.detach().clone().requires_grad_(True) for x in (Q, K, V, G, S0, Z0)]
        Y, (S, Z) = self.prt.power_retention(*leaves[:3], log_G=leaves[3], initial_state=(leaves[4], leaves[5]), return_final_state=True,
                                             chunk_size=128, cu_seqlens=torch.tensor(cu, dtype=torch.int32, device="cuda"))
        dY = torch.randn_like(Y)
        grads = torch.autograd.grad((Y * dY).float().sum() + S.sum(), leaves)
        for s, n in enumerate(lengths):
            a, b = cu[s], cu[s + 1]
            if n == 0:
                self.assertTrue(torch.equal(S[s], S0[s]))  # nothing to read: the state passes through
                continue
            one = [x[:, a:b].detach().clone().requires_grad_(True) for x in (Q, K, V, G)]
            st = [x[s:s + 1].detach().clone().requires_grad_(True) for x in (S0, Z0)]
            Y1, (S1, _) = self.prt.power_retention(*one[:3], log_G=one[3], initial_state=tuple(st), return_final_state=True, chunk_size=128)
            self.assertTrue(torch.equal(Y[:, a:b], Y1), f"Y of sequence {s}")
            self.assertTrue(torch.equal(S[s:s + 1], S1), f"Sfinal of sequence {s}")
            g1 = torch.autograd.grad((Y1 * dY[:, a:b]).float().sum() + S1.sum(), one + st)
            for name, x, r in zip(["dQ", "dK", "dV", "dlogG"], grads[:4], g1[:4]):
                self.assertTrue(torch.equal(x[:, a:b], r), f"{name} of sequence {s}")
            self.assertTrue(torch.equal(grads[4][s:s + 1], g1[4]), f"dS0 of sequence {s}")
        with self.assertRaisesRegex(ValueError, r"cu_seqlens\[2\]: expected offsets that do not decrease, received 5 after 70"):
            self.prt.power_retention(Q, K, V, cu_seqlens=torch.tensor([0, 70, 5, cu[-1]], dtype=torch.int32, device="cuda"))

    def test_compile_fullgraph(self):
        Q, K, V, G = inputs(1, 257, 2, 2, 64, "bf16", True)
        f = torch.compile(lambda q, k, v, g: self.prt.power_retention(q, k, v, log_G=g, chunk_size=128), fullgraph=True)
        self.assertTrue(torch.equal(f(Q, K, V, G), self.prt.power_retention(Q, K, V, log_G=G, chunk_size=128)))

    def test_cuda_graph(self):
        Q, K, V, G = inputs(1, 300, 2, 2, 64, "bf16", True)
        want = self.prt.power_retention(Q, K, V, log_G=G, chunk_size=128)  # warm-up: loads the kernels
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            self.prt.power_retention(Q, K, V, log_G=G, chunk_size=128)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.prt.power_retention(Q, K, V, log_G=G, chunk_size=128)
        graph.replay()
        torch.cuda.synchronize()
        self.assertTrue(torch.equal(out, want))

    def test_inference_token_by_token(self):
        c = 64
        Q, K, V, G = inputs(1, 150, 2, 2, 32, "f32", True)
        whole = self.prt.power_retention(Q, K, V, log_G=G, chunk_size=c)
        S = Z = None
        start = 0  # first token of the cache
        ys = []
        for i in range(150):
            y, S2, Z2 = self.prt.power_retention_inference(Q[:, i:i + 1], K[:, start:i + 1], V[:, start:i + 1], G[:, start:i + 1],
                                                             S, Z, switch_over_seq_len=c)
            ys.append(y)
            if i + 1 - start == c:  # folded: the cache restarts
                start, S, Z = i + 1, S2, Z2
        self.assertLess(rel(torch.cat(ys, 1), whole.double()), 1e-4)

    def test_inference_state_alone(self):
        # K, V, log_G None (issue 26): the queries against the state alone equal the forward over the
        # prefix and the queries as tokens with zero keys and values and gates of 1 (no weight, no decay)
        c = 64
        Q, K, V, G = inputs(2, 128, 4, 2, 32, "f32", True, seed=3)
        _, (S, Z) = self.prt.power_retention(Q, K, V, log_G=G, return_final_state=True, chunk_size=c)
        q = torch.randn(2, 3, 4, 32, device="cuda")
        K0, V0, G0 = K.new_zeros(2, 3, 2, 32), V.new_zeros(2, 3, 2, 32), G.new_zeros(2, 3, 2)
        want = self.prt.power_retention(torch.cat([Q, q], 1), torch.cat([K, K0], 1), torch.cat([V, V0], 1), log_G=torch.cat([G, G0], 1),
                                        chunk_size=c)[:, 128:]
        y, S2, Z2 = self.prt.power_retention_inference(q, None, None, initial_state=S, sum_of_keys=Z, switch_over_seq_len=c)
        self.assertLess(rel(y, want.double()), 1e-4)
        self.assertIs(S2, S)
        self.assertIs(Z2, Z)
        with self.assertRaisesRegex(ValueError, r"initial_state: expected the state \[b, h, D, e\] when K and V are None"):
            self.prt.power_retention_inference(q, None, None)
        with self.assertRaisesRegex(ValueError, r"V: expected a tensor when K is given"):
            self.prt.power_retention_inference(q, K, None, initial_state=S, sum_of_keys=Z)

    def test_errors_name_the_argument(self):
        Q, K, V, G = inputs(1, 10, 2, 2, 32, "f32", False)
        with self.assertRaisesRegex(ValueError, r"K: expected a head count h that divides Q's hq = 2, received h = 3"):
            self.prt.power_retention(Q, torch.cat([K, K[:, :, :1]], 2), torch.cat([V, V[:, :, :1]], 2))
        with self.assertRaisesRegex(TypeError, r"K: expected dtype torch.float32 \(Q's\), received torch.float16"):
            self.prt.power_retention(Q, K.half(), V)
        with self.assertRaisesRegex(ValueError, r"chunk_size: expected None or a power of two >= 16, received 100"):
            self.prt.power_retention(Q, K, V, chunk_size=100)


if __name__ == "__main__":
    unittest.main()
