"""The two ways a forward reaches the plans, with the launches replaced by fakes so it runs on the
CPU (no GPU, no libprt.so): eager calls go through prt.ops._Eager (an autograd.Function, no custom
op dispatch), torch.compile traces the custom ops prt::forward / prt::backward. Both must give the
same outputs and gradients, mark the saved outputs non-differentiable and need no zero-filled
gradient for them. Skips, saying why, without torch (CI). The GPU tests (test_torch.py) run the same
paths on the real kernels."""

import unittest

try:
    from .cpu_torch import cpu_torch
except ImportError:  # run as a script
    from cpu_torch import cpu_torch

torch, REASON = cpu_torch("test_autograd_paths")


@unittest.skipIf(REASON is not None, REASON or "")
class AutogradPathsTest(unittest.TestCase):
    """Fakes with the plans' output names and shapes (from the generated manifest): Y = 2 Q + V, the
    saved outputs 0.5; the backward gives dQ = 2 dY, dK = 0, dV = dY, dlogG = 3."""

    def setUp(self):
        from prt import ops

        self.ops = ops
        self.calls = {"fwd": 0, "bwd": 0}
        self.saved_impls = (ops._forward_impl, ops._backward_impl)
        ops._forward_impl, ops._backward_impl = self.fake_forward, self.fake_backward
        self.b, self.t, self.h, self.d = 2, 100, 2, 64

    def tearDown(self):
        self.ops._forward_impl, self.ops._backward_impl = self.saved_impls

    def names(self, kind, Q, K, V, logG, deg, chunk, final_state):
        f = self.ops._forward_names if kind == "forward" else self.ops._backward_names
        return f(self.ops._spec_of(Q, V, deg, chunk), Q.shape[0], Q.shape[1], Q.shape[2], K.shape[2], logG is not None, False, final_state)

    def fake_forward(self, Q, K, V, logG, S0, Z0, deg, scale, chunk, final_state):
        self.calls["fwd"] += 1
        return [(2 * Q.float() + V.float()).to(Q.dtype) if n == "Y" else torch.full(shape, 0.5, dtype=self.ops._TORCH[dt])
                for n, dt, shape in self.names("forward", Q, K, V, logG, deg, chunk, final_state)]

    def fake_backward(self, Q, K, V, logG, S0, Z0, saved, dY, dSfinal, dZfinal, deg, scale, chunk, final_state):
        self.calls["bwd"] += 1
        self.assertTrue(all(isinstance(x, torch.Tensor) for x in saved))
        g = {"dQ": (2 * dY.float()).to(Q.dtype), "dK": torch.zeros_like(K), "dV": dY.clone(), "dlogG": torch.full_like(logG, 3.0)}
        return [g.get(n, torch.zeros(shape, dtype=self.ops._TORCH[dt])) for n, dt, shape in self.names("backward", Q, K, V, logG, deg, chunk, final_state)]

    def inputs(self):
        g = torch.Generator().manual_seed(0)
        Q, K, V = (torch.randn(self.b, self.t, self.h, self.d, generator=g).to(torch.bfloat16).requires_grad_(True) for _ in range(3))
        G = torch.randn(self.b, self.t, self.h, generator=g).requires_grad_(True)
        return Q, K, V, G

    def forward(self, Q, K, V, G, final_state=False, chunk=64):
        out = self.ops._forward(Q, K, V, G, None, None, 2, 0.125, chunk, final_state)
        return dict(zip([n for n, _, _ in self.names("forward", Q, K, V, G, 2, chunk, final_state)], out))

    def test_eager_gradients_and_saved_outputs(self):
        for chunk in (64, 128):  # t = 100: the chunked path, then one chunk (the quadratic path's outputs)
            Q, K, V, G = self.inputs()
            out = self.forward(Q, K, V, G, chunk=chunk)
            self.assertTrue(out["Y"].requires_grad)
            self.assertEqual([n for n, x in out.items() if x.requires_grad], ["Y"], "saved outputs are not differentiable")
            dY = torch.randn_like(out["Y"])
            gq, gk, gv, gg = torch.autograd.grad(out["Y"], (Q, K, V, G), dY)
            self.assertTrue(torch.equal(gq, (2 * dY.float()).to(torch.bfloat16)) and torch.equal(gv, dY))
            self.assertTrue(bool((gk == 0).all()) and bool((gg == 3).all()))
        self.assertEqual(self.calls, {"fwd": 2, "bwd": 2})

    def test_eager_final_state_gradients_of_either_output(self):
        Q, K, V, G = self.inputs()
        out = self.forward(Q, K, V, G, final_state=True)
        self.assertTrue(out["Sfinal"].requires_grad and out["Zfinal"].requires_grad)
        torch.autograd.grad(out["Y"], (Q,), torch.ones_like(out["Y"]), retain_graph=True)  # no dSfinal: zeros
        torch.autograd.grad(out["Sfinal"].sum(), (Q,))  # no dY: zeros
        self.assertEqual(self.calls["bwd"], 2)

    def test_compiled_matches_eager(self):
        Q, K, V, G = self.inputs()
        f = torch.compile(lambda q, k, v, g: self.ops._forward(q, k, v, g, None, None, 2, 0.125, 64, False)[0], backend="aot_eager", fullgraph=True)
        Yc = f(Q, K, V, G)
        Y = self.forward(Q, K, V, G)["Y"]
        dY = torch.randn_like(Y)
        self.assertTrue(torch.equal(Yc, Y))
        for a, b in zip(torch.autograd.grad(Yc, (Q, K, V, G), dY), torch.autograd.grad(Y, (Q, K, V, G), dY)):
            self.assertTrue(torch.equal(a, b))


if __name__ == "__main__":
    unittest.main()
