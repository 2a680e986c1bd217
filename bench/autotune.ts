// Autotune: sweep each kernel's schedule space (KernelDef.scheduleSpace) on the GPU and record the
// fastest schedule per (kernel, spec) in codegen/schedules.json, which `retention gen` reads.
//
// Per variant (one schedule of one kernel): generate that kernel alone into build/tune/<kernel>/<scheduleKey>/
// (sources, manifest, and the fatbin: sm_90a only), all variants compiled in parallel; then build
// the forward + backward plans of b=B (default 1), h=hq=8, t=T, gated (a chunk-free kernel: on the quadratic path), with that kernel's schedule set to the
// variant (the others as the manifests have them), run both once over freshly allocated buffers
// (random inputs, everything else NaN-poisoned) to populate the kernel's inputs, check the
// kernel's outputs are NaN-free, and time its launch(es) alone (median of REPS CUDA-event timings).
// The runtime finds the variant through env PRT_MANIFEST: the variant's runtime manifest (fatbin
// paths made absolute) first, then the usual manifests (generated/ and build/generated/*, whose
// fatbins must be built in build/kernels or PRT_KERNEL_DIR).
//
// Usage: node --import tsx bench/autotune.ts --spec p2_d64_e64_c128_bf16 --kernels query_state_bwd_dq,update_state_bwd
//          [--t 16384] [--b 1] [--max-variants N] [--only SCHEDULE,...] [--out codegen/schedules.json] [--jobs N] [--reps 10] [--dry-run]
// --dry-run generates and compiles the variants and stops (no GPU needed).

import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import path from "node:path";
import { DEFAULT_SCHEDULES_FILE, generate, parseSchedules, REPO_ROOT, writeGenerated } from "../codegen/gen.ts";
import { SMEM_LIMIT } from "../codegen/lower/rules.ts";
import { compileAll, jobsOf, progressLine, type CompileJob } from "../codegen/nvcc.ts";
import { dtypeBytes, type DType } from "../dsl/dtype.ts";
import { KERNELS } from "../dsl/kernels/index.ts";
import { backwardPlan } from "../dsl/plan-backward.ts";
import { forwardPlan, type Problem } from "../dsl/plan.ts";
import { numel, type Plan } from "../dsl/plan-types.ts";
import { checkSpec, scheduleKey, specKey, type KernelDef, type Schedule, type Spec } from "../dsl/spec.ts";
import { DeviceBuffer, cudaAvailable } from "../runtime/device.ts";
import { preparePlan, withManifestSchedules } from "../runtime/execute-gpu.ts";
import { launchKernel, loadKernel, manifestPaths } from "../runtime/kernels.ts";
import { loadNative } from "../runtime/native.ts";
import { hasNaN, medianMs, randomNormal } from "./gpu-timing.ts";

// ---- arguments ---------------------------------------------------------------------------------
const FLAGS = new Set(["dry-run"]);
const VALUES = new Set(["spec", "kernels", "t", "b", "max-variants", "only", "out", "jobs", "reps"]);
const args = new Map<string, string>();
{
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const name = a.replace(/^--/, "");
    if (!a.startsWith("--") || (!FLAGS.has(name) && !VALUES.has(name)))
      throw new Error(`autotune: unknown argument '${a}' (expected --spec, --kernels, --t, --b, --max-variants, --only, --out, --jobs, --reps, --dry-run)`);
    if (FLAGS.has(name)) args.set(name, "1");
    else {
      const v = argv[++i];
      if (v === undefined) throw new Error(`autotune: --${name} expects a value`);
      args.set(name, v);
    }
  }
}
const intArg = (name: string, dflt: number): number => {
  const v = args.get(name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`autotune: --${name}: expected a positive integer, received '${v}'`);
  return n;
};
function parseSpecKey(key: string): Spec {
  const m = /^p(\d+)_d(\d+)_e(\d+)_c(\d+)_(f16|bf16|f32)$/.exec(key);
  if (!m) throw new Error(`autotune: --spec: expected p<deg>_d<d>_e<e>_c<chunk>_<dtype>, received '${key}'`);
  return checkSpec({ deg: Number(m[1]), d: Number(m[2]), e: Number(m[3]), chunk: Number(m[4]), dtype: m[5] as DType });
}
const spec = parseSpecKey(args.get("spec") ?? "p2_d64_e64_c128_bf16");
const sk = specKey(spec);
const kernelNames = (args.get("kernels") ?? "query_state_bwd_dq,update_state_bwd").split(",");
const defs: KernelDef[] = kernelNames.map((n) => {
  const k = KERNELS.find((x) => x.name === n);
  if (!k) throw new Error(`autotune: --kernels: no kernel '${n}' (expected some of ${KERNELS.map((x) => x.name).join(", ")})`);
  return k;
});
const T = intArg("t", 16384);
const BATCH = intArg("b", 1);
const maxVariants = intArg("max-variants", Number.MAX_SAFE_INTEGER);
/** --only w4_bd32_bt128_s3,...: sweep just these schedules of the space (the default always runs, as the baseline). */
const only = args.has("only") ? new Set(args.get("only")!.split(",")) : null;
const jobs = intArg("jobs", cpus().length);
const reps = intArg("reps", 10);
const outFile = path.resolve(args.get("out") ?? DEFAULT_SCHEDULES_FILE);
const dryRun = args.has("dry-run");
const TUNE_DIR = path.join(REPO_ROOT, "build", "tune");
const ARCH = "sm_90a" as const;
const log = (s: string): void => void process.stderr.write(s + "\n");

