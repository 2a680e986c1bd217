// The algorithm table (dsl/algorithm.ts): for each spec (without its chunk), time forward+backward of
// the quadratic form (a chunk >= t: the chunk-free one-window plans) and of the chunked form at
// every built chunk, over a sweep of t and of b * h, on this GPU; record the longest t at which the
// quadratic form wins at every b * h swept (quadraticMaxT) and the fastest chunk past it, under
// the device's name, in codegen/algorithms.json (gen copies it into every manifest).
//
// Usage (on the GPU machine, with the specs' kernels built):
//   node --import tsx bench/algorithms.ts [--specs p2_d64_e64_bf16,...] [--ts 1024,2048,...] [--bh 8,64]
//                                         [--reps 10] [--out codegen/algorithms.json]
// Prints a table per spec (ms of each form at each t and b * h), one JSON line per measurement.

import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { DEFAULT_ALGORITHMS_FILE, loadAlgorithms } from "../codegen/gen.ts";
import type { AlgorithmEntry } from "../dsl/algorithm.ts";
import type { DType } from "../dsl/dtype.ts";
import { backwardPlan } from "../dsl/plan-backward.ts";
import { forwardPlan, type Problem } from "../dsl/plan.ts";
import { cudaAvailable } from "../runtime/device.ts";
import { withManifestSchedules } from "../runtime/execute-gpu.ts";
import { loadManifests } from "../runtime/kernels.ts";
import { loadNative } from "../runtime/native.ts";
import { medianMs, Pool, randomNormal } from "./gpu-timing.ts";

const argv = process.argv.slice(2);
const arg = (name: string, dflt: string): string => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : dflt;
};
for (const a of argv) if (a.startsWith("--") && !["--specs", "--ts", "--bh", "--reps", "--out"].includes(a)) throw new Error(`algorithms: unknown argument ${a} (expected --specs, --ts, --bh, --reps, --out)`);
const ints = (name: string, dflt: string): number[] =>
  arg(name, dflt).split(",").map((x) => {
    const n = Number(x);
    if (!Number.isInteger(n) || n < 1) throw new Error(`algorithms: --${name}: expected positive integers, received '${x}'`);
    return n;
  });
const specs = arg("specs", "p2_d64_e64_bf16").split(",").map((k) => {
  const m = /^p(\d+)_d(\d+)_e(\d+)_(f16|bf16|f32)$/.exec(k);
  if (!m) throw new Error(`algorithms: --specs: expected p<deg>_d<d>_e<e>_<dtype>, received '${k}'`);
  return { key: k, deg: Number(m[1]), d: Number(m[2]), e: Number(m[3]), dtype: m[4] as DType };
});
const ts = ints("ts", "1024,2048,4096,8192,16384,32768,65536");
const bhs = ints("bh", "8,64");
const reps = ints("reps", "10")[0]!;
const outFile = path.resolve(arg("out", DEFAULT_ALGORITHMS_FILE));

const gpu = cudaAvailable();
if (!gpu.ok) throw new Error(`algorithms needs a GPU: ${gpu.reason}`);
const native = loadNative();
const H = 8;

/** Median ms of forward + backward of one problem (fresh buffers, random inputs, outputs checked for NaN). */
function fwdBwdMs(p: Problem): number {
  const fwd = withManifestSchedules((s) => forwardPlan(p, s), (x) => x).built;
  const bwd = withManifestSchedules((s) => backwardPlan(p, s), (x) => x).built;
  const pool = new Pool(reps);
  try {
    pool.alloc(fwd);
    pool.alloc(bwd);
    const n = p.b * p.t * H;
    for (const [name, width, seed] of [["Q", p.d, 1], ["K", p.d, 2], ["V", p.e, 3], ["dY", p.e, 4]] as const)
      pool.bufs.get(name)!.upload(randomNormal(n * width, p.dtype, seed));
    pool.bufs.get("logG")!.upload(new Float32Array(n).map((_, i) => -Math.log1p(Math.exp(-(4 + Math.sin(i * 12.9898) * 1.5)))));
    const runFwd = pool.launcher(fwd), runBwd = pool.launcher(bwd);
    runFwd();
    runBwd();
    native.synchronize();
    const bad = ["Y", "dQ", "dK", "dV", "dlogG"].filter((o) => pool.hasNaN(o));
    if (bad.length) throw new Error(`${JSON.stringify(p)}: NaN in ${bad.join(", ")}`);
    return medianMs(() => {
      runFwd();
      runBwd();
    }, reps);
  } finally {
    pool.free();
  }
}

const table = loadAlgorithms(existsSync(outFile) ? outFile : undefined);
const mine: Record<string, AlgorithmEntry> = { ...(table[gpu.name] ?? {}) };
for (const s of specs) {
  const built = [...new Set(loadManifests().flatMap((m) => m.kernels.filter((k) => k.spec.deg === s.deg && k.spec.d === s.d && k.spec.e === s.e && k.spec.dtype === s.dtype).map((k) => k.spec.chunk)))].sort((a, b) => a - b);
  if (!built.length) throw new Error(`algorithms: no built chunk for ${s.key}`);
  console.log(`\n${s.key} on ${gpu.name}: fwd+bwd ms, h = ${H}, gated (quadratic | chunk ${built.join(" | chunk ")})`);
  let maxT = 0, lastChunk = built[built.length - 1]!;
  for (const t of ts) {
    let quadraticWins = true;
    const chunkMs = new Map<number, number>();
    for (const bh of bhs) {
      const b = Math.max(1, Math.round(bh / H));
      const base: Problem = { b, t, hq: H, h: H, d: s.d, e: s.e, deg: s.deg, chunk: 0, dtype: s.dtype, scale: 1 / Math.sqrt(s.d), gated: true, initialState: false };
      let window = 16;
      while (window < t) window *= 2;
      const quad = fwdBwdMs({ ...base, chunk: window }); // one window: the quadratic form
      const row = built.map((c) => fwdBwdMs({ ...base, chunk: c }));
      built.forEach((c, i) => chunkMs.set(c, (chunkMs.get(c) ?? 0) + row[i]!));
      if (!(quad <= Math.min(...row))) quadraticWins = false;
      console.log(`  t ${String(t).padStart(6)} b*h ${String(b * H).padStart(4)}: ${quad.toFixed(3).padStart(9)} | ${row.map((x) => x.toFixed(3).padStart(9)).join(" | ")}`);
      console.log(JSON.stringify({ spec: s.key, device: gpu.name, t, bh: b * H, quadratic_ms: quad, chunked_ms: Object.fromEntries(built.map((c, i) => [c, row[i]])) }));
    }
    if (quadraticWins) maxT = t; // t ascends, and the first t it loses at ends the sweep
    lastChunk = [...chunkMs].sort((a, b) => a[1] - b[1])[0]![0];
    if (!quadraticWins) break; // longer t only favours the chunked form further
  }
  mine[s.key] = { quadraticMaxT: maxT, chunk: lastChunk };
  console.log(`  -> the quadratic form up to t = ${maxT}, then chunk ${lastChunk}`);
}
const merged = { ...table, [gpu.name]: Object.fromEntries(Object.keys(mine).sort().map((k) => [k, mine[k]!])) };
writeFileSync(outFile, JSON.stringify(merged, null, 2) + "\n");
loadAlgorithms(outFile); // what gen will accept
console.log(`\nwrote ${gpu.name} into ${path.relative(process.cwd(), outFile) || outFile}; regenerate with \`npm run gen:default\``);
