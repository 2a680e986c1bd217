"""PyTorch scaled_dot_product_attention (causal) timings, the comparison column of bench/.

Prints one JSON line per case: {"t":..., "fwd_ms":..., "fwdbwd_ms":...}. Inputs are random
(never zeros), bf16, shape [b, h, t, d] as SDPA wants; timed with CUDA events, median of repeats
after warm-up, rotating between several input sets so repeated runs don't just measure the cache.
"""
import json
import sys

import torch
import torch.nn.functional as F


def median_ms(fn, reps=20, warmup=5):
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


def matmul_tflops():
    """The bf16 matrix-product ceiling of this GPU in this run (8192^3, random data)."""
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = median_ms(lambda: a @ b, reps=20, warmup=5)
    return 2 * 8192**3 / ms / 1e9


def main():
    import os
    if os.environ.get("CEIL") == "1":
        print(json.dumps({"matmul_tflops": matmul_tflops(), "device": torch.cuda.get_device_name()}), flush=True)
    b, h, d = int(os.environ.get("B", "1")), 8, 64
    ts = [int(x) for x in sys.argv[1:]] or [4096, 16384, 65536]
    for t in ts:
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
            y.backward(dy)

        y = fwd()
        assert torch.isfinite(y).all(), "SDPA produced non-finite output"
        f = median_ms(fwd)
        flops = b * h * t * (t + 1) / 2 * 2 * (2 * d)
        print(json.dumps({"b": b, "t": t, "fwd_ms": f, "fwdbwd_ms": median_ms(fwdbwd), "fwd_tflops": flops / f / 1e9}), flush=True)


if __name__ == "__main__":
    main()