// ---- generate every variant --------------------------------------------------------------------
interface Variant {
  readonly def: KernelDef;
  readonly sch: Schedule;
  readonly key: string;
  readonly isDefault: boolean;
  readonly dir: string;
  smem: number;
  runtimeManifest: string;
  jobs: CompileJob[];
  status: "ok" | string; // else why it is out
  ms: number;
  nan: boolean;
}

const variants: Variant[] = [];
for (const def of defs) {
  const dflt = def.schedule(spec);
  const space = def.scheduleSpace(spec).filter((s) => scheduleKey(s) !== scheduleKey(dflt) && (only === null || only.has(scheduleKey(s))));
  const chosen = [dflt, ...space].slice(0, Math.max(1, maxVariants));
  for (const sch of chosen) {
    const key = scheduleKey(sch);
    const v: Variant = { def, sch, key, isDefault: key === scheduleKey(dflt), dir: path.join(TUNE_DIR, def.name, sk, key), smem: NaN, runtimeManifest: "", jobs: [], status: "ok", ms: NaN, nan: false };
    variants.push(v);
    try {
      const g = generate({
        selection: { degs: [spec.deg], ds: [spec.d], es: [spec.e], chunks: [spec.chunk], dtypes: [spec.dtype], archs: [ARCH], kernels: [def.name] },
        scheduleFor: (k, s) => (k.name === def.name ? sch : k.schedule(s)), // the plans name every kernel: only this one is the variant
      });
      const entry = g.manifest.kernels[0]!;
      v.smem = entry.smemBytes;
      if (entry.smemBytes > SMEM_LIMIT[ARCH]) {
        v.status = `smem ${entry.smemBytes} > ${SMEM_LIMIT[ARCH]}`;
        continue;
      }
      writeGenerated(v.dir, g);
      v.jobs = jobsOf(g.manifest, v.dir, v.dir);
      // the runtime resolves a manifest's fatbin names against one folder (PRT_KERNEL_DIR); an
      // absolute name resolves to itself, so this copy points at the variant's own fatbin
      const rt = { ...g.manifest, kernels: g.manifest.kernels.map((k) => ({ ...k, fatbin: path.join(v.dir, k.fatbin) })) };
      v.runtimeManifest = path.join(v.dir, "runtime-manifest.json");
      writeFileSync(v.runtimeManifest, JSON.stringify(rt, null, 1) + "\n");
    } catch (e) {
      v.status = `gen failed: ${(e instanceof Error ? e.message : String(e)).split("\n")[0]}`;
    }
  }
}
log(`autotune: ${sk}, ${variants.length} variants of ${defs.map((d) => d.name).join(", ")} (${variants.filter((v) => v.status !== "ok").length} out before compiling)`);

