// The public API on the GPU, for every spec of the kernel manifests (generated/manifest.json, plus
// extra specs under build/generated/) of one dtype per test file (retention-<dtype>.gpu.test.ts, so
// that vitest runs the three in parallel: the interpreter side is CPU-bound): forward, backward and
// decode through the generated CUDA, against the float64 reference of SPEC.md (all cases) and
// against the interpreter running the same plans (dsl/execute-cpu.ts, one case per spec: it is
// slow), within SPEC's tolerances (gradients twice). Every plan buffer a kernel must write starts
// NaN-poisoned.
//
// Skips, visibly, without a GPU (PRT_REQUIRE_GPU=1 makes that a failure instead).
// Knobs (env): FC_SEED (default 42); PRT_GPU_RUNS random reference cases per spec (default 3);
// PRT_GPU_SPECS a regular expression over spec keys (e.g. "p2_d64_.*"); PRT_GPU_INTERP=0 skips
// the interpreter comparisons; OUT: each file writes its table to $OUT/gpu-errors-<dtype>.json and
// merges every such file into $OUT/gpu-errors.json. PRT_GPU_MOCK=1 runs all of it on the CPU
// through test/gpu/interp-device.ts (a check of the harness; no CUDA is involved then).

import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import type { DType } from "../../dsl/dtype.ts";
import { executeOnCpu } from "../../dsl/execute-cpu.ts";
import { backwardPlan } from "../../dsl/plan-backward.ts";
import { createDecodeState, decodeStepOnCpu } from "../../dsl/plan-decode.ts";
import { forwardPlan, type Problem } from "../../dsl/plan.ts";
import { offsetsOf } from "../../dsl/plan-varlen.ts";
import { maxAbsError, referenceBackward, referenceForward, relativeError } from "../../dsl/reference/power-retention.ts";
import { specKey, type Spec } from "../../dsl/spec.ts";
import { KERNELS } from "../../dsl/kernels/index.ts";
import { featureCount } from "../../dsl/sympow.ts";
import { withManifestSchedules } from "../../runtime/execute-gpu.ts";
import { cudaAvailable, Decoder, powerRetention, powerRetentionBackward, Tensor } from "../../runtime/index.ts";
import { loadManifests } from "../../runtime/kernels.ts";
import { TOL } from "../helpers/compare.ts";
import { timeSlice } from "../helpers/layout.ts";
import { fcSeed, rng, uniform, workPerToken } from "../helpers/problems.ts";
import { referenceState } from "../helpers/state.ts";
import { installInterpDevice } from "./interp-device.ts";

// every buffer a kernel must write starts as NaN (runtime/execute-gpu.ts poisons only when asked)
process.env.PRT_POISON ??= "1";
const MOCK = process.env.PRT_GPU_MOCK === "1";
if (MOCK) installInterpDevice();
const gpu = cudaAvailable();
if (!gpu.ok) {
  if (process.env.PRT_REQUIRE_GPU === "1") throw new Error(`PRT_REQUIRE_GPU=1 but there is no usable GPU: ${gpu.reason}`);
  console.warn(`GPU tests skipped (test/gpu/retention-*.gpu.test.ts): ${gpu.reason}`);
} else console.warn(`GPU tests on ${gpu.name} (sm_${gpu.cc}, driver ${gpu.driverVersion})${MOCK ? " [PRT_GPU_MOCK: the interpreter, not CUDA]" : ""}`);

const SEED = fcSeed();
const RUNS = Number(process.env.PRT_GPU_RUNS ?? 3);
const INTERP = process.env.PRT_GPU_INTERP !== "0";
const SPEC_FILTER = process.env.PRT_GPU_SPECS ? new RegExp(`^(?:${process.env.PRT_GPU_SPECS})$`) : null;
const SLOW = { timeout: 600_000 };

// ---- which specs ------------------------------------------------------------------------------------

const FWD_BWD = ["attention", "attention_y", "update_state", "discounted_cumsum", "query_state", "attention_bwd_prep", "attention_bwd_dq",
  "attention_bwd_dkv", "query_state_bwd_dq", "query_state_bwd_ds", "discounted_cumsum_bwd", "update_state_bwd", "combine_grads",
  "attention_bwd_prep_y", "attention_bwd_dq_y", "attention_bwd_dkv_y", "gate_grads_y"];

