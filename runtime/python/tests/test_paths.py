"""The kernel search path (no torch, no GPU): the TypeScript runtime's order (runtime/search-path.ts),
RETENTION_KERNELS, the current project's build/generated, the package's own; PRT_MANIFEST and
PRT_KERNEL_DIR as overrides."""

import os
import sys
import tempfile
import unittest
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from prt import _paths  # noqa: E402


def touch(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("{}")
    return path


class SearchPathTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        t = self.tmp.name
        self.repo = os.path.join(t, "repo")
        self.pkg_default = touch(os.path.join(self.repo, "generated", "manifest.json"))
        self.pkg_extra = touch(os.path.join(self.repo, "build", "generated", "p4_d32_e32_c64_bf16", "manifest.json"))
        # a user project (package.json at its root) that generated a spec into build/generated
        self.project = os.path.join(t, "proj")
        touch(os.path.join(self.project, "package.json"))
        self.proj_spec = touch(os.path.join(self.project, "build", "generated", "p2_d48_e48_c64_f16", "manifest.json"))
        self.work = os.path.join(self.project, "src", "deep")
        os.makedirs(self.work)
        # RETENTION_KERNELS: a folder of gen --out folders (name order) and a manifest file
        self.own_b = touch(os.path.join(t, "mine", "b", "manifest.json"))
        self.own_a = touch(os.path.join(t, "mine", "a", "manifest.json"))
        self.single = touch(os.path.join(t, "single.json"))
        cwd = os.getcwd()
        os.chdir(self.work)
        self.addCleanup(os.chdir, cwd)

    def env(self, **kv):
        clean = {k: v for k, v in os.environ.items() if k not in ("PRT_MANIFEST", "PRT_KERNEL_DIR", "RETENTION_KERNELS")}
        return mock.patch.dict(os.environ, {**clean, "PRT_ROOT": self.repo, **kv}, clear=True)

    def test_order_project_then_package(self):
        with self.env():
            self.assertEqual(_paths.project_root(), self.project)
            self.assertEqual(_paths.manifest_paths(), [self.proj_spec, self.pkg_default, self.pkg_extra])

    def test_retention_kernels_come_first(self):
        with self.env(RETENTION_KERNELS=os.path.join(self.tmp.name, "mine") + ":" + self.single):
            self.assertEqual(_paths.manifest_paths(), [self.own_a, self.own_b, self.single, self.proj_spec, self.pkg_default, self.pkg_extra])
            text = _paths.describe_search_path()
            self.assertIn("(RETENTION_KERNELS: a/manifest.json, b/manifest.json)", text)
            self.assertIn(f"{os.path.join(self.project, 'build', 'generated')} (project: p2_d48_e48_c64_f16/manifest.json)", text)
            self.assertIn("RETENTION_KERNELS is set", text)

    def test_prt_manifest_replaces_the_search(self):
        with self.env(PRT_MANIFEST=self.single, RETENTION_KERNELS=self.own_a):
            self.assertEqual(_paths.manifest_paths(), [self.single])
            self.assertNotIn("RETENTION_KERNELS", _paths.describe_search_path())

    def test_no_project_means_the_working_directory(self):
        bare = os.path.join(self.tmp.name, "bare")
        os.makedirs(bare)
        self.assertEqual(_paths.project_root(bare), bare)  # tmp has no package.json above it (unless the system's root has one)

    def test_fatbins_beside_the_manifest_then_the_package(self):
        with self.env():
            self.assertEqual(_paths.kernel_dir(), ":" + os.path.join(self.repo, "build", "kernels"))
        with self.env(PRT_KERNEL_DIR="/somewhere/kernels"):
            self.assertEqual(_paths.kernel_dir(), "/somewhere/kernels")


if __name__ == "__main__":
    unittest.main()


class PerSearchPathTest(unittest.TestCase):
    """prt.ops reads the manifests through per_search_path functions: once per arguments and search path."""

    def test_computes_once_per_arguments_and_again_when_the_search_path_changes(self):
        calls = []

        @_paths.per_search_path
        def names(kind, t):
            calls.append((kind, t, os.environ.get("PRT_MANIFEST")))
            return [kind, t]

        with mock.patch.dict(os.environ, {"PRT_MANIFEST": "/a/manifest.json"}):
            self.assertEqual(names("forward", 1024), ["forward", 1024])
            self.assertEqual(names("forward", 1024), ["forward", 1024])
            self.assertEqual(names("forward", 4096), ["forward", 4096])
            self.assertEqual(len(calls), 2)
        with mock.patch.dict(os.environ, {"PRT_MANIFEST": "/b/manifest.json"}):
            names("forward", 1024)
        self.assertEqual(calls[-1], ("forward", 1024, "/b/manifest.json"))
        self.assertEqual(len(calls), 3)

    def test_a_none_result_is_kept_too(self):
        calls = []

        @_paths.per_search_path
        def nothing(x):
            calls.append(x)
            return None

        self.assertIsNone(nothing(1))
        self.assertIsNone(nothing(1))
        self.assertEqual(calls, [1])
