"""prt without torch, or with a torch older than it needs: `import prt` and its torch-free parts work,
and prt.power_retention raises an ImportError that names the torch it needs (issue 27: it was a
bare `No module named 'torch'`). Each case runs in a fresh Python whose torch is hidden or faked,
so the test means the same whether or not torch is installed here."""

import os
import subprocess
import sys
import unittest

PKG = os.path.join(os.path.dirname(__file__), "..")

# a finder that makes `import torch` fail as it does where torch is not installed
HIDE_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return None
sys.meta_path.insert(0, _NoTorch())
"""

# a torch too old for torch.library.custom_op
OLD_TORCH = """
import sys, types
sys.modules["torch"] = types.SimpleNamespace(__version__="2.3.1+cu121", __file__="/fake/torch/__init__.py")
"""


def run(prelude: str, code: str) -> subprocess.CompletedProcess:
    src = f"import sys; sys.path.insert(0, {PKG!r})\n{prelude}\n{code}"
    return subprocess.run([sys.executable, "-c", src], capture_output=True, text=True)


class NoTorchTest(unittest.TestCase):
    def test_import_prt_and_its_torch_free_parts(self):
        r = run(HIDE_TORCH, "import prt\nfrom prt import native, manifest, PrtError\nprint(native.__name__, manifest.__name__)")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "prt._native prt._manifest")

    def test_power_retention_names_the_torch_it_needs(self):
        for code in ("import prt\nprt.power_retention", "from prt import power_retention", "import prt.ops"):
            r = run(HIDE_TORCH, code)
            self.assertNotEqual(r.returncode, 0, code)
            last = r.stderr.strip().splitlines()[-1]
            self.assertTrue(last.startswith("ImportError: prt.power_retention and prt.power_retention_inference need PyTorch >= 2.4 with CUDA, "
                                            "and this Python ("), f"{code}: {last}")
            self.assertIn("(No module named 'torch'): install one (pip install 'torch>=2.4'", last)
            self.assertIn("`from prt import native, manifest` works", last)

    def test_an_older_torch_is_named_with_its_version(self):
        r = run(OLD_TORCH, "from prt import power_retention")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ImportError: prt.power_retention needs PyTorch >= 2.4 (torch.library.custom_op), received torch 2.3.1+cu121 "
                      "from /fake/torch/__init__.py: upgrade it", r.stderr)


if __name__ == "__main__":
    unittest.main()