/** Specs with every forward and backward kernel in the manifests (a chunk-free kernel under any
 * chunk of the spec's deg, d, e and dtype: gen puts it under the smallest): deg 2 ones, and deg 4
 * with d <= 32. */
function manifestSpecs(): Spec[] {
  const by = new Map<string, { spec: Spec; names: Set<string> }>();
  const anyChunk = new Map<string, Set<string>>(); // "p_d_e_dtype" -> chunk-free kernels built
  const group = (s: Spec): string => `${s.deg}/${s.d}/${s.e}/${s.dtype}`;
  for (const m of loadManifests())
    for (const k of m.kernels) {
      const key = specKey(k.spec);
      if (!by.has(key)) by.set(key, { spec: k.spec, names: new Set() });
      by.get(key)!.names.add(k.name);
      if (KERNELS.find((x) => x.name === k.name)?.chunkFree) anyChunk.set(group(k.spec), (anyChunk.get(group(k.spec)) ?? new Set<string>()).add(k.name));
    }
  const has = (spec: Spec, names: Set<string>, n: string): boolean => names.has(n) || (anyChunk.get(group(spec))?.has(n) ?? false);
  return [...by.entries()]
    .filter(([key, { spec, names }]) => FWD_BWD.every((n) => has(spec, names, n)) && (spec.deg === 2 || spec.d <= 32) && (!SPEC_FILTER || SPEC_FILTER.test(key)))
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([, v]) => v.spec);
}

/** Decode also needs the decode kernels of the spec and the fold's (same spec in f32). */
function hasDecode(spec: Spec): boolean {
  const ks = loadManifests().flatMap((m) => m.kernels);
  const has = (name: string, s: Spec): boolean => ks.some((k) => k.name === name && specKey(k.spec) === specKey(s));
  const fold = { ...spec, dtype: "f32" as const };
  return has("decode", spec) && has("cache_append", spec) && ["update_state", "discounted_cumsum", "state_copy"].every((n) => has(n, fold));
}

// ---- the error table ----------------------------------------------------------------------------------

interface Worst {
  spec: string;
  direction: string;
  against: "reference" | "interpreter";
  err: number;
  runs: number;
  where: string;
}
const worst = new Map<string, Worst>();
function record(spec: Spec, direction: string, against: Worst["against"], err: number, where: string): void {
  const key = `${specKey(spec)}|${direction}|${against}`;
  const w = worst.get(key) ?? { spec: specKey(spec), direction, against, err: 0, runs: 0, where: "" };
  w.runs++;
  if (!(err < w.err)) Object.assign(w, { err, where });
  worst.set(key, w);
}

function report(dtype: DType): void {
  if (worst.size === 0) return;
  const rows = [...worst.values()].sort((a, b) => `${a.spec}|${a.direction}|${a.against}`.localeCompare(`${b.spec}|${b.direction}|${b.against}`));
  const head = `${dtype}: worst relative error per spec and direction (FC_SEED=${SEED}; tolerance: fp32 1e-4, fp16 3e-3, bf16 1e-2, gradients 2x)`;
  console.log(formatTable(head, rows));
  const out = process.env.OUT;
  if (!out) return;
  mkdirSync(out, { recursive: true });
  const part = { device: gpu.ok ? gpu.name : null, mock: MOCK, seed: SEED, rows: rows.map((r) => ({ ...r, tol: tolOf(r) })) };
  writeFileSync(path.join(out, `gpu-errors-${dtype}.json`), JSON.stringify(part, null, 2) + "\n");
  // every part written so far, merged (the file that finishes last sees them all)
  const parts = readdirSync(out).filter((f) => /^gpu-errors-\w+\.json$/.test(f)).sort();
  const all = parts.flatMap((f) => (JSON.parse(readFileSync(path.join(out, f), "utf8")) as typeof part).rows);
  const tmp = path.join(out, `.gpu-errors.${process.pid}.json`);
  writeFileSync(tmp, JSON.stringify({ ...part, parts, rows: all }, null, 2) + "\n");
  renameSync(tmp, path.join(out, "gpu-errors.json"));
}

