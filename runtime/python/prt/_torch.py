"""The torch prt needs, checked once where the torch parts load (prt.ops): without it, or with an
older one, an ImportError that says which torch and how to get it, instead of a bare
`No module named 'torch'` or an AttributeError deep inside."""

from __future__ import annotations

import re
import sys

MIN_TORCH = (2, 4)  # torch.library.custom_op, register_fake and register_autograd
MIN_TORCH_STR = ".".join(map(str, MIN_TORCH))


def _version(v: str) -> tuple:
    m = re.match(r"(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def require_torch():
    """Import torch and return it, or raise ImportError naming the torch prt needs."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"prt.power_retention and prt.power_retention_inference need PyTorch >= {MIN_TORCH_STR} with CUDA, and this "
            f"Python ({sys.executable}) has none ({e}): install one (pip install 'torch>={MIN_TORCH_STR}', or the build for "
            f"your CUDA from pytorch.org). Without torch, `from prt import native, manifest` works (the kernels' plans "
            f"and the ctypes layer over libprt.so)."
        ) from e
    v = getattr(torch, "__version__", "")
    if _version(str(v)) < MIN_TORCH:
        raise ImportError(
            f"prt.power_retention needs PyTorch >= {MIN_TORCH_STR} (torch.library.custom_op), received torch {v or '(no version)'} "
            f"from {getattr(torch, '__file__', '?')}: upgrade it (pip install 'torch>={MIN_TORCH_STR}')"
        )
    return torch
