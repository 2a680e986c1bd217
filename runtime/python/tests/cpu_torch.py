"""torch for the tests that run on the CPU with faked launches, or why they skip (CI has no torch):
`torch, REASON = cpu_torch("test_name")`. Also puts the package (runtime/python) on sys.path."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def cpu_torch(test: str):
    try:
        import torch
    except ImportError:  # CI: no torch
        print(f"{test}: skipped: torch is not installed", file=sys.stderr)
        return None, "torch is not installed"
    return torch, None
