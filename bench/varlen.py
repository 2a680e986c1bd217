"""Packed sequences against padding (issue 26): the speed of one packed call (cu_seqlens) beside the
same documents padded to the longest, and one call per document, through the PyTorch binding.

Usage: PYTHONPATH=$PWD/runtime/python python3 bench/varlen.py [OUT_JSON]
  env: DOCS=16 (documents), LO=128, HI=4096 (their lengths, uniform, seeded by SEED=0), CHUNK=128,
       REPS=20 (timed calls; the median is reported)

h = 8, d = e = 64, deg 2, gated, bf16 (the main shape of bench/torch_retention.py). Every call is
timed alone between CUDA events after 3 warm-up calls, fwd (no grad) and fwd+bwd (the gradients of
Q, K, V, log_G for a random dY), with random inputs (no zeros). The packed call includes what a
user's call includes: reading cu_seqlens on the host (one copy from the GPU) and the tables' upload.
Prints a table and writes JSON (device, date, commit from COMMIT, the lengths, per variant ms and
tokens/s counting the documents' tokens only).
"""
import datetime
import json
import os
import random
import statistics
import sys

H, D = 8, 64


def main():
    import torch
    import torch.nn.functional as F
    import prt

    n_docs, lo, hi = int(os.environ.get("DOCS", "16")), int(os.environ.get("LO", "128")), int(os.environ.get("HI", "4096"))
    chunk, reps = int(os.environ.get("CHUNK", "128")), int(os.environ.get("REPS", "20"))
    rnd = random.Random(int(os.environ.get("SEED", "0")))
    lengths = [rnd.randint(lo, hi) for _ in range(n_docs)]
    total, longest = sum(lengths), max(lengths)
    dev = torch.device("cuda")
    torch.manual_seed(0)

    def leaves(b, t):
        q, k, v = (torch.randn(b, t, H, D, device=dev, dtype=torch.bfloat16).requires_grad_(True) for _ in range(3))
        g = F.logsigmoid(torch.randn(b, t, H, device=dev) + 4).requires_grad_(True)
        return q, k, v, g

    packed = leaves(1, total)
    cu = torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(n_docs)], dtype=torch.int32, device=dev)
    padded = leaves(n_docs, longest)
    docs = [leaves(1, n) for n in lengths]
    dy_packed = torch.randn(1, total, H, D, device=dev, dtype=torch.bfloat16)
    dy_padded = torch.randn(n_docs, longest, H, D, device=dev, dtype=torch.bfloat16)

    def call(x, dy, grad, **kw):
        if not grad:
            with torch.no_grad():
                return prt.power_retention(*x[:3], x[3], deg=2, chunk_size=chunk, **kw)
        y = prt.power_retention(*x[:3], x[3], deg=2, chunk_size=chunk, **kw)
        return torch.autograd.grad(y, x, dy)

    variants = {
        "packed (cu_seqlens)": lambda grad: call(packed, dy_packed, grad, cu_seqlens=cu),
        "padded to the longest": lambda grad: call(padded, dy_padded, grad),
        "one call per document": lambda grad: [call(x, dy_packed[:, :n], grad) for x, n in zip(docs, lengths)],
    }

    def median_ms(fn):
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)

    rows = []
    for name, fn in variants.items():
        row = {"variant": name}
        for pass_, grad in (("fwd", False), ("fwdbwd", True)):
            ms = median_ms(lambda: fn(grad))
            row[f"{pass_}_ms"] = round(ms, 4)
            row[f"{pass_}_tokens_per_s"] = round(total / ms * 1e3)
        rows.append(row)
    base = rows[0]
    print(f"{n_docs} documents of {lo}..{hi} tokens (seed {os.environ.get('SEED', '0')}): {total} tokens, the longest {longest} "
          f"(padded: {n_docs * longest} rows, {n_docs * longest / total:.2f}x); h {H}, d = e = {D}, deg 2, gated, bf16, chunk {chunk}; "
          f"{torch.cuda.get_device_name(dev)}, median of {reps}")
    print("| variant | fwd ms | fwd+bwd ms | fwd / packed | fwd+bwd / packed |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['fwd_ms']:.3f} | {r['fwdbwd_ms']:.3f} | {r['fwd_ms'] / base['fwd_ms']:.2f} | "
              f"{r['fwdbwd_ms'] / base['fwdbwd_ms']:.2f} |")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump({"device": torch.cuda.get_device_name(dev), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                       "commit": os.environ.get("COMMIT", "unknown"), "lengths": lengths, "chunk": chunk, "reps": reps,
                       "shape": {"h": H, "d": D, "e": D, "deg": 2, "dtype": "bf16", "gated": True}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
