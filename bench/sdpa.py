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


def main():
    b, h, d = 1, 8, 64
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
        print(json.dumps({"t": t, "fwd_ms": median_ms(fwd), "fwdbwd_ms": median_ms(fwdbwd)}), flush=True)


if __name__ == "__main__":
    main()
