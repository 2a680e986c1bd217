"""libprt.so through ctypes, without torch: loading, "no driver" reported cleanly, plans created
without a driver (buffers, workspace), argument errors that name the argument, and, with the
tests' fake driver (PRT_TEST_FAKE_LIBCUDA, set by test/python.test.ts), a run."""

import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, ".."))
from prt import _native, _paths  # noqa: E402

GENERATED = os.path.join(_paths.repo_root(), "generated", "manifest.json")
SPEC = (2, 64, 64, 128, "bf16")


def have_lib():
    return os.path.exists(_paths.library_path())


@unittest.skipUnless(have_lib(), f"libprt.so is not built ({_paths.library_path()}): run `npm run build:native`")
class NativeTest(unittest.TestCase):
    def test_no_driver_is_reported_cleanly(self):
        # a fresh process with a driver path that does not exist
        code = "import sys; sys.path.insert(0, %r); from prt import _native; print(_native.cuda_status())" % os.path.join(HERE, "..")
        env = {**os.environ, "PRT_LIBCUDA": "/nonexistent/libcuda.so.1"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        self.assertIn("False", out)
        self.assertIn("no CUDA driver: /nonexistent/libcuda.so.1 could not be loaded", out)

    def test_plans_need_no_driver(self):
        rt = _native.Runtime([GENERATED], "/nonexistent/kernels")
        p = rt.plan("forward", SPEC, 2, 1000, 8, 4, 0.125, gated=True, final_state=True)
        names = [b.name for b in p.buffers]
        self.assertEqual(names[:6], ["Q", "K", "V", "logG", "S0", "Z0"])
        by = p.by_name
        self.assertEqual(by["Q"].shape, (2, 1000, 8, 64))
        self.assertEqual(by["Q"].role, _native.BUF_INPUT)
        self.assertEqual(by["Y"].role, _native.BUF_OUTPUT)
        self.assertEqual(by["S0"].role, _native.BUF_TEMP)  # zeros: no initial state given
        self.assertEqual(by["Sfinal"].shape, (2, 4, 2080, 64))
        self.assertGreater(p.workspace_bytes, 0)
        self.assertGreater(p.workspace_bytes_all, p.workspace_bytes)
        self.assertTrue(p.steps()[0].startswith("prt_attention_p2_d64_e64_c128_bf16_"))

    def test_a_varlen_plan_takes_the_tables_and_one_state_per_sequence(self):
        rt = _native.Runtime([GENERATED], "/nonexistent/kernels")
        # 3 sequences of 200, 0 and 100 tokens at chunk 128: 2 + 0 + 1 slots
        p = rt.plan("forward_varlen", SPEC, 1, 300, 4, 2, 0.125, gated=True, initial_state=True, final_state=True, ns=3, nc=3)
        by = {b.name: b for b in p.buffers}
        self.assertEqual((by["chunkSrc"].dtype, by["chunkSrc"].shape, by["chunkSrc"].role), ("i32", (3,), _native.BUF_INPUT))
        self.assertEqual(by["seqChunk"].shape, (4,))
        self.assertEqual(by["S0"].shape, (3, 2, 2080, 64))
        self.assertEqual((by["Sfinal"].shape, by["Sfinal"].role), ((3, 2, 2080, 64), _native.BUF_OUTPUT))
        self.assertEqual((by["Y"].shape, by["Q"].shape), ((1, 300, 4, 64), (1, 300, 4, 64)))
        self.assertEqual(by["Qp"].shape, (1, 384, 4, 64))  # the aligned copy: 3 slots of 128 rows
        self.assertTrue(p.steps()[0].startswith("prt_varlen_pack_p2_d64_e64_c128_bf16_"))

    def test_errors_name_the_argument(self):
        rt = _native.Runtime([GENERATED], "/nonexistent/kernels")
        with self.assertRaises(_native.PrtError) as e:
            rt.plan("forward", SPEC, 1, 10, 3, 2, 0.1)
        self.assertIn("hq: expected a positive multiple of h = 2, received 3", str(e.exception))
        with self.assertRaises(_native.PrtError) as e:
            rt.plan("sideways", SPEC, 1, 10, 2, 2, 0.1)
        self.assertIn('kind: expected "forward", "backward", "decode", "forward_varlen" or "backward_varlen", received "sideways"', str(e.exception))
        with self.assertRaises(_native.PrtError) as e:
            rt.plan("forward", (4, 48, 48, 64, "f16"), 1, 10, 2, 2, 0.1)
        self.assertIn("npx retention gen --deg 4 --d 48 --e 48 --chunk 64 --dtype f16 --out build/generated/p4_d48_e48_c64_f16 --compile", str(e.exception))
        with self.assertRaises(_native.PrtError) as e:
            rt.plan("decode", SPEC, 1, 1, 2, 2, 0.1, len0=128)
        self.assertIn("len0: expected an integer in [0, 128), received 128", str(e.exception))
        # packed sequences: b = 1, ns >= 1, nc the slots of some packing of t tokens at this chunk
        with self.assertRaises(_native.PrtError) as e:
            rt.plan("forward_varlen", SPEC, 2, 300, 2, 2, 0.1, ns=2, nc=3)
        self.assertIn("b: expected 1 (sequences packed along t), received 2", str(e.exception))
        with self.assertRaises(_native.PrtError) as e:
            rt.plan("forward_varlen", SPEC, 1, 300, 2, 2, 0.1, ns=0, nc=3)
        self.assertIn("ns: expected a positive integer (sequences), received 0", str(e.exception))
        with self.assertRaises(_native.PrtError) as e:
            rt.plan("backward_varlen", SPEC, 1, 300, 2, 2, 0.1, ns=2, nc=2)
        self.assertIn("nc: expected the chunk slots of the packing, in [ceil(t / chunk), t] = [3, 300], received 2", str(e.exception))
        with self.assertRaises(_native.PrtError) as e:
            _native.Runtime(["/nonexistent/manifest.json"], "/tmp")
        self.assertIn("manifest /nonexistent/manifest.json: cannot read the file", str(e.exception))

    def test_a_plan_whose_kernels_are_missing_names_the_manifests_once_then_every_kernel(self):
        import json
        import tempfile

        with open(GENERATED) as f:
            m = json.load(f)
        gone = ("update_state", "discounted_cumsum", "state_copy")
        m["kernels"] = [k for k in m["kernels"] if k["name"] not in gone]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "manifest.json")
            with open(path, "w") as f:
                json.dump(m, f)
            rt = _native.Runtime([path, path], "/nonexistent/kernels")
            with self.assertRaises(_native.PrtError) as e:
                rt.plan("forward", SPEC, 1, 1000, 2, 2, 0.1)
            self.assertEqual(str(e.exception), (
                f"forward plan of p2_d64_e64_c128_bf16: the manifests {path}, {path} have no kernels update_state, discounted_cumsum "
                "for spec p2_d64_e64_c128_bf16; generate and compile them with `npx retention gen --deg 2 --d 64 --e 64 --chunk 128 "
                "--dtype bf16 --out build/generated/p2_d64_e64_c128_bf16 --compile`"))
            # decode: a call that fills the cache needs the fold's kernels (f32); one that does not, none
            rt = _native.Runtime([path], "/nonexistent/kernels")
            rt.plan("decode", SPEC, 1, 1, 2, 2, 0.1, len0=0)
            with self.assertRaises(_native.PrtError) as e:
                rt.plan("decode", SPEC, 1, 1, 2, 2, 0.1, len0=127)
            self.assertRegex(str(e.exception), r"^decode plan of p2_d64_e64_c128_bf16: the manifest \S+ has no kernels update_state, discounted_cumsum, "
                             r"state_copy for spec p2_d64_e64_c128_f32; generate and compile them with `npx retention gen [^`]* --dtype f32 [^`]*`$")

    def test_run_checks_its_arguments_before_the_driver(self):
        rt = _native.Runtime([GENERATED], "/nonexistent/kernels")
        p = rt.plan("forward", SPEC, 1, 10, 2, 2, 0.1)
        with self.assertRaises(_native.PrtError) as e:
            p.run(0, {}, 0, 0)
        self.assertIn("buffer Q (an input, bf16 2560 bytes): expected a device pointer, received 0", str(e.exception))
        with self.assertRaises(_native.PrtError) as e:
            p.run(0, {"Q": 1, "K": 1, "V": 1}, 0, 0)
        self.assertIn(f"workspace: expected {p.workspace_bytes_all} bytes (outputs in the workspace too), received 0 (null pointer)", str(e.exception))

    def test_run_refuses_inputs_the_problem_flags_leave_out(self):
        # an ungated plan keeps logG in its workspace (zeros): a caller's gates would be ignored
        rt = _native.Runtime([GENERATED], "/nonexistent/kernels")
        p = rt.plan("forward", SPEC, 1, 10, 2, 2, 0.1, gated=False)
        self.assertEqual(p.by_name["logG"].role, _native.BUF_TEMP)
        with self.assertRaises(_native.PrtError) as e:
            p.run(0, {"Q": 1, "K": 1, "V": 1, "logG": 1}, 1, p.workspace_bytes_all)
        self.assertIn("buffer logG: expected 0 (the plan keeps it in its workspace: problem.gated is 0, so it runs with a gate of 1), "
                      "received a pointer", str(e.exception))
        with self.assertRaises(_native.PrtError) as e:
            p.run(0, {"Q": 1, "K": 1, "V": 1, "S0": 1}, 1, p.workspace_bytes_all)
        # no initial state: the plan has no S0 at all (plan-types.ts, withoutUnusedBuffers)
        self.assertIn("S0 not a buffer of this plan", str(e.exception))
        self.assertIn("S0: problem.initial_state is 0, so the plan reads none", str(e.exception))
        gated = rt.plan("forward", SPEC, 1, 10, 2, 2, 0.1, gated=True)
        with self.assertRaises(_native.PrtError) as e:
            gated.run(0, {"Q": 1, "K": 1, "V": 1}, 1, gated.workspace_bytes_all)
        self.assertIn("buffer logG (an input, f32 80 bytes): expected a device pointer, received 0", str(e.exception))

    @unittest.skipUnless(os.environ.get("PRT_TEST_FAKE_LIBCUDA"), "PRT_TEST_FAKE_LIBCUDA (the tests' fake driver) is not set")
    def test_runs_on_the_fake_driver_and_names_a_missing_fatbin(self):
        # t = 1000: the chunked path, whose kernels are in the spec's own file (the quadratic path's
        # chunk-free ones live in the smallest chunk's)
        code = ("import sys; sys.path.insert(0, %r); from prt import _native; rt = _native.Runtime([%r], '/nonexistent/kernels');"
                "p = rt.plan('forward', %r, 1, 1000, 2, 2, 0.1)\n"
                "try:\n  p.prepare()\nexcept _native.PrtError as e:\n  print(e)") % (os.path.join(HERE, ".."), GENERATED, SPEC)
        env = {**os.environ, "PRT_LIBCUDA": os.environ["PRT_TEST_FAKE_LIBCUDA"]}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        self.assertIn("is missing: /nonexistent/kernels/p2_d64_e64_c128_bf16.fatbin does not exist; compile it with `npx retention build", out)

    @unittest.skipUnless(os.environ.get("PRT_TEST_FAKE_LIBCUDA"), "PRT_TEST_FAKE_LIBCUDA (the tests' fake driver) is not set")
    def test_fatbins_are_found_beside_their_manifest_then_in_the_next_folder(self):
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            own, other = os.path.join(tmp, "own"), os.path.join(tmp, "other")
            os.makedirs(own)
            os.makedirs(other)
            shutil.copy(GENERATED, os.path.join(own, "manifest.json"))
            code = ("import sys; sys.path.insert(0, %r); from prt import _native\n"
                    "rt = _native.Runtime([%r], sys.argv[1]); p = rt.plan('forward', %r, 1, 1000, 2, 2, 0.1)\n"
                    "try:\n  p.prepare(); print('prepared')\nexcept _native.PrtError as e:\n  print(e)") % (
                        os.path.join(HERE, ".."), os.path.join(own, "manifest.json"), SPEC)
            # FAKE_CUDA_LOG: the fake driver then offers every prt_* kernel (doing nothing)
            env = {**os.environ, "PRT_LIBCUDA": os.environ["PRT_TEST_FAKE_LIBCUDA"], "FAKE_CUDA_LOG": os.path.join(tmp, "launches.jsonl")}
            run = lambda dirs: subprocess.run([sys.executable, "-c", code, dirs], env=env, capture_output=True, text=True, check=True).stdout
            fat = "p2_d64_e64_c128_bf16.fatbin"
            # neither folder holds it: both candidates are named, in order
            self.assertIn(f"none of {own}/{fat}, {other}/{fat} exists; compile it with `npx retention build --out {own} --build-dir {other}`", run(":" + other))
            with open(os.path.join(other, fat), "w") as f:
                f.write("FAKECUBIN\n")
            self.assertIn("prepared", run(":" + other))  # the second folder
            os.remove(os.path.join(other, fat))
            with open(os.path.join(own, fat), "w") as f:
                f.write("FAKECUBIN\n")
            self.assertIn("prepared", run(":" + other))  # the manifest's own folder (the empty entry)
            self.assertIn(f"is missing: {other}/{fat} does not exist", run(other))  # without the empty entry it is not searched


if __name__ == "__main__":
    unittest.main()
