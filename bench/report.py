"""Results of one device run as JSON and plots: ours (bench/retention.ts JSON lines) beside PyTorch
SDPA (bench/sdpa.py) measured in the same run, with the peer's published ratio to SDPA
(`retention`'s Triton kernels, its best chunk, on the H200) drawn as a reference line.

Usage: python3 bench/report.py OURS.log SDPA.log OUTDIR COMMIT [DEVICE]
Writes OUTDIR/results.json (device, date, commit, rows) and OUTDIR/time-vs-t.png.
"""
import datetime
import json
import subprocess
import sys

# The peer's ratio to SDPA at the main shape (../shared/PERF.md, one H200 run): t -> (fwd, fwd+bwd).
PEER_RATIO = {4096: (14.9, 17.7), 16384: (2.59, 2.32), 65536: (0.60, 0.49)}


def json_lines(path):
    """The case lines of a log: not bench/retention.ts's per-launch ("kind": "kernel") or error lines,
    nor bench/sdpa.py's matmul ceiling."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.startswith("{")]
    return [r for r in rows if r.get("kind") not in ("kernel", "error", "ceiling") and r.get("t") is not None]


def main():
    ours_log, sdpa_log, outdir, commit = sys.argv[1:5]
    device_override = sys.argv[5] if len(sys.argv) > 5 else None  # re-plotting elsewhere: the run's device
    ours = {r["t"]: r for r in json_lines(ours_log)}
    sdpa = {r["t"]: r for r in json_lines(sdpa_log)}
    try:
        device = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        device = "unknown (no nvidia-smi)"
    device = device_override or device

    rows = []
    for t in sorted(set(ours) & set(sdpa)):
        o, s = ours[t], sdpa[t]
        rows.append({
            "t": t, "chunk": o["chunk"],
            "fwd_ms": o["fwd_ms"], "sdpa_fwd_ms": s["fwd_ms"], "fwd_ratio": o["fwd_ms"] / s["fwd_ms"],
            "fwdbwd_ms": o["fwdbwd_ms"], "sdpa_fwdbwd_ms": s["fwdbwd_ms"], "fwdbwd_ratio": o["fwdbwd_ms"] / s["fwdbwd_ms"],
            "fwd_tflops": o["fwd_tflops"],
            "peer_fwd_ratio": PEER_RATIO.get(t, (None, None))[0], "peer_fwdbwd_ratio": PEER_RATIO.get(t, (None, None))[1],
        })
    result = {
        "shape": "b=1 h=hq=8 d=e=64 deg=2 gated bf16", "device": device, "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "rows": rows,
    }
    with open(f"{outdir}/results.json", "w") as f:
        json.dump(result, f, indent=2)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ts = [r["t"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    modes = [("fwd", "forward"), ("bwd", "backward"), ("fwdbwd", "forward + backward")]
    for ax, (mode, title) in zip(axes, modes):
        if mode == "bwd":
            ours_ms = [r["fwdbwd_ms"] - r["fwd_ms"] for r in rows]
            sdpa_ms = [r["sdpa_fwdbwd_ms"] - r["sdpa_fwd_ms"] for r in rows]
            peer = [r["peer_fwdbwd_ratio"] * r["sdpa_fwdbwd_ms"] - r["peer_fwd_ratio"] * r["sdpa_fwd_ms"] for r in rows]
        else:
            ours_ms = [r[f"{mode}_ms"] for r in rows]
            sdpa_ms = [r[f"sdpa_{mode}_ms"] for r in rows]
            peer = [r[f"peer_{mode}_ratio"] * r[f"sdpa_{mode}_ms"] for r in rows]
        ax.loglog(ts, ours_ms, "o-", label="ours (power retention, chunk %d)" % rows[0]["chunk"])
        ax.loglog(ts, sdpa_ms, "s-", label="PyTorch SDPA (causal, flash)")
        ax.loglog(ts, peer, "--", color="gray", label="peer (Triton): its published ratio x this SDPA")
        ax.set_title(title)
        ax.set_xlabel("sequence length t")
        ax.set_ylabel("ms per call (median)")
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the measured t as ticks
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['shape']}, {device.split(',')[0]}, commit {commit}, {result['date'][:10]}")
    fig.tight_layout()
    fig.savefig(f"{outdir}/time-vs-t.png", dpi=110)


if __name__ == "__main__":
    main()
