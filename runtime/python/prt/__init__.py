"""Power retention (symmetric power attention) for PyTorch, on the kernels `retention gen` builds.

    from prt import power_retention
    Y = power_retention(Q, K, V, log_G=log_g, deg=2, chunk_size=128)

The torch parts load on first use, so `import prt` works without torch: `from prt import native,
manifest` (the ctypes layer over libprt.so and the manifest reader; they are attributes of prt, not
modules of their own: `import prt.native` does not work). `prt.power_retention` needs PyTorch
>= 2.4 with CUDA, and says so when it is missing or older.
"""

from . import _manifest as manifest  # noqa: F401
from . import _native as native  # noqa: F401
from ._native import PrtError  # noqa: F401

__all__ = ["power_retention", "power_retention_inference", "state_features", "PrtError"]


def __getattr__(name):
    if name in ("power_retention", "power_retention_inference", "state_features"):
        from . import ops

        return getattr(ops, name)
    raise AttributeError(f"module 'prt' has no attribute {name!r}")
