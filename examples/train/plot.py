"""Validation loss of several train.py runs against steps and against training wall time.

    python3 examples/train/plot.py RUN_DIR... --out examples/train/results/val-loss.png

Each RUN_DIR holds a log.jsonl; a run is labelled by its attention and context length. Writes one
PNG with two panels (loss vs step, loss vs minutes of training); with --summary also a JSON and a
Markdown table (PATH.json, PATH.md) of each run's final validation loss, tokens/s and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys


def read_log(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarise(run: str, rows: list[dict]) -> dict:
    evals = [r for r in rows if r.get("val_loss") is not None]
    speeds = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    last = evals[-1]
    return {"run": run, "attn": last.get("attn"), "ctx": last.get("ctx"), "batch": last.get("batch"),
            "steps": last["step"], "train_minutes": round(last["wall_s"] / 60, 2), "final_val_loss": round(last["val_loss"], 4),
            "best_val_loss": round(min(r["val_loss"] for r in evals), 4),
            # the first interval holds the kernels' first calls; the median is the steady speed
            "tokens_per_s_median": round(statistics.median(speeds)) if speeds else None,
            "peak_mem_gb": max(r.get("peak_mem_gb") or 0 for r in rows)}


def write_summary(path: str, summary: list[dict]):
    with open(path + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    lines = ["| attention | ctx | batch | steps | minutes | final val loss | best val loss | tokens/s (median) | peak GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['attn']} | {r['ctx']} | {r['batch']} | {r['steps']} | {r['train_minutes']} | {r['final_val_loss']} "
              f"| {r['best_val_loss']} | {r['tokens_per_s_median']} | {r['peak_mem_gb']} |" for r in summary]
    with open(path + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(runs: dict, out: str, title: str):
    import matplotlib

    matplotlib.use("Agg")  # no display on the GPU machine
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"retention": "-", "sdpa": "--"}
    ctxs = sorted({str(rows[0].get("ctx")) for rows in runs.values()})
    tops = []
    for rows in runs.values():
        attn, ctx = rows[0].get("attn", "?"), rows[0].get("ctx", "?")
        # colour: the context length; line style: the attention
        kw = dict(linestyle=styles.get(attn, "-"), marker=".", label=f"{attn}, ctx {ctx}", color=f"C{ctxs.index(str(ctx))}")
        by_step.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], **kw)
        by_time.plot([r["wall_s"] / 60 for r in rows], [r["val_loss"] for r in rows], **kw)
        tops += [r["val_loss"] for r in rows if r["step"] > 0][:1]  # the first evaluation after step 0
    for ax, xlabel in ((by_step, "optimizer step"), (by_time, "training wall time (min)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (nats/byte)")
        ax.grid(alpha=0.3)
        ax.legend()
        if tops:  # the step-0 loss (ln 256 = 5.5) would squash the curves
            ax.set_ylim(top=max(tops) + 0.1)
    by_step.set_title("vs step (similar tokens per step)")
    by_time.set_title("vs wall time (evaluation excluded)")
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="train.py --out folders")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--title", default="byte-level GPT on the Python standard library")
    p.add_argument("--summary", default=None, help="also write PATH.json and PATH.md")
    args = p.parse_args()

    runs = {}
    for run in args.runs:
        if not os.path.exists(os.path.join(run, "log.jsonl")):
            print(f"{run}: no log.jsonl, skipped")
            continue
        rows = [r for r in read_log(run) if r.get("val_loss") is not None]
        if rows:
            runs[run] = rows
        else:
            print(f"{run}: no evaluations, skipped")
    if not runs:
        sys.exit("no run to plot")
    if args.summary:  # first: it needs no matplotlib
        write_summary(args.summary, [summarise(run, rows) for run, rows in runs.items()])
    try:
        plot(runs, args.out, args.title)
    except ImportError as e:
        sys.exit(f"no plot: {e} (pip install matplotlib)")


if __name__ == "__main__":
    main()
