"""Records the repository this package is installed from (prt/_build_config.py), so the installed
package finds libprt.so, the manifests and the fatbins there (each overridable, see prt/_paths.py)."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))


class BuildPy(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "prt", "_build_config.py")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write(f"# written by setup.py at install\nREPO_ROOT = {REPO!r}\n")


setup(cmdclass={"build_py": BuildPy})
