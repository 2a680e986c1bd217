"""Where the PyTorch binding's time goes beyond its kernels (issue 23 item 4, issue 25 item 5).

Usage: PYTHONPATH=$PWD/runtime/python python3 bench/profile_binding.py [b:t ...]   (default 16:1024 4:4096)
  env: CHUNK (a chunk_size to pass; unset: the library's choice), N=50 (calls per measurement)

The problem of bench/torch_retention.py (h = 8, d = e = 64, deg 2, bf16, gated). For fwd and fwd+bwd
it prints, per call:
  host_ms   the Python thread's time to issue one call (perf_counter, no synchronisation; the GPU
            lags behind, so this is what the CPU pays whatever the GPU does),
  gpu_ms    the device time of one call when N calls are queued back to back (CUDA events around
            the N calls: the GPU never waits for the host once the queue is ahead),
  single_ms one call timed alone between events (torch_retention.py's number): about
            max(host, gpu) plus the launch latency,
then cProfile's top functions by own time over N fwd+bwd calls, and torch.profiler's table of
CPU ops and kernels (what runs on the GPU besides our kernels: copies, memsets, fills).
"""
import cProfile
import io
import json
import os
import pstats
import sys
import time

H, D = 8, 64


def main():
    import torch
    import torch.nn.functional as F
    import prt

    cases = [tuple(int(x) for x in a.split(":")) for a in sys.argv[1:]] or [(16, 1024), (4, 4096)]
    n = int(os.environ.get("N", "50"))
    chunk = int(os.environ["CHUNK"]) if os.environ.get("CHUNK", "auto") not in ("", "auto") else None
    dev = torch.device("cuda")
    for b, t in cases:
        torch.manual_seed(t)
        q, k, v = (torch.randn(b, t, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = F.logsigmoid(torch.randn(b, t, H, device=dev) + 4).requires_grad_(True)
        dy = torch.randn(b, t, H, D, device=dev, dtype=torch.bfloat16)

        def fwd():
            with torch.no_grad():
                return prt.power_retention(q, k, v, g, deg=2, chunk_size=chunk)

        def fwdbwd():
            y = prt.power_retention(q, k, v, g, deg=2, chunk_size=chunk)
            return torch.autograd.grad(y, (q, k, v, g), dy)

        row = {"b": b, "t": t}
        for name, fn in (("fwd", fwd), ("fwdbwd", fwdbwd)):
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            # host: the issuing thread's time; a long kernel queue first so that the host never waits
            torch.cuda._sleep(int(2e9))  # ~1 s of GPU spin: the queue stays ahead of the host
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            host = (time.perf_counter() - t0) * 1e3 / n
            torch.cuda.synchronize()
            a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(int(2e9))
            a.record()
            for _ in range(n):
                fn()
            z.record()
            torch.cuda.synchronize()
            gpu = a.elapsed_time(z) / n
            singles = []
            for _ in range(n):
                a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                z.record()
                torch.cuda.synchronize()
                singles.append(a.elapsed_time(z))
            singles.sort()
            row.update({f"{name}_host_ms": round(host, 4), f"{name}_gpu_ms": round(gpu, 4), f"{name}_single_ms": round(singles[n // 2], 4)})
        print(json.dumps(row), flush=True)

        prof = cProfile.Profile()
        torch.cuda._sleep(int(2e9))
        prof.enable()
        for _ in range(n):
            fwdbwd()
        prof.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
        print(f"---- cProfile, {n} fwd+bwd calls at b = {b}, t = {t} (by own time)\n{s.getvalue()}", flush=True)

        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            for _ in range(10):
                fwdbwd()
            torch.cuda.synchronize()
        print(f"---- torch.profiler, 10 fwd+bwd calls at b = {b}, t = {t}\n"
              + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=40), flush=True)
        try:
            print(p.key_averages().table(sort_by="self_device_time_total", row_limit=25), flush=True)
        except Exception:  # noqa: BLE001 - older torch names it after CUDA
            print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=25), flush=True)


if __name__ == "__main__":
    main()