function formatTable(head: string, rows: readonly Worst[]): string {
  const cols = ["spec", "direction", "against", "runs", "worst rel err", "tol", "case"];
  const lines = rows.map((r) => [r.spec, r.direction, r.against, String(r.runs), r.err.toExponential(2), tolOf(r).toExponential(0), r.where]);
  const width = cols.map((c, i) => Math.max(c.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (l: string[]): string => l.map((x, i) => (i === l.length - 1 ? x : x.padEnd(width[i]!))).join("  ");
  return [head, fmt(cols), ...lines.map(fmt)].join("\n");
}

function tolOf(r: Worst): number {
  const dtype = r.spec.split("_").pop() as DType;
  return TOL[dtype] * (r.direction === "backward" ? 2 : 1);
}

// ---- cases ------------------------------------------------------------------------------------------------

interface Case {
  readonly p: Problem;
  readonly seed: number;
}
const describeCase = (c: Case): string => {
  const p = c.p;
  return `b=${p.b} t=${p.t} hq=${p.hq} h=${p.h}${p.gated ? " gated" : ""}${p.initialState ? " S0" : ""} seed=${c.seed}`;
};

interface HostInputs {
  Q: Float32Array;
  K: Float32Array;
  V: Float32Array;
  logG?: Float32Array;
  dY: Float32Array;
}

function hostInputs(c: Case): HostInputs {
  const { b, t, hq, h, d, e, dtype, gated } = c.p;
  const r = rng(c.seed);
  const x: HostInputs = {
    Q: uniform(r, b * t * hq * d, -1, 1, dtype),
    K: uniform(r, b * t * h * d, -1, 1, dtype),
    V: uniform(r, b * t * h * e, -1, 1, dtype),
    dY: uniform(r, b * t * hq * e, -1, 1, dtype),
  };
  if (gated) x.logG = uniform(r, b * t * h, -2, 0, "f32");
  return x;
}

/** Free every tensor made during `f`. */
function scoped<T>(f: (keep: <U extends Tensor | null | undefined>(t: U) => U) => T): T {
  const made: Tensor[] = [];
  try {
    return f((t) => {
      if (t) made.push(t);
      return t;
    });
  } finally {
    for (const t of made) t.free();
  }
}

/** Relative error of `out` against `ref`, NaN/Inf caught first; throws above `tol`. */
function check(out: Float32Array, ref: ArrayLike<number>, tol: number, what: string): number {
  const bad = out.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) throw new Error(`${what}: element ${bad} of ${out.length} is ${out[bad]} (an unwritten element reads NaN) [FC_SEED=${SEED}]`);
  const rel = relativeError(out, ref);
  if (!(rel <= tol)) throw new Error(`${what}: relative error ${rel.toExponential(3)} > ${tol} (max abs ${maxAbsError(out, ref).toExponential(3)}) [FC_SEED=${SEED}]`);
  return rel;
}

const GRADS = ["dQ", "dK", "dV", "dlogG"] as const;

/** Forward + backward on the GPU, compared with the float64 reference. */
function againstReference(spec: Spec, c: Case): void {
  const p = c.p, x = hostInputs(c), what = `${specKey(spec)} ${describeCase(c)}`;
  const tol = TOL[p.dtype];
  const ref = referenceForward({ shape: p, deg: p.deg, scale: p.scale, Q: x.Q, K: x.K, V: x.V, logG: x.logG ?? null });
  const logG = x.logG ?? new Float32Array(p.b * p.t * p.h);
  const g = referenceBackward({ shape: p, deg: p.deg, scale: p.scale, Q: x.Q, K: x.K, V: x.V, logG }, x.dY);
  scoped((keep) => {
    const Q = keep(Tensor.upload(x.Q, [p.b, p.t, p.hq, p.d], p.dtype));
    const K = keep(Tensor.upload(x.K, [p.b, p.t, p.h, p.d], p.dtype));
    const V = keep(Tensor.upload(x.V, [p.b, p.t, p.h, p.e], p.dtype));
    const G = keep(x.logG ? Tensor.upload(x.logG, [p.b, p.t, p.h], "f32") : null);
    const r = powerRetention(Q, K, V, G, { deg: p.deg, chunk: p.chunk, scale: p.scale });
    keep(r.Y);
    try {
      record(spec, "forward", "reference", check(r.Y.download(), ref.Y, tol, `Y (${what})`), describeCase(c));
      const dY = keep(Tensor.upload(x.dY, [p.b, p.t, p.hq, p.e], p.dtype));
      const grads = powerRetentionBackward(r.saved, dY);
      for (const k of GRADS) keep(grads[k]);
      const scale = g.dV.reduce((m, v) => Math.max(m, Math.abs(v)), 0); // no spread: dV can exceed the call-stack limit
      for (const k of GRADS) {
        const out = grads[k]?.download();
        if (k === "dlogG" && !p.gated) {
          expect(grads.dlogG).toBeNull();
          continue;
        }
        const want = g[k]!;
        if ((k === "dQ" || k === "dK") && want.every((v) => v === 0)) {
          // t = 1: y_0 = v_0, so dQ = dK = 0 exactly; compare absolutely on the scale of dV
          const abs = maxAbsError(out!, want);
          if (!(abs <= 2 * tol * scale)) throw new Error(`${k} (${what}): max abs ${abs} where the reference is 0`);
          continue;
        }
        record(spec, "backward", "reference", check(out!, want, 2 * tol, `${k} (${what})`), `${k} ${describeCase(c)}`);
      }
    } finally {
      r.saved.free();
    }
  });
}

/** One non-finite element of V (token `chunk + 5`, with rows of its chunk before and after it): Y and
 * every gradient on the GPU are non-finite exactly where the float64 reference is not finite, and
 * bit-identical to the GPU's clean run everywhere else (README "Non-finite inputs"). */
function nonFiniteV(spec: Spec, value: number): void {
  const c: Case = {
    p: { b: 1, t: spec.chunk + 37, hq: 2, h: 1, d: spec.d, e: spec.e, deg: spec.deg, chunk: spec.chunk, dtype: spec.dtype, scale: 1 / Math.sqrt(spec.d), gated: true, initialState: false, finalState: false },
    seed: 31 + spec.d,
  };
  const p = c.p, clean = hostInputs(c), what = `${specKey(spec)} ${describeCase(c)}, v = ${value} at token ${spec.chunk + 5}`;
  const V = clean.V.slice();
  V[(spec.chunk + 5) * p.h * p.e + 3] = value;
  const bad = { ...clean, V };
  const ref = referenceForward({ shape: p, deg: p.deg, scale: p.scale, Q: bad.Q, K: bad.K, V, logG: bad.logG ?? null }).Y;
  const refG = referenceBackward({ shape: p, deg: p.deg, scale: p.scale, Q: bad.Q, K: bad.K, V, logG: bad.logG! }, bad.dY);
  const run = (x: HostInputs): Record<string, Float32Array> =>
    scoped((keep) => {
      const Q = keep(Tensor.upload(x.Q, [p.b, p.t, p.hq, p.d], p.dtype));
      const K = keep(Tensor.upload(x.K, [p.b, p.t, p.h, p.d], p.dtype));
      const Vt = keep(Tensor.upload(x.V, [p.b, p.t, p.h, p.e], p.dtype));
      const G = keep(Tensor.upload(x.logG!, [p.b, p.t, p.h], "f32"));
      const r = powerRetention(Q, K, Vt, G, { deg: p.deg, chunk: p.chunk, scale: p.scale });
      keep(r.Y);
      try {
        const grads = powerRetentionBackward(r.saved, keep(Tensor.upload(x.dY, [p.b, p.t, p.hq, p.e], p.dtype)));
        for (const k of GRADS) keep(grads[k]);
        return { Y: r.Y.download(), ...Object.fromEntries(GRADS.map((k) => [k, grads[k]!.download()])) };
      } finally {
        r.saved.free();
      }
    });
  const want = run(clean), got = run(bad);
  const refs: Record<string, ArrayLike<number>> = { Y: ref, dQ: refG.dQ, dK: refG.dK, dV: refG.dV, dlogG: refG.dlogG! };
  let nonFinite = 0;
  for (const [name, out] of Object.entries(got)) {
    const r = refs[name]!;
    for (let i = 0; i < out.length; i++) {
      if (!Number.isFinite(r[i]!)) {
        nonFinite++;
        if (Number.isFinite(out[i]!)) throw new Error(`${name}[${i}] (${what}): ${out[i]} where the reference is ${r[i]}`);
      } else if (!Object.is(out[i], want[name]![i])) throw new Error(`${name}[${i}] (${what}): ${out[i]}, the clean run ${want[name]![i]} (the reference is finite there)`);
    }
  }
  expect(nonFinite, what).toBeGreaterThan(0);
}

/** Random cases of the spec: any t up to 300 (not a multiple of the chunk, mostly), b, GQA, gates. */
function arbCase(spec: Spec): fc.Arbitrary<Case> {
  const heads = fc.constantFrom([1, 1], [2, 1], [4, 2], [2, 2], [4, 1]);
  const D = featureCount(spec.d, spec.deg);
  const tMax = spec.deg === 4 ? 2 * spec.chunk + 3 : 300;
  return fc
    .record({ b: fc.integer({ min: 1, max: 2 }), heads, t: fc.integer({ min: 1, max: tMax }), gated: fc.boolean(), seed: fc.integer({ min: 0, max: 0x7fffffff }) })
    .map(({ b, heads: [hq, h], t, gated, seed }) => ({
      p: { b, t, hq: hq!, h: h!, d: spec.d, e: spec.e, deg: spec.deg, chunk: spec.chunk, dtype: spec.dtype, scale: 1 / Math.sqrt(spec.d), gated, initialState: false, finalState: false },
      seed: seed + D, // different data per spec for the same draw
    }));
}

/** The case compared with the interpreter: two chunks and a ragged tail where the interpreter's
 * cost allows, else one chunk with a ragged tail (its cost is the whole chunk's: padded rows are
 * computed too). GQA except at d >= 128, where one chunk already costs ~10 s of interpreter. */
function interpCase(spec: Spec): Case {
  const [b, hq, h] = spec.d <= 32 ? [2, 4, 2] : spec.d < 128 ? [1, 2, 1] : [1, 1, 1];
  const per = b * hq * workPerToken({ ...spec, hq, h });
  const t = per * 2 * spec.chunk <= 8e7 ? spec.chunk + 5 : spec.chunk - 3;
  return {
    p: { b, t, hq, h, d: spec.d, e: spec.e, deg: spec.deg, chunk: spec.chunk, dtype: spec.dtype, scale: 1 / Math.sqrt(spec.d), gated: true, initialState: true, finalState: true },
    seed: 1000 + spec.d + spec.chunk,
  };
}

/** Forward (with an initial state and the final state) and backward (with a state gradient) on the
 * GPU and through the interpreter, same plans, same schedules. */
function againstInterpreter(spec: Spec, c: Case): void {
  const p = c.p, x = hostInputs(c), what = `${specKey(spec)} ${describeCase(c)}`;
  const tol = TOL[p.dtype];
  const D = featureCount(p.d, p.deg);
  // a real state to start from: the state after a short random prefix
  const r0 = rng(c.seed ^ 0xabc);
  const pre: Problem = { ...p, t: 8, initialState: false };
  const st = referenceState(pre, { Q: new Float32Array(0), K: uniform(r0, p.b * 8 * p.h * p.d, -1, 1, p.dtype), V: uniform(r0, p.b * 8 * p.h * p.e, -1, 1, p.dtype), logG: uniform(r0, p.b * 8 * p.h, -1, 0, "f32") });
  const S0 = Float32Array.from(st.S), Z0 = Float32Array.from(st.Z);
  const dS = uniform(r0, p.b * p.h * D * p.e, -1e-3, 1e-3, "f32"), dZ = uniform(r0, p.b * p.h * D, -1e-3, 1e-3, "f32");
  scoped((keep) => {
    const Q = keep(Tensor.upload(x.Q, [p.b, p.t, p.hq, p.d], p.dtype));
    const K = keep(Tensor.upload(x.K, [p.b, p.t, p.h, p.d], p.dtype));
    const V = keep(Tensor.upload(x.V, [p.b, p.t, p.h, p.e], p.dtype));
    const G = keep(Tensor.upload(x.logG!, [p.b, p.t, p.h], "f32"));
    const init = { S: keep(Tensor.upload(S0, [p.b, p.h, D, p.e], "f32")), Z: keep(Tensor.upload(Z0, [p.b, p.h, D], "f32")) };
    const r = powerRetention(Q, K, V, G, { deg: p.deg, chunk: p.chunk, scale: p.scale, initialState: init, returnState: true });
    keep(r.Y);
    keep(r.state!.S);
    keep(r.state!.Z);
    try {
      const inputs = { Q: x.Q, K: x.K, V: x.V, logG: x.logG!, S0, Z0 };
      const cpu = executeOnCpu(forwardPlan(p, r.saved.schedules), inputs);
      record(spec, "forward", "interpreter", check(r.Y.download(), cpu.Y!, tol, `Y vs interpreter (${what})`), describeCase(c));
      record(spec, "state", "interpreter", check(r.state!.S.download(), cpu.Sfinal!, tol, `Sfinal vs interpreter (${what})`), describeCase(c));
      record(spec, "state", "interpreter", check(r.state!.Z.download(), cpu.Zfinal!, tol, `Zfinal vs interpreter (${what})`), describeCase(c));
      const ref = referenceState(p, inputs);
      record(spec, "state", "reference", check(r.state!.S.download(), ref.S, tol, `Sfinal vs reference (${what})`), describeCase(c));

      const dY = keep(Tensor.upload(x.dY, [p.b, p.t, p.hq, p.e], p.dtype));
      const dState = { S: keep(Tensor.upload(dS, [p.b, p.h, D, p.e], "f32")), Z: keep(Tensor.upload(dZ, [p.b, p.h, D], "f32")) };
      const grads = powerRetentionBackward(r.saved, dY, { dState });
      for (const k of GRADS) keep(grads[k]);
      keep(grads.dInitialState?.S);
      keep(grads.dInitialState?.Z);
      const { built: bplan } = withManifestSchedules((s) => backwardPlan(p, s), (v) => v, r.saved.schedules);
      const cb = executeOnCpu(bplan, { ...inputs, ...cpu, dY: x.dY, dSfinal: dS, dZfinal: dZ });
      for (const k of GRADS)
        record(spec, "backward", "interpreter", check(grads[k]!.download(), cb[k]!, 2 * tol, `${k} vs interpreter (${what})`), `${k} ${describeCase(c)}`);
      expect(grads.dInitialState).toBeDefined();
      record(spec, "backward", "interpreter", check(grads.dInitialState!.S.download(), cb.dS0!, 2 * tol, `dS0 vs interpreter (${what})`), `dS0 ${describeCase(c)}`);
      record(spec, "backward", "interpreter", check(grads.dInitialState!.Z.download(), cb.dZ0!, 2 * tol, `dZ0 vs interpreter (${what})`), `dZ0 ${describeCase(c)}`);
    } finally {
      r.saved.free();
    }
  });
}

/** Packed sequences (cuSeqlens) on the GPU: each sequence's Y, final state and gradients against the
 * float64 reference of that sequence alone; boundaries inside a chunk and on an edge, an empty and a
 * one-token sequence (whose state passes through, and whose dQ, dK are 0: compared absolutely). */
function packedSequences(spec: Spec): void {
  const lengths = [spec.chunk + 5, 0, 1, Math.max(2, spec.chunk - 7)];
  const cu = offsetsOf(lengths);
  const p: Problem = { b: 1, t: cu[cu.length - 1]!, hq: 2, h: 1, d: spec.d, e: spec.e, deg: spec.deg, chunk: spec.chunk, dtype: spec.dtype,
    scale: 1 / Math.sqrt(spec.d), gated: true, initialState: false, finalState: true };
  const x = hostInputs({ p, seed: 77 + spec.d }), tol = TOL[p.dtype], D = featureCount(p.d, p.deg);
  const what = (s: number, k: string): string => `${k} of sequence ${s} (${specKey(spec)}, packed lengths ${lengths.join(", ")})`;
  scoped((keep) => {
    const Q = keep(Tensor.upload(x.Q, [1, p.t, p.hq, p.d], p.dtype));
    const K = keep(Tensor.upload(x.K, [1, p.t, p.h, p.d], p.dtype));
    const V = keep(Tensor.upload(x.V, [1, p.t, p.h, p.e], p.dtype));
    const G = keep(Tensor.upload(x.logG!, [1, p.t, p.h], "f32"));
    const r = powerRetention(Q, K, V, G, { deg: p.deg, chunk: p.chunk, scale: p.scale, cuSeqlens: cu, returnState: true });
    keep(r.Y);
    keep(r.state!.S);
    keep(r.state!.Z);
    try {
      const Y = r.Y.download(), S = r.state!.S.download();
      const grads = powerRetentionBackward(r.saved, keep(Tensor.upload(x.dY, [1, p.t, p.hq, p.e], p.dtype)));
      for (const k of GRADS) keep(grads[k]);
      const got = Object.fromEntries(GRADS.map((k) => [k, grads[k]!.download()]));
      lengths.forEach((n, s) => {
        const per = p.h * D * p.e, state = S.subarray(s * per, (s + 1) * per);
        if (n === 0) return expect(state.every((v) => v === 0), what(s, "Sfinal (empty: the zero initial state)")).toBe(true);
        const rows = (a: Float32Array, row: number): Float32Array => a.slice(cu[s]! * row, cu[s + 1]! * row);
        const ps: Problem = { ...p, t: n };
        const one = { Q: rows(x.Q, p.hq * p.d), K: rows(x.K, p.h * p.d), V: rows(x.V, p.h * p.e), logG: rows(x.logG!, p.h) };
        const ref = referenceForward({ shape: ps, deg: p.deg, scale: p.scale, ...one });
        record(spec, "packed", "reference", check(rows(Y, p.hq * p.e), ref.Y, tol, what(s, "Y")), `Y ${n} tokens`);
        record(spec, "packed", "reference", check(state, referenceState(ps, one).S, tol, what(s, "Sfinal")), `Sfinal ${n} tokens`);
        const g = referenceBackward({ shape: ps, deg: p.deg, scale: p.scale, ...one }, rows(x.dY, p.hq * p.e));
        const row = { dQ: p.hq * p.d, dK: p.h * p.d, dV: p.h * p.e, dlogG: p.h };
        for (const k of GRADS) {
          const out = rows(got[k]!, row[k]);
          if (n === 1 && k !== "dV") {
            // y_0 = v_0: dQ, dK and dlogG are 0 up to rounding
            expect(maxAbsError(out, g[k]!), what(s, k)).toBeLessThanOrEqual(2 * tol);
            continue;
          }
          record(spec, "packed", "reference", check(out, g[k]!, 2 * tol, what(s, k)), `${k} ${n} tokens`);
        }
      });
    } finally {
      r.saved.free();
    }
  });
}

/** Decode the sequence of `c` in random groups: outputs vs the whole-sequence reference (and, when
 * `cpu`, step by step vs the CPU decode API). */
function decodeCase(spec: Spec, c: Case, cpu: boolean): void {
  const p = c.p, x = hostInputs(c), what = `${specKey(spec)} decode ${describeCase(c)}`;
  const ref = referenceForward({ shape: p, deg: p.deg, scale: p.scale, Q: x.Q, K: x.K, V: x.V, logG: x.logG ?? null });
  const dec = new Decoder({ b: p.b, hq: p.hq, h: p.h, d: p.d, e: p.e, deg: p.deg, chunk: p.chunk, dtype: p.dtype, scale: p.scale, gated: p.gated });
  const state = cpu ? createDecodeState(dec.problem) : null;
  const r = rng(c.seed ^ 0xdec);
  const Y = new Float32Array(p.b * p.t * p.hq * p.e);
  const Ycpu = new Float32Array(Y.length);
  try {
    for (let t0 = 0; t0 < p.t; ) {
      const n = Math.min(p.t - t0, r() < 0.6 ? 1 : 1 + Math.floor(r() * (r() < 0.2 ? p.chunk + 3 : 5)));
      const sl = (a: Float32Array, row: number): Float32Array => timeSlice(a, p.b, p.t, row, t0, t0 + n);
      const q = sl(x.Q, p.hq * p.d), k = sl(x.K, p.h * p.d), v = sl(x.V, p.h * p.e), g = x.logG ? sl(x.logG, p.h) : null;
      const y = scoped((keep) => {
        const yt = keep(
          dec.step(
            keep(Tensor.upload(q, [p.b, n, p.hq, p.d], p.dtype)),
            keep(Tensor.upload(k, [p.b, n, p.h, p.d], p.dtype)),
            keep(Tensor.upload(v, [p.b, n, p.h, p.e], p.dtype)),
            keep(g ? Tensor.upload(g, [p.b, n, p.h], "f32") : null),
          ),
        );
        return yt.download();
      });
      const yc = state ? decodeStepOnCpu(state, { q, k, v, logG: g }, dec.schedules) : null;
      const row = p.hq * p.e;
      for (let bi = 0; bi < p.b; bi++)
        for (let i = 0; i < n; i++)
          for (let f = 0; f < row; f++) {
            Y[((bi * p.t) + t0 + i) * row + f] = y[(bi * n + i) * row + f]!;
            if (yc) Ycpu[((bi * p.t) + t0 + i) * row + f] = yc[(bi * n + i) * row + f]!;
          }
      t0 += n;
      expect(dec.len).toBe(t0 % p.chunk);
    }
    record(spec, "decode", "reference", check(Y, ref.Y, TOL[p.dtype], `y vs reference (${what})`), describeCase(c));
    if (state) {
      record(spec, "decode", "interpreter", check(Y, Ycpu, TOL[p.dtype], `y vs CPU decode (${what})`), describeCase(c));
      const s = dec.download();
      record(spec, "decode", "interpreter", check(s.S, state.S, TOL[p.dtype], `state S vs CPU decode (${what})`), describeCase(c));
    }
  } finally {
    dec.free();
  }
}

// ---- the tests ------------------------------------------------------------------------------------------

/** The tests of every manifest spec of `dtype` (a test file calls this once). */
export function defineRetentionGpuTests(dtype: DType): void {
  const SPECS = gpu.ok ? manifestSpecs().filter((s) => s.dtype === dtype) : [];
  afterAll(() => report(dtype));
  describe.skipIf(!gpu.ok)(`power retention on the GPU, ${dtype}`, () => {
    it("finds specs to test in the manifests", () => {
      expect(SPECS.length, `no ${dtype} spec with all forward and backward kernels in ${loadManifests().map((m) => m.file).join(", ")}${SPEC_FILTER ? ` matching ${SPEC_FILTER}` : ""}`).toBeGreaterThan(0);
    });

    for (const spec of SPECS) {
      describe(specKey(spec), () => {
        it("forward and backward vs the float64 reference: random t (mostly not a multiple of the chunk), b, GQA, gates", SLOW, () => {
          // one fixed case with several chunks and a ragged tail, then random ones
          const fixed: Case = {
            p: { b: 2, t: Math.min(spec.deg === 4 ? 2 * spec.chunk + 3 : 300, 2 * spec.chunk + 19), hq: 4, h: 2, d: spec.d, e: spec.e, deg: spec.deg, chunk: spec.chunk,
              dtype: spec.dtype, scale: 1 / Math.sqrt(spec.d), gated: true, initialState: false, finalState: false },
            seed: 7 + spec.d,
          };
          againstReference(spec, fixed);
          fc.assert(fc.property(arbCase(spec), (c) => againstReference(spec, c)), { seed: SEED, numRuns: RUNS, endOnFailure: true });
        });

        it.skipIf(!INTERP)("forward (initial and final state) and backward (state gradient) vs the interpreter on the same plans", SLOW, () => {
          againstInterpreter(spec, interpCase(spec));
        });

        it("packed sequences (cuSeqlens): each sequence's Y, final state and gradients vs the float64 reference of it alone", SLOW, () => {
          packedSequences(spec);
        });

        it("a non-finite v: NaN where the reference is not finite, the clean run's values everywhere else (forward and gradients)", SLOW, () => {
          for (const value of [Infinity, NaN]) nonFiniteV(spec, value);
        });

        it.skipIf(!hasDecode(spec))("decode in random groups vs the whole-sequence reference (and the CPU decode API)", SLOW, () => {
          const base = interpCase(spec);
          const cheap = workPerToken({ ...spec, hq: base.p.hq, h: base.p.h }) * base.p.b * base.p.hq * (2 * spec.chunk) < 6e7;
          // through at least two folds of the cache
          decodeCase(spec, { p: { ...base.p, t: 2 * spec.chunk + 9, initialState: false, finalState: false, gated: true }, seed: base.seed + 1 }, INTERP && cheap);
          decodeCase(spec, { p: { ...base.p, b: 1, hq: 1, h: 1, t: spec.chunk + 2, initialState: false, finalState: false, gated: false }, seed: base.seed + 2 }, false);
        });
      });
    }
  });
}