// ---- compile, all at once ----------------------------------------------------------------------
const allJobs = variants.flatMap((v) => v.jobs);
const t0 = performance.now();
const cr = await compileAll(allJobs, {
  concurrency: jobs,
  onEvent: (e) => log(`${progressLine(e)}  (${path.relative(TUNE_DIR, path.dirname(e.job.source))})`),
});
for (const f of cr.failures) {
  const v = variants.find((x) => x.jobs.includes(f.job))!;
  v.status = "nvcc failed";
  log(`\n${v.def.name} ${v.key}: ${f.log.slice(0, 4000)}`);
}
log(`autotune: nvcc ${cr.compiled} compiled, ${cr.skipped} up to date, ${cr.failures.length} failed in ${((performance.now() - t0) / 1000).toFixed(1)} s (${jobs} at a time)`);

if (dryRun) {
  for (const v of variants) console.log(`${v.def.name.padEnd(22)} ${v.key.padEnd(20)} smem ${String(v.smem).padStart(6)}  ${v.status}${v.isDefault ? "  (default)" : ""}`);
  console.log(`dry run: ${variants.filter((v) => v.status === "ok").length}/${variants.length} variants generated and compiled in ${TUNE_DIR}; no timing`);
  process.exit(cr.failures.length ? 1 : 0);
}

// ---- time on the GPU ---------------------------------------------------------------------------
const gpu = cudaAvailable();
if (!gpu.ok) throw new Error(`autotune needs a GPU for timing (use --dry-run to only compile): ${gpu.reason}`);
const native = loadNative();
const baseManifests = manifestPaths(); // the usual ones (or the caller's PRT_MANIFEST)

let seed = 1;
const randomBits = (n: number, dtype: DType): Uint16Array | Float32Array => randomNormal(n, dtype, seed++);

const problemFor = (def: (typeof defs)[number]): Problem => ({
  b: BATCH, t: T, hq: 8, h: 8, d: spec.d, e: spec.e, deg: spec.deg,
  // a chunk-free kernel runs on the quadratic path: one window over the sequence (a chunk >= t)
  chunk: def.chunkFree ? Math.max(T, spec.chunk) : spec.chunk,
  dtype: spec.dtype, scale: 1 / Math.sqrt(spec.d), gated: true, initialState: false,
});

function timeVariant(v: Variant): void {
  process.env.PRT_MANIFEST = [v.runtimeManifest, ...baseManifests].join(":");
  const given = { [v.def.name]: v.sch };
  const problem = problemFor(v.def);
  const fwd = withManifestSchedules((s) => forwardPlan(problem, s), (x) => x, given).built;
  const bwd = withManifestSchedules((s) => backwardPlan(problem, s), (x) => x, given).built;
  const bufs = new Map<string, DeviceBuffer>();
  const fwdNames = new Map(fwd.buffers.map((b) => [b.name, b]));
  try {
    for (const plan of [fwd, bwd] as Plan[])
      for (const b of plan.buffers) {
        if (bufs.has(b.name)) continue;
        if (b.dtype === "i32") throw new Error(`autotune: plan buffer '${b.name}' is a table; plans with tables are not swept here`);
        const buf = DeviceBuffer.alloc(numel(b.shape) * dtypeBytes(b.dtype));
        bufs.set(b.name, buf);
        // an input of the forward, or of the backward alone (dY); the backward's other inputs are forward outputs
        const input = b.init === "input" && (plan === fwd || !fwdNames.has(b.name));
        if (b.init === "zeros") buf.zero();
        else if (!input) buf.poison();
        else if (b.name === "logG")
          // logsigmoid of N(4, 1): gates around 0.98, the regime of a trained model
          buf.upload(new Float32Array(numel(b.shape)).map((_, i) => -Math.log1p(Math.exp(-(4 + Math.sin(i * 12.9898) * 1.5)))));
        else buf.upload(randomBits(numel(b.shape), b.dtype));
      }
    const prep = [...preparePlan(fwd), ...preparePlan(bwd)];
    const fns = prep.map((p) => loadKernel(p.entry));
    const launch = (i: number): void => {
      const p = prep[i]!;
      launchKernel(fns[i]!, p.entry, p.kernel, p.grid, p.step.params, (t) => bufs.get(p.step.bind[t]!)!.ptr, p.what);
    };
    const mine = prep.flatMap((p, i) => (p.kernel.name === v.def.name ? [i] : []));
    if (!mine.length) throw new Error(`the plans of t=${T} run no ${v.def.name}`);
    for (const i of mine)
      if (!prep[i]!.entry.fatbin.startsWith(v.dir)) throw new Error(`step ${prep[i]!.what} resolved to ${prep[i]!.entry.fatbin}, not the variant's`);
    prep.forEach((_, i) => launch(i));
    native.synchronize();
    v.nan = mine.some((i) =>
      prep[i]!.kernel.tensors.filter((t) => t.role === "out").some((t) => t.dtype !== "i32" && hasNaN(bufs.get(prep[i]!.step.bind[t.name]!)!, t.dtype)),
    );
    v.ms = medianMs(() => mine.forEach(launch), reps);
  } finally {
    for (const b of bufs.values()) b.free();
  }
}

