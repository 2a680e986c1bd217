"""power_retention_inference's arguments on the CPU (no GPU, no libprt.so): K = V = log_G = None
runs the queries as tokens with zero keys and values (the inner call is recorded, not launched) and
returns the state as given; wrong combinations raise errors that name the argument. Skips, saying
why, without torch (CI). test_torch.py checks the numbers on the GPU."""

import unittest

try:
    from .cpu_torch import cpu_torch
except ImportError:  # run as a script
    from cpu_torch import cpu_torch

torch, REASON = cpu_torch("test_inference_args")


@unittest.skipIf(REASON is not None, REASON or "")
class InferenceArgumentsTest(unittest.TestCase):
    def setUp(self):
        from prt import ops

        self.ops = ops
        self.real = ops.power_retention_inference
        self.q = torch.randn(2, 3, 4, 32)
        self.S, self.Z = torch.randn(2, 2, 528, 32), torch.rand(2, 2, 528)

    def tearDown(self):
        self.ops.power_retention_inference = self.real

    def test_errors_name_the_argument(self):
        q, S, K0 = self.q, self.S, torch.zeros(2, 3, 2, 32)
        for args, kw, msg in [
            ((q, None, None), {}, r"initial_state: expected the state \[b, h, D, e\] when K and V are None"),
            ((q, K0, None), {"initial_state": S}, "V: expected a tensor when K is given"),
            ((q, None, K0), {"initial_state": S}, "K: expected a tensor when V is given"),
            ((q, None, None, torch.zeros(2, 3, 2)), {"initial_state": S}, "log_G: expected None when K and V are None"),
            ((torch.randn(2, 70, 4, 32), None, None), {"initial_state": S, "switch_over_seq_len": 64},
             "Q: expected at most switch_over_seq_len = 64 queries when K and V are None, received tq = 70"),
        ]:
            with self.assertRaisesRegex(ValueError, msg):
                self.real(*args, **kw)

    def test_state_alone_runs_zero_tokens_and_returns_the_state(self):
        seen = {}

        def inner(Q, K, V, log_G=None, initial_state=None, sum_of_keys=None, deg=2, scale=None, switch_over_seq_len=512):
            if K is None:
                return self.real(Q, K, V, log_G, initial_state, sum_of_keys, deg, scale, switch_over_seq_len)
            seen.update(K=K, V=V, G=log_G, S=initial_state, Z=sum_of_keys, c=switch_over_seq_len)
            return torch.ones(Q.shape[0], Q.shape[1], Q.shape[2], V.shape[3]), "folded S", "folded Z"

        self.ops.power_retention_inference = inner
        y, S2, Z2 = inner(self.q, None, None, initial_state=self.S, sum_of_keys=self.Z, switch_over_seq_len=64)
        self.assertIs(S2, self.S)
        self.assertIs(Z2, self.Z)
        self.assertEqual(tuple(y.shape), (2, 3, 4, 32))
        self.assertEqual((tuple(seen["K"].shape), tuple(seen["V"].shape), seen["G"], seen["c"]), ((2, 3, 2, 32), (2, 3, 2, 32), None, 64))
        self.assertTrue(bool((seen["K"] == 0).all()) and bool((seen["V"] == 0).all()))
        _, S3, Z3 = inner(self.q, None, None, initial_state=self.S, switch_over_seq_len=64)  # no sum_of_keys: zeros
        self.assertIs(S3, self.S)
        self.assertEqual(tuple(Z3.shape), (2, 2, 528))
        self.assertTrue(bool((Z3 == 0).all()))


if __name__ == "__main__":
    unittest.main()
