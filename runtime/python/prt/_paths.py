"""Where the native library, the manifests and the fatbins are.

Each can be set by an environment variable; otherwise they are looked for in the repository the
package was installed from (setup.py records it in _build_config.py) or, when the package is
used from the source tree, the repository around it:

    PRT_LIB          path of libprt.so           default <repo>/build/native/Release/libprt.so
    PRT_MANIFEST     ':'-separated manifests      default <repo>/generated/manifest.json and every
                                                  <repo>/build/generated/*/manifest.json
    PRT_KERNEL_DIR   folder of the fatbins        default <repo>/build/kernels
    PRT_ROOT         the repository               (overrides the recorded one)
"""

from __future__ import annotations

import glob
import os


def repo_root() -> str:
    env = os.environ.get("PRT_ROOT")
    if env:
        return os.path.abspath(env)
    try:
        from . import _build_config  # written by setup.py at install

        return _build_config.REPO_ROOT
    except ImportError:
        # runtime/python/prt/_paths.py -> the repository three folders up
        return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def library_path() -> str:
    return os.environ.get("PRT_LIB") or os.path.join(repo_root(), "build", "native", "Release", "libprt.so")


def manifest_paths() -> list[str]:
    env = os.environ.get("PRT_MANIFEST")
    if env:
        return [os.path.abspath(p) for p in env.split(":") if p]
    root = repo_root()
    extra = sorted(glob.glob(os.path.join(root, "build", "generated", "*", "manifest.json")))
    return [os.path.join(root, "generated", "manifest.json"), *extra]


def kernel_dir() -> str:
    return os.path.abspath(os.environ.get("PRT_KERNEL_DIR") or os.path.join(repo_root(), "build", "kernels"))
