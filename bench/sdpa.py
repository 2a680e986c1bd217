"""PyTorch scaled_dot_product_attention (causal) timings, the comparison column of bench/.

Usage: python3 bench/sdpa.py [t | b:t ...]   env: B=1 (the batch of a bare t), REPS=20, CEIL=1

Prints one JSON line per case: {"kind": "sdpa", "b", "t", "fwd_ms", "fwdbwd_ms", "fwd_tflops"}, and
with CEIL=1 first {"kind": "ceiling", "matmul_tflops", "device", "b": null, "t": null}: an 8192^3
bf16 matrix product, the ceiling the kernels' TFLOP/s are compared with. Inputs are random (never
zeros), bf16, shape [b, h, t, d] as SDPA wants (h = 8, d = 64); timed with CUDA events, median of
repeats after warm-up, rotating between several input sets so repeated runs don't just measure the
cache. The backward is torch.autograd.grad of (q, k, v): no accumulation into .grad is timed (Q, K
and V are activations in a model, not leaves).
"""
import json
import os
import sys


def parse_case(arg, default_b):
    """'4096' (batch from B) or '4:4096' -> (b, t)."""
    parts = arg.strip().split(":")
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected t or b:t (positive integers), received {arg!r}")
    b, t = (default_b, int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    if b < 1 or t < 1:
        raise ValueError(f"expected positive b and t, received {arg!r}")
    return b, t


def median_ms(fn, reps=20, warmup=5):
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def matmul_tflops(reps=20):
    """The bf16 matrix-product ceiling of this GPU in this run (8192^3, random data)."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = median_ms(lambda: a @ b, reps=reps, warmup=5)
    return 2 * 8192**3 / ms / 1e9


def main():
    cases = [parse_case(a, int(os.environ.get("B", "1"))) for a in sys.argv[1:]] or [(int(os.environ.get("B", "1")), t) for t in (4096, 16384, 65536)]
    reps = int(os.environ.get("REPS", "20"))
    import torch
    import torch.nn.functional as F

    if os.environ.get("CEIL") == "1":
        print(json.dumps({"kind": "ceiling", "b": None, "t": None, "matmul_tflops": matmul_tflops(reps), "device": torch.cuda.get_device_name()}), flush=True)
    h, d = 8, 64
    for b, t in cases:
        sets = [
            [torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
            for _ in range(3)
        ]
        dy = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)
        i = [0]

        def fwd():
            q, k, v = sets[i[0] % 3]
            i[0] += 1
            with torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def fwdbwd():
            q, k, v = sets[i[0] % 3]
            i[0] += 1
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return torch.autograd.grad(y, (q, k, v), dy)

        y = fwd()
        assert torch.isfinite(y).all(), "SDPA produced non-finite output"
        f = median_ms(fwd, reps)
        flops = b * h * t * (t + 1) / 2 * 2 * (2 * d)
        print(json.dumps({"kind": "sdpa", "b": b, "t": t, "fwd_ms": f, "fwdbwd_ms": median_ms(fwdbwd, reps), "fwd_tflops": flops / f / 1e9}), flush=True)
        del sets, dy, y


if __name__ == "__main__":
    main()
