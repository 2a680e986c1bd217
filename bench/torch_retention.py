"""Power retention through the PyTorch binding (runtime/python, `prt.power_retention`): what a
PyTorch user pays per call, allocation, argument checks and autograd included.

Usage: PYTHONPATH=$PWD/runtime/python python3 bench/torch_retention.py [t | b:t ...]
       python3 bench/torch_retention.py --selftest      (no GPU, no torch: the parts that need neither)
  env: B=1 (the batch of a bare t), REPS=20, CHUNK (a chunk_size to pass; unset or auto: None, the
       library chooses per problem, as a user's call does)

The problem of bench/retention.ts and bench/sdpa.py: h = hq = 8, d = e = 64, deg 2, bf16 [b, t, h, d]
on cuda, gated (log_G = logsigmoid of N(4, 1), float32). Forward under torch.no_grad(); forward +
backward as torch.autograd.grad of (Q, K, V, log_G) (no accumulation into .grad, as sdpa.py). Timed
with CUDA events: the median of REPS after warm-up, rotating between 3 input sets. Y and the
gradients are checked finite once before timing.

Prints one JSON line per case: {"kind": "binding", "b", "t", "chunk", "fwd_ms", "fwdbwd_ms"} where
chunk is the one the call ran at (CHUNK, or what prt.ops._auto_chunk, the function power_retention
calls when chunk_size is None, returns; null if that cannot be read); a case that fails prints
{"kind": "binding", "b", "t", "error"} and the next one runs (exit status 1 at the end).
"""
import json
import os
import sys
import traceback

H, D = 8, 64


def parse_case(arg, default_b):
    """'4096' (batch from B) or '4:4096' -> (b, t)."""
    parts = arg.strip().split(":")
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected t or b:t (positive integers), received {arg!r}")
    b, t = (default_b, int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    if b < 1 or t < 1:
        raise ValueError(f"expected positive b and t, received {arg!r}")
    return b, t


def chunk_of(env):
    """CHUNK: unset, empty or auto -> None (the library chooses, as a call without chunk_size); else an int."""
    if env is None or env.strip() in ("", "auto"):
        return None
    if not env.strip().isdigit():
        raise ValueError(f"CHUNK: expected a chunk size or auto, received {env!r}")
    return int(env)


def error_line(b, t, err):
    """The JSON line of a failed case: the exception and the last lines of its traceback."""
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return json.dumps({"kind": "binding", "b": b, "t": t, "error": f"{type(err).__name__}: {err}", "traceback": tb[-1500:]})


def median_ms(fn, reps, warmup=5):
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


def chosen_chunk(ops, t, chunk, device):
    """The chunk power_retention runs at: the given one, or ops._auto_chunk's (what it calls with
    chunk_size None and no state in or out); None when that cannot be read."""
    if chunk is not None:
        return chunk
    try:
        return int(ops._auto_chunk(2, D, D, "bf16", t, False, False, ops._device_name(device)))
    except Exception as err:  # noqa: BLE001 - a private function: report, don't fail the run
        print(f"chunk not observable: {type(err).__name__}: {err}", file=sys.stderr)
        return None


def run_case(prt, b, t, reps, chunk):
    import torch
    import torch.nn.functional as F
    from prt import ops

    torch.manual_seed(1000 * b + t)
    dev = torch.device("cuda")

    def inputs():
        q, k, v = (torch.randn(b, t, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = F.logsigmoid(torch.randn(b, t, H, device=dev) + 4).requires_grad_(True)  # gates around 0.98
        return q, k, v, g

    sets = [inputs() for _ in range(3)]
    dy = torch.randn(b, t, H, D, device=dev, dtype=torch.bfloat16)
    i = [0]

    def fwd():
        q, k, v, g = sets[i[0] % 3]
        i[0] += 1
        with torch.no_grad():
            return prt.power_retention(q, k, v, g, deg=2, chunk_size=chunk)

    def fwdbwd():
        q, k, v, g = sets[i[0] % 3]
        i[0] += 1
        y = prt.power_retention(q, k, v, g, deg=2, chunk_size=chunk)
        return torch.autograd.grad(y, (q, k, v, g), dy)

    y = fwd()
    grads = fwdbwd()
    bad = [name for name, x in zip(("Y", "dQ", "dK", "dV", "dlogG"), (y, *grads)) if not torch.isfinite(x).all()]
    if bad:
        raise RuntimeError(f"non-finite values in {', '.join(bad)}")
    used = chosen_chunk(ops, t, chunk, dev)
    f = median_ms(fwd, reps)
    fb = median_ms(fwdbwd, reps)
    return {"kind": "binding", "b": b, "t": t, "chunk": used, "fwd_ms": f, "fwdbwd_ms": fb,
            "path": None if used is None else ("quadratic" if used >= t else "chunked")}


def selftest():
    assert parse_case("4:4096", 1) == (4, 4096) and parse_case("16384", 2) == (2, 16384)
    for bad in ("4:", "x", "1:2:3", "0:16", "-4"):
        try:
            parse_case(bad, 1)
        except ValueError:
            continue
        raise AssertionError(f"parse_case accepted {bad!r}")
    try:
        raise RuntimeError("boom")
    except RuntimeError as err:
        line = json.loads(error_line(4, 4096, err))
    assert line["error"] == "RuntimeError: boom" and line["b"] == 4 and "Traceback" in line["traceback"], line

    class FakeOps:  # _auto_chunk as ops has it, and one that fails
        @staticmethod
        def _device_name(dev):
            return "NVIDIA H100 80GB HBM3"

        @staticmethod
        def _auto_chunk(deg, d, e, dtype, t, initial, final, device):
            assert (deg, d, e, dtype, initial, final) == (2, 64, 64, "bf16", False, False)
            return 16 if t <= 16 else 1 << (t - 1).bit_length()

    assert chunk_of(None) is None and chunk_of("auto") is None and chunk_of("") is None and chunk_of("128") == 128
    try:
        chunk_of("12x")
        raise AssertionError("chunk_of accepted 12x")
    except ValueError:
        pass
    assert chosen_chunk(FakeOps, 4096, None, None) == 4096 and chosen_chunk(FakeOps, 4096, 128, None) == 128
    assert chosen_chunk(object(), 4096, None, None) is None
    print("torch_retention selftest: ok")


def main():
    if sys.argv[1:] == ["--selftest"]:
        selftest()
        return
    default_b = int(os.environ.get("B", "1"))
    cases = [parse_case(a, default_b) for a in sys.argv[1:]] or [(16, 1024), (4, 4096), (1, 16384)]
    reps = int(os.environ.get("REPS", "20"))
    chunk = chunk_of(os.environ.get("CHUNK"))
    failed = False
    try:
        import torch  # noqa: F401
        import prt
        print(json.dumps({"kind": "binding_env", "torch": torch.__version__, "device": torch.cuda.get_device_name(),
                          "prt": os.path.dirname(prt.__file__)}), flush=True)
    except Exception as err:  # noqa: BLE001 - the binding failing must not end the device run
        for b, t in cases:
            print(error_line(b, t, err), flush=True)
        sys.exit(1)
    for b, t in cases:
        try:
            print(json.dumps(run_case(prt, b, t, reps, chunk)), flush=True)
        except Exception as err:  # noqa: BLE001
            failed = True
            print(error_line(b, t, err), flush=True)
            traceback.print_exc()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
