// Merge the JSON lines of bench/retention.ts and bench/sdpa.py (files given as arguments) into one
// table: ms per call and the ratio to PyTorch SDPA (causal, flash) measured in the same device run.
import { readFileSync } from "node:fs";
const rows = new Map();
for (const f of process.argv.slice(2))
  for (const line of readFileSync(f, "utf8").split("\n")) {
    if (!line.startsWith("{")) continue;
    const j = JSON.parse(line);
    if (j.kind === "kernel" || j.kind === "ceiling" || j.kind === "error" || typeof j.t !== "number") continue; // per-launch, ceiling and error lines
    rows.set(j.t, { ...rows.get(j.t), ...(j.launches ? { ours: j } : { sdpa: j }) });
  }
const fmt = (x) => (typeof x !== "number" || Number.isNaN(x) ? "-" : x.toFixed(3));
const div = (a, b) => (typeof a === "number" && typeof b === "number" ? a / b : undefined);
console.log("b=1 h=8 d=64 deg=2 gated bf16, H200; ms per call (median), ratio = ours / SDPA");
console.log("| t | chunk | retention fwd | SDPA fwd | ratio | retention fwd+bwd | SDPA fwd+bwd | ratio | retention fwd TFLOP/s |");
console.log("|---|---|---|---|---|---|---|---|---|");
for (const [t, r] of [...rows].sort((a, b) => a[0] - b[0])) {
  const o = r.ours ?? {}, s = r.sdpa ?? {};
  console.log(`| ${t} | ${o.chunk ?? "-"} | ${fmt(o.fwd_ms)} | ${fmt(s.fwd_ms)} | ${fmt(div(o.fwd_ms, s.fwd_ms))} | ${fmt(o.fwdbwd_ms)} | ${fmt(s.fwdbwd_ms)} | ${fmt(div(o.fwdbwd_ms, s.fwdbwd_ms))} | ${fmt(o.fwd_tflops)} |`);
}
