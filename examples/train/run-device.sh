#!/usr/bin/env bash
# The training example's device run (examples/train/README.md). From the repository root, on the GPU
# machine, with torch installed, libprt.so and the kernels built (build/kernels, or PRT_KERNEL_DIR):
#
#   MINUTES=2 bash examples/train/run-device.sh [RESULTS_DIR] [STAGE...]
#
# RESULTS_DIR: default $OUT/train ($OUT default device-out). STAGES, in order, default all of them:
#   smoke     a 1-GPU torchrun DDP run of 20 steps, then --resume to 30 (checks save/resume under DDP)
#   train     retention and SDPA at ctx 1024 (batch 16) and ctx 8192 (batch 2): 16384 tokens a step,
#             MINUTES of training each (RUNS="retention-1024 sdpa-1024 ..." picks some)
#   docs      packed documents (--docs packed, power_retention's cu_seqlens) against padded rows
#             (--docs padded) at ctx 1024, batch 16, the same seed and STEPS_DOCS steps (default 300):
#             the two losses must agree within noise (issue 26)
#   plot      val-loss.png and summary-train.{json,md} (plot.py)
#   generate  a sample from the retention checkpoint and the per-token latency table (generate.py)
#   summary   summary.json and summary.txt: the final validation losses, tokens/s, latency
# A device command is limited to 10 minutes: split the stages over calls (e.g. RUNS= per call).
set -uo pipefail
MINUTES=${MINUTES:-2}
RES=${OUT:-device-out}/train
if [[ $# -gt 0 && ! $1 =~ ^(smoke|train|docs|plot|generate|summary|all)$ ]]; then RES=$1; shift; fi
STAGES=${*:-all}
RUNS=${RUNS:-"retention-1024 sdpa-1024 retention-8192 sdpa-8192"}
EVAL_EVERY=${EVAL_EVERY:-100}
EVAL_BATCHES=${EVAL_BATCHES:-10}
export PYTHONPATH=$PWD/runtime/python${PYTHONPATH:+:$PYTHONPATH}
export PRT_KERNEL_DIR=${PRT_KERNEL_DIR:-$PWD/build/kernels}
T=examples/train
CACHE=$RES/corpus-cache
mkdir -p "$RES"
status=0

# run NAME CMD...: the command's output into RES/NAME.log, its exit status and last lines here
run() {
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$RES/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc, $((SECONDS - t0)) s"
  tail -n 4 "$RES/$name.log" | tr '\r' '\n' | tail -n 4
  [[ $rc -eq 0 ]] || status=1
  return $rc
}
want() { [[ " $STAGES " == *" all "* || " $STAGES " == *" $1 "* ]]; }

if want smoke; then
  DDP=(python3 -m torch.distributed.run --standalone --nproc_per_node=1 "$T/train.py" --attn retention --ctx 1024 --batch 4
       --eval-every 10 --eval-batches 2 --log-every 5 --out "$RES/ddp-smoke" --cache "$CACHE")
  run ddp-smoke "${DDP[@]}" --steps 20 && run ddp-smoke-resume "${DDP[@]}" --steps 30 --resume
  # the resumed run must have continued the same log to step 30
  python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; s=[x['step'] for x in r]; print('smoke log steps', s); sys.exit(s[-1] != 30 or 20 not in s)" \
    "$RES/ddp-smoke/log.jsonl" || { echo "ddp smoke: the log does not reach step 30 through the resume"; status=1; }
fi

if want docs; then
  for mode in packed padded; do
    run "docs-$mode" python3 "$T/train.py" --attn retention --docs "$mode" --ctx 1024 --batch 16 --steps "${STEPS_DOCS:-300}" \
      --eval-every 100 --eval-batches "$EVAL_BATCHES" --log-every 50 --out "$RES/docs-$mode" --cache "$CACHE"
  done
  # the last evaluation of each, side by side (the same batches and seed: within bf16 noise)
  python3 - "$RES/docs-packed/log.jsonl" "$RES/docs-padded/log.jsonl" <<'PY' | tee "$RES/docs-compare.txt" || status=1
import json, sys
rows = [[json.loads(l) for l in open(f)] for f in sys.argv[1:]]
for (a, b) in zip(*rows):
    print(f"step {a['step']:5d}: val loss packed {a['val_loss']:.4f}, padded {b['val_loss']:.4f}, "
          f"difference {abs(a['val_loss'] - b['val_loss']):.4f}; tokens/s packed {a['tokens_per_s']}, padded {b['tokens_per_s']}")
PY
fi

if want train; then
  for name in $RUNS; do
    attn=${name%-*}; ctx=${name##*-}
    batch=$((16384 / ctx))
    run "train-$name" python3 "$T/train.py" --attn "$attn" --ctx "$ctx" --batch "$batch" --steps 1000000 \
      --max-minutes "$MINUTES" --eval-every "$EVAL_EVERY" --eval-batches "$EVAL_BATCHES" --log-every 50 \
      --out "$RES/$name" --cache "$CACHE"
  done
fi

if want plot; then
  run plot python3 "$T/plot.py" "$RES"/retention-1024 "$RES"/sdpa-1024 "$RES"/retention-8192 "$RES"/sdpa-8192 \
    --out "$RES/val-loss.png" --summary "$RES/summary-train"
fi

if want generate; then
  ck=$RES/retention-1024/ckpt.pt; other=$RES/sdpa-1024/ckpt.pt
  args=(--tokens 300 --bench-ctx 1024,8192 --json "$RES/generate.json")
  [[ -f $ck ]] && args+=(--ckpt "$ck")
  [[ -f $other ]] && args+=(--other-ckpt "$other")
  run generate python3 "$T/generate.py" "${args[@]}"
  grep -A 8 "^per-token" "$RES/generate.log"
fi

if want summary; then
  python3 - "$RES" <<'EOF' || status=1
import json, os, subprocess, sys
res = sys.argv[1]
def read(name):
    p = os.path.join(res, name)
    return json.load(open(p)) if os.path.exists(p) else None
out = {"commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None,
       "device": subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip(),
       "minutes_per_run": float(os.environ.get("MINUTES", "2")), "train": read("summary-train.json")}
try:
    import torch
    out["torch"] = torch.__version__
except ImportError:
    pass
gen = read("generate.json")
if gen:
    out["latency"], out["decode_check"] = gen.get("latency"), gen.get("check")
json.dump(out, open(os.path.join(res, "summary.json"), "w"), indent=1)
lines = [f"training example, commit {out['commit']}, {out['device']}, torch {out.get('torch')}, {out['minutes_per_run']} min per run"]
for r in out["train"] or []:
    lines.append(f"  {r['attn']:9s} ctx {r['ctx']:5}: final val loss {r['final_val_loss']:.4f} after {r['steps']} steps, "
                 f"{r['tokens_per_s_median']} tokens/s, peak {r['peak_mem_gb']} GB")
for r in out.get("latency") or []:
    lines.append(f"  decode {r['attn']:9s} after {r['ctx']:5} tokens: {r['median_ms']:.3f} ms/token (median)")
for attn, c in (out.get("decode_check") or {}).items():
    lines.append(f"  decoding vs forward, {attn}: max |logit diff| {c['max_abs_logit_diff']:.3g} (scale {c['logit_scale']:.3g}), "
                 f"argmax agree {c['argmax_agree']:.3f}")
open(os.path.join(res, "summary.txt"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
fi
exit $status