/** Time every compiled variant of one kernel. */
function timeKernel(def: (typeof defs)[number]): void {
  for (const v of variants.filter((x) => x.status === "ok" && x.def === def)) {
    try {
      timeVariant(v);
      log(`${v.def.name} ${v.key}: ${v.ms.toFixed(4)} ms${v.nan ? "  NaN in its outputs!" : ""}`);
    } catch (e) {
      v.status = `run failed: ${(e instanceof Error ? e.message : String(e)).split("\n")[0]}`;
      log(`${v.def.name} ${v.key}: ${v.status}`);
    }
  }
}

// ---- report and record -------------------------------------------------------------------------
/** Print one kernel's table and return its fastest NaN-free variant. */
function reportKernel(def: (typeof defs)[number]): Variant | undefined {
  const vs = variants.filter((v) => v.def === def);
  const dflt = vs.find((v) => v.isDefault);
  const good = vs.filter((v) => v.status === "ok" && !v.nan && Number.isFinite(v.ms));
  const win = good.reduce<Variant | undefined>((a, v) => (!a || v.ms < a.ms ? v : a), undefined);
  console.log(`\n${def.name} / ${sk}  (b=${BATCH} h=hq=8 t=${T}${def.chunkFree ? " quadratic path" : ""}, median of ${reps}, ${ARCH})`);
  console.log(`  ${"schedule".padEnd(20)} ${"smem".padStart(7)} ${"ms".padStart(9)} ${"speedup".padStart(8)}`);
  for (const v of [...vs].sort((a, b) => (Number.isFinite(a.ms) ? a.ms : Infinity) - (Number.isFinite(b.ms) ? b.ms : Infinity))) {
    const sp = dflt && Number.isFinite(dflt.ms) && Number.isFinite(v.ms) ? `${(dflt.ms / v.ms).toFixed(2)}x` : "-";
    const note = [v.isDefault ? "default" : "", v === win ? "BEST" : "", v.nan ? "NaN" : "", v.status !== "ok" ? v.status : ""].filter(Boolean).join(", ");
    console.log(`  ${v.key.padEnd(20)} ${String(v.smem).padStart(7)} ${(Number.isFinite(v.ms) ? v.ms.toFixed(4) : "-").padStart(9)} ${sp.padStart(8)}  ${note}`);
  }
  return win;
}

/** Merge the winners into the schedules file (after each kernel, so a run cut short keeps what it measured). */
function record(best: ReadonlyMap<string, Variant>): void {
  if (!best.size) return;
  const existing: Record<string, Schedule> = existsSync(outFile) ? (JSON.parse(readFileSync(outFile, "utf8")) as Record<string, Schedule>) : {};
  for (const [k, v] of best)
    existing[k] = { numWarps: v.sch.numWarps, blockD: v.sch.blockD, blockT: v.sch.blockT, stages: v.sch.stages, ...((v.sch.minBlocks ?? 1) > 1 ? { minBlocks: v.sch.minBlocks } : {}) };
  const sorted = Object.fromEntries(Object.keys(existing).sort().map((k) => [k, existing[k]!]));
  const text = JSON.stringify(sorted, null, 2) + "\n";
  parseSchedules(text, outFile); // what gen will accept
  writeFileSync(outFile, text);
  console.log(`\nwrote ${[...best.keys()].join(", ")} into ${path.relative(process.cwd(), outFile) || outFile}; regenerate with \`npm run gen:default\` (and rebuild: npm run build:kernels)`);
}

// ---- per kernel: time, report, record ----------------------------------------------------------
const best = new Map<string, Variant>();
for (const def of defs) {
  timeKernel(def);
  const win = reportKernel(def);
  if (win) best.set(`${def.name}/${sk}`, win);
  record(best);
}
if (!best.size) console.log("\nno variant timed: nothing written");
