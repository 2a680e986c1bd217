// Benchmark: power retention forward and forward+backward on the GPU, one JSON line per case.
// The plans are the library's own (dsl/plan.ts, dsl/plan-backward.ts) with the manifest's
// schedules; buffers are allocated once and the launches alone are timed with CUDA events (what
// PyTorch's SDPA column measures too, its caching allocator making allocation free). Outputs are
// NaN-poisoned before a checked run; a case whose Y, dQ, dK, dV or dlogG holds a NaN is an error.
// Usage: node --import tsx bench/retention.ts [t ...]   (env: CHUNK=128 REPS=20 B=1 FWD_ONLY=1;
// CHUNK larger than t takes the quadratic path: attention_y alone, when that spec is built)

import { backwardPlan } from "../dsl/plan-backward.ts";
import { forwardPlan, type Problem } from "../dsl/plan.ts";
import { stateFeatures } from "../dsl/spec.ts";
import { cudaAvailable } from "../runtime/device.ts";
import { withManifestSchedules } from "../runtime/execute-gpu.ts";
import { loadNative } from "../runtime/native.ts";
import { medianMs as medianOf, Pool, randomNormal } from "./gpu-timing.ts";

const medianMs = (run: () => void): number => medianOf(run, reps);

const gpu = cudaAvailable();
if (!gpu.ok) throw new Error(`bench needs a GPU: ${gpu.reason}`);
const native = loadNative();
const ts = process.argv.slice(2).map(Number);
const chunk = Number(process.env.CHUNK ?? 128);
const reps = Number(process.env.REPS ?? 20);
const B = Number(process.env.B ?? 1);
const fwdOnly = process.env.FWD_ONLY === "1";

for (const t of ts.length ? ts : [4096, 16384, 65536]) {
  const p: Problem = { b: B, t, hq: 8, h: 8, d: 64, e: 64, deg: 2, chunk, dtype: "bf16", scale: 1 / 8, gated: true, initialState: false };
  const fwd = withManifestSchedules((s) => forwardPlan(p, s), (x) => x).built;
  const bwd = fwdOnly ? { buffers: [], steps: [], outputs: [] } : withManifestSchedules((s) => backwardPlan(p, s), (x) => x).built;
  const pool = new Pool(reps);
  pool.alloc(fwd);
  pool.alloc(bwd);
  if (fwdOnly) pool.alloc({ buffers: [{ name: "dY", dtype: "bf16", shape: [B, t, 8, 64], init: "nan" }], steps: [], outputs: [] });
  const n = B * t * 8;
  pool.bufs.get("Q")!.upload(randomNormal(n * 64, "bf16", 1));
  pool.bufs.get("K")!.upload(randomNormal(n * 64, "bf16", 2));
  pool.bufs.get("V")!.upload(randomNormal(n * 64, "bf16", 3));
  pool.bufs.get("dY")!.upload(randomNormal(n * 64, "bf16", 4));
  // logsigmoid of N(4, 1): gates around 0.98, the regime of a trained model
  const g = new Float32Array(n).map((_, i) => -Math.log1p(Math.exp(-(4 + Math.sin(i * 12.9898) * 1.5))));
  pool.bufs.get("logG")!.upload(g);
  const runFwd = pool.launcher(fwd), runBwd = pool.launcher(bwd);
  runFwd();
  runBwd();
  native.synchronize();
  const bad = (fwdOnly ? ["Y"] : ["Y", "dQ", "dK", "dV", "dlogG"]).filter((o) => pool.hasNaN(o));
  if (bad.length) throw new Error(`t=${t}: NaN in ${bad.join(", ")} (an element no kernel wrote, or an overflow)`);
  const fwdMs = medianMs(runFwd);
  const fwdbwdMs = medianMs(() => {
    runFwd();
    runBwd();
  });
  // SPEC.md's count: 2*D*e each for update and query state, 4*c*d/2 for the causal attention part
  const D = stateFeatures({ deg: 2, d: 64, e: 64, chunk, dtype: "bf16" });
  const quadratic = chunk >= t;
  // useful work: the causal pairs of each window (2 (d + e) per pair), plus 2 D e each for update and query state
  const win = Math.min(chunk, t), pairs = B * 8 * (Math.floor(t / win) * (win * (win + 1)) / 2 + ((t % win) * ((t % win) + 1)) / 2);
  const attnFlops = pairs * 2 * 128;
  const fwdFlops = attnFlops + (quadratic ? 0 : n * 4 * D * 64);
  if (process.env.PROFILE)
    for (const r of [...pool.profile(fwd), ...pool.profile(bwd)]) {
      const tf = r.kernel === "attention" || r.kernel === "attention_y" ? `  ${(attnFlops / r.ms / 1e9).toFixed(1).padStart(6)} TFLOP/s` : "";
      console.log(`# b=${B} t=${t} ${r.kernel.padEnd(24)} ${r.ms.toFixed(3).padStart(9)} ms${tf}  grid ${r.grid}`);
    }
  console.log(JSON.stringify({ b: B, t, chunk, fwd_ms: fwdMs, fwdbwd_ms: fwdOnly ? null : fwdbwdMs, fwd_tflops: fwdFlops / fwdMs / 1e9, launches: fwd.steps.length + bwd.steps.length }));
  pool.free();
}
