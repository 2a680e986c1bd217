"""The manifest reader (no torch, no GPU): specs, chunk choice, variants and output shapes."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from prt import _manifest, _paths  # noqa: E402

GENERATED = os.path.join(_paths.repo_root(), "generated", "manifest.json")


class ManifestTest(unittest.TestCase):
    def setUp(self):
        if not os.path.exists(GENERATED):
            self.skipTest(f"{GENERATED} is absent")
        self.m = _manifest.load(GENERATED)

    def test_lists_the_default_specs_with_plans(self):
        keys = {s.key for s in self.m.specs}
        self.assertIn("p2_d64_e64_c128_bf16", keys)
        for kind in ("forward", "backward", "decode"):
            self.assertIn((kind, "p2_d64_e64_c128_bf16"), self.m.plans)

    def test_chooses_the_chunk(self):
        ms = [self.m]
        self.assertEqual(_manifest.choose_chunk(ms, 2, 64, 64, "bf16", 50, None).chunk, 64)  # one chunk: quadratic
        self.assertEqual(_manifest.choose_chunk(ms, 2, 64, 64, "bf16", 100, None).chunk, 128)
        # the quadratic form up to the default length (4 D e / (d + e) = 4096 at d = e = 64): a chunk >= t
        self.assertEqual(_manifest.choose_chunk(ms, 2, 64, 64, "bf16", 3000, None).chunk, 4096)
        self.assertEqual(_manifest.choose_chunk(ms, 2, 64, 64, "bf16", 5000, None).chunk, 128)  # past it: the largest built
        self.assertEqual(_manifest.choose_chunk(ms, 2, 64, 64, "bf16", 3000, None, initial_state=True).chunk, 128)  # a state in: chunked
        self.assertEqual(_manifest.choose_chunk(ms, 2, 64, 64, "bf16", 10000, 64).chunk, 64)
        # a measured entry for the device decides instead
        m = _manifest.Manifest(self.m.file, self.m.plans, self.m.specs, {"H": {"p2_d64_e64_bf16": {"quadraticMaxT": 2048, "chunk": 64}}})
        self.assertEqual(_manifest.choose_chunk([m], 2, 64, 64, "bf16", 3000, None, device="H").chunk, 64)
        self.assertEqual(_manifest.choose_chunk([m], 2, 64, 64, "bf16", 2000, None, device="H").chunk, 2048)
        self.assertEqual(_manifest.choose_chunk([m], 2, 64, 64, "bf16", 3000, None, device="other").chunk, 4096)  # the default
        with self.assertRaises(_manifest.ManifestError) as e:
            _manifest.choose_chunk(ms, 4, 48, 48, "f16", 10, None)
        self.assertIn("npx retention gen --deg 4 --d 48 --e 48 --chunk 128 --dtype f16 --out build/generated/p4_d48_e48_c128_f16 --compile", str(e.exception))

    def test_output_shapes_follow_the_variant(self):
        plan = self.m.plans[("forward", "p2_d64_e64_c128_bf16")]
        env, flags = _manifest.problem_env("forward", 128, 2, 300, 8, 4, gated=True, final_state=True)
        outs = {n: (dt, shape) for n, dt, shape in _manifest.output_shapes(plan, env, flags)}
        self.assertEqual(outs["Y"], ("bf16", (2, 300, 8, 64)))
        self.assertEqual(outs["Sfinal"], ("f32", (2, 4, 2080, 64)))
        self.assertEqual(outs["Zfinal"], ("f32", (2, 4, 2080)))
        env, flags = _manifest.problem_env("forward", 128, 1, 100, 2, 2, gated=False)
        names = [n for n, _, _ in _manifest.output_shapes(plan, env, flags)]
        self.assertEqual(names[0], "Y")
        self.assertNotIn("Sfinal", names)  # one chunk, no final state: the short path

    def test_expressions(self):
        env = {"b": 3, "h": 5}
        self.assertEqual(_manifest.eval_expr(["*", "b", "h"], env), 15)
        self.assertEqual(_manifest.eval_expr(["//", ["+", "b", 15], 16], env), 1)
        self.assertEqual(_manifest.eval_expr(7, env), 7)
        with self.assertRaises(_manifest.ManifestError):
            _manifest.eval_expr("t", env)

    def test_rejects_another_format(self):
        import json
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"format": 1, "kernels": []}, f)
        try:
            with self.assertRaises(_manifest.ManifestError) as e:
                _manifest.load(f.name)
            self.assertIn("format 1, this package reads format 2; regenerate it with `npx retention gen`", str(e.exception))
        finally:
            os.unlink(f.name)


if __name__ == "__main__":
    unittest.main()
