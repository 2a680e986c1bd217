// Benchmark: power retention forward and forward+backward on the GPU, one JSON line per case.
// The plans are the library's own (dsl/plan.ts, dsl/plan-backward.ts) with the manifest's
// schedules; buffers are allocated once and the launches alone are timed with CUDA events (what
// PyTorch's SDPA column measures too, its caching allocator making allocation free). Outputs are
// NaN-poisoned before a checked run; a case whose Y, dQ, dK, dV or dlogG holds a NaN is an error
// (an error line, exit status 1, and the next case runs).
//
// Usage: node --import tsx bench/retention.ts [t | b:t ...]
//   env: CHUNK=128 (or auto: the chunk the library takes when a call names none, runtime/kernels.ts
//        autoChunk; a CHUNK larger than t takes the quadratic path: attention_y alone, served by
//        the chunk-free kernels of any built chunk), REPS=20, B=1 (the batch of a bare t),
//        FWD_ONLY=1, PROFILE=1 (each launch timed alone: one kernel line per launch),
//        DRY=1 (no GPU: resolve the plans against the manifests and print the kernel lines with
//        their FLOPs and ms null, to check arguments and the chunk choice off the device).
// Output lines (JSON):
//   {"b","t","chunk","fwd_ms","fwdbwd_ms","fwd_tflops","launches","path"}          one per case
//   {"kind":"kernel","b","t","chunk","pass":"fwd"|"bwd","kernel","ms","flops","tflops","grid"}
//                                  with PROFILE (before its case's line); flops: bench/kernel-flops.ts
//   {"kind":"error","b","t","chunk","error"}                                           a failed case

import { backwardPlan } from "../dsl/plan-backward.ts";
import { forwardPlan, type Problem } from "../dsl/plan.ts";
import { stepKernel, type Plan } from "../dsl/plan-types.ts";
import { cudaAvailable } from "../runtime/device.ts";
import { preparePlan, withManifestSchedules } from "../runtime/execute-gpu.ts";
import { autoChunk } from "../runtime/kernels.ts";
import { loadNative } from "../runtime/native.ts";
import { medianMs as medianOf, Pool, randomNormal } from "./gpu-timing.ts";
import { kernelFlops } from "./kernel-flops.ts";

/** "4096" (batch from B) or "4:4096" -> [b, t]; throws on anything else. */
function parseCase(arg: string, defaultB: number): [number, number] {
  const m = /^(?:(\d+):)?(\d+)$/.exec(arg.trim());
  if (!m) throw new Error(`expected t or b:t (positive integers), received '${arg}'`);
  const b = m[1] === undefined ? defaultB : Number(m[1]), t = Number(m[2]);
  if (!(b >= 1 && t >= 1)) throw new Error(`expected positive b and t, received '${arg}'`);
  return [b, t];
}

const reps = Number(process.env.REPS ?? 20);
const B = Number(process.env.B ?? 1);
const fwdOnly = process.env.FWD_ONLY === "1";
const dry = process.env.DRY === "1";
const chunkEnv = process.env.CHUNK ?? "128";
if (chunkEnv !== "auto" && !(Number(chunkEnv) >= 16)) throw new Error(`CHUNK: expected a chunk >= 16 or auto, received '${chunkEnv}'`);
const cases = (process.argv.length > 2 ? process.argv.slice(2) : ["4096", "16384", "65536"]).map((a) => parseCase(a, B));

let deviceName: string | null = null;
if (!dry) {
  const gpu = cudaAvailable();
  if (!gpu.ok) throw new Error(`bench needs a GPU: ${gpu.reason} (DRY=1 checks the plans without one)`);
  deviceName = gpu.name;
}
const native = dry ? null : loadNative();
const medianMs = (run: () => void): number => medianOf(run, reps);
const emptyPlan: Plan = { buffers: [], steps: [], outputs: [] };

for (const [b, t] of cases) {
  // the library's choice when a call names no chunk (runtime/index.ts powerRetention does the same)
  const chunk = chunkEnv === "auto"
    ? autoChunk({ deg: 2, d: 64, e: 64, dtype: "bf16", t, initialState: false, finalState: false }, deviceName, 128)
    : Number(chunkEnv);
  const p: Problem = { b, t, hq: 8, h: 8, d: 64, e: 64, deg: 2, chunk, dtype: "bf16", scale: 1 / 8, gated: true, initialState: false };
  const path = chunk >= t ? "quadratic" : "chunked";
  let pool: Pool | null = null;
  try {
    const fwd = withManifestSchedules((s) => forwardPlan(p, s), (x) => x).built;
    const bwd = fwdOnly ? emptyPlan : withManifestSchedules((s) => backwardPlan(p, s), (x) => x).built;
    const passes = [["fwd", fwd], ["bwd", bwd]] as const;
    // useful work of the forward (bench/kernel-flops.ts): attention pairs and the state products
    const fwdFlops = fwd.steps.reduce((s, step) => s + (kernelFlops(stepKernel(step).name, p) ?? 0), 0);
    const kernelLine = (pass: string, kernel: string, ms: number | null, grid: string): string => {
      const flops = kernelFlops(kernel, p);
      return JSON.stringify({ kind: "kernel", b, t, chunk, pass, kernel, ms, flops, tflops: flops !== null && ms !== null ? flops / ms / 1e9 : null, grid });
    };
    if (dry) {
      for (const [pass, plan] of passes)
        for (const s of preparePlan(plan)) console.log(kernelLine(pass, s.kernel.name, null, s.grid.join("x") + ` smem=${s.entry.smemBytes}`));
      console.log(JSON.stringify({ b, t, chunk, fwd_ms: null, fwdbwd_ms: null, fwd_tflops: null, launches: fwd.steps.length + bwd.steps.length, path, dry: true }));
      continue;
    }
    pool = new Pool(reps);
    pool.alloc(fwd);
    pool.alloc(bwd);
    if (fwdOnly) pool.alloc({ buffers: [{ name: "dY", dtype: "bf16", shape: [b, t, 8, 64], init: "nan" }], steps: [], outputs: [] });
    const n = b * t * 8;
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
    native!.synchronize();
    const bad = (fwdOnly ? ["Y"] : ["Y", "dQ", "dK", "dV", "dlogG"]).filter((o) => pool!.hasNaN(o));
    if (bad.length) throw new Error(`NaN in ${bad.join(", ")} (an element no kernel wrote, or an overflow)`);
    const fwdMs = medianMs(runFwd);
    const fwdbwdMs = fwdOnly ? null : medianMs(() => {
      runFwd();
      runBwd();
    });
    if (process.env.PROFILE)
      for (const [pass, plan] of passes) for (const r of pool.profile(plan)) console.log(kernelLine(pass, r.kernel, r.ms, r.grid));
    console.log(JSON.stringify({ b, t, chunk, fwd_ms: fwdMs, fwdbwd_ms: fwdbwdMs, fwd_tflops: fwdFlops / fwdMs / 1e9, launches: fwd.steps.length + bwd.steps.length, path }));
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    console.log(JSON.stringify({ kind: "error", b, t, chunk, error: msg }));
    console.error(`b=${b} t=${t} chunk=${chunk}: ${err instanceof Error ? err.stack : msg}`);
    process.exitCode = 1;
  } finally {
    try {
      pool?.free();
    } catch (err) {
      console.error(`b=${b} t=${t}: freeing the buffers failed: ${err instanceof Error ? err.message : String(err)}`);
      process.exitCode = 1;
    }
  }
}
