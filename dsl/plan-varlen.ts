// Packed variable-length sequences (kernels/varlen.ts, README "Variable-length sequences"): the
// caller's Q [1, total, hq, d], K, V, logG hold ns sequences back to back, sequence s on rows
// [cu[s], cu[s + 1]). The plans here are the dense chunked plans (plan.ts, plan-backward.ts) run
// over a chunk-aligned copy of the tokens, [1, nc * c, ...], with each sequence starting a chunk of
// its own and the tail of its last chunk zero; the scan over chunks restarts at every sequence
// (discounted_cumsum[_bwd]_varlen), with that sequence's initial state and returning its final one.
// The composition is the dense plans' own, rewritten: their steps read and write the aligned
// buffers, pack steps come before them and unpack steps after.

import { executeOnCpu } from "./execute-cpu.ts";
import { discountedCumsumBwd, discountedCumsumBwdVarlen } from "./kernels/discounted-cumsum-bwd.ts";
import { discountedCumsum, discountedCumsumVarlen } from "./kernels/discounted-cumsum.ts";
import { varlenPack, varlenPackF32, varlenUnpack, varlenUnpackF32 } from "./kernels/varlen.ts";
import { backwardPlan, type BackwardInputs } from "./plan-backward.ts";
import { checkProblem, forwardPlan, planInputs, problemSpec, stepOf, type ForwardInputs, type Problem, type ScheduleTable } from "./plan.ts";
import { withoutUnusedBuffers, type Plan, type PlanBuffer, type PlanStep } from "./plan-types.ts";
import { stateFeatures, type KernelDef } from "./spec.ts";

/** A retention call over packed sequences: b = 1, t = the packed length, and `cuSeqlens` (ns + 1
 * offsets) says where each sequence starts. S0, Z0 and Sfinal, Zfinal hold one state per sequence:
 * [ns, h, D, e] and [ns, h, D]. */
export interface VarlenProblem extends Problem {
  readonly cuSeqlens: readonly number[];
}

/** Where the chunks of each sequence sit in the chunk-aligned layout (kernels/varlen.ts). */
export interface VarlenLayout {
  /** Sequences. */
  readonly ns: number;
  /** Chunk slots: sum over sequences of ceil(length / chunk) (an empty sequence takes none). */
  readonly nc: number;
  /** Per slot: the caller's row of its first row, and how many of its rows are the sequence's. */
  readonly chunkSrc: readonly number[];
  readonly chunkLen: readonly number[];
  /** Per sequence, its first slot; seqChunk[ns] = nc. */
  readonly seqChunk: readonly number[];
}

/** Throws (through `fail`, naming the argument: `arg` or one element of it) unless `cu` is
 * [0, ..., total]: at least two integer offsets, not decreasing. */
export function checkCuSeqlens(
  cu: unknown, total: number, arg = "cuSeqlens",
  fail: (arg: string, detail: string) => never = (a, d) => { throw new Error(`${a}: ${d}`); },
): readonly number[] {
  if (!Array.isArray(cu) && !(cu instanceof Int32Array)) return fail(arg, `expected an array (or Int32Array) of offsets, received ${String(cu)}`);
  const xs = cu as ArrayLike<unknown>;
  if (xs.length < 2) return fail(arg, `expected at least 2 offsets (one sequence: [0, t]), received ${xs.length}`);
  const out: number[] = [];
  for (let i = 0; i < xs.length; i++) {
    const v = xs[i];
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v >= 2 ** 31) return fail(`${arg}[${i}]`, `expected an integer in [0, 2^31), received ${String(v)}`);
    if (i === 0 && v !== 0) return fail(`${arg}[0]`, `expected 0 (the first sequence starts the packed tensor), received ${v}`);
    if (i > 0 && v < out[i - 1]!) return fail(`${arg}[${i}]`, `expected offsets that do not decrease, received ${v} after ${out[i - 1]}`);
    out.push(v);
  }
  if (out[out.length - 1] !== total) return fail(`${arg}[${out.length - 1}]`, `expected the packed length ${total} (the t of Q, K, V), received ${out[out.length - 1]}`);
  return out;
}

/** The offsets of sequences of these lengths packed back to back: [0, l0, l0 + l1, ...]. */
export const offsetsOf = (lengths: readonly number[]): number[] => lengths.reduce((cu, l) => [...cu, cu[cu.length - 1]! + l], [0]);

/** The names of the varlen plans' table inputs (varlenTables' keys). */
export const VARLEN_TABLES = ["chunkSrc", "chunkLen", "seqChunk"] as const;

export function varlenLayout(cu: readonly number[], chunk: number): VarlenLayout {
  const chunkSrc: number[] = [], chunkLen: number[] = [], seqChunk: number[] = [];
  for (let s = 0; s + 1 < cu.length; s++) {
    seqChunk.push(chunkSrc.length);
    for (let r = cu[s]!; r < cu[s + 1]!; r += chunk) chunkSrc.push(r), chunkLen.push(Math.min(chunk, cu[s + 1]! - r));
  }
  seqChunk.push(chunkSrc.length);
  return { ns: cu.length - 1, nc: chunkSrc.length, chunkSrc, chunkLen, seqChunk };
}

/** The tables a varlen plan reads (its i32 inputs chunkSrc, chunkLen, seqChunk), from the offsets:
 * every runtime computes them with this function (or, in Python, its copy held equal by a test). */
export function varlenTables(p: VarlenProblem): { chunkSrc: readonly number[]; chunkLen: readonly number[]; seqChunk: readonly number[] } {
  const { chunkSrc, chunkLen, seqChunk } = checkVarlen(p);
  return { chunkSrc, chunkLen, seqChunk };
}

function checkVarlen(p: VarlenProblem): VarlenLayout {
  checkProblem(p);
  if (p.b !== 1) throw new Error(`b: expected 1 with cuSeqlens (the sequences are packed along t), received ${p.b}`);
  return varlenLayout(checkCuSeqlens(p.cuSeqlens, p.t), p.chunk);
}

/** The dense problem the aligned layout is: b = 1, nc chunks, a state in and out (per sequence,
 * through the varlen scans), so the dense plans take their chunked form whatever nc is. */
const alignedProblem = (p: VarlenProblem, lay: VarlenLayout): Problem => ({
  b: 1, t: lay.nc * p.chunk, hq: p.hq, h: p.h, d: p.d, e: p.e, deg: p.deg, chunk: p.chunk, dtype: p.dtype, scale: p.scale,
  gated: p.gated, initialState: true, finalState: true,
});

/** A dense plan rewritten for the aligned layout: the buffers named in `aligned` become their
 * aligned copies (name + "p", shaped like the dense plan's), the per-sequence state buffers take
 * ns rows, the scan steps become their varlen kernels, and the tables (inputs: `varlenTables`)
 * join the buffers. */
function rewrite(dense: Plan, p: VarlenProblem, lay: VarlenLayout, aligned: readonly string[], perSequence: Readonly<Record<string, PlanBuffer["init"]>>, sched: ScheduleTable): { buffers: PlanBuffer[]; steps: PlanStep[] } {
  const rename = (n: string): string => (aligned.includes(n) ? `${n}p` : n);
  const ns = lay.ns, D = stateFeatures(problemSpec(p));
  const buffers: PlanBuffer[] = [];
  for (const b of dense.buffers) {
    if (b.name in perSequence) {
      const init = perSequence[b.name]!;
      buffers.push({ ...b, shape: [ns, p.h, D, ...(b.shape.length === 4 ? [p.e] : [])], init });
    } else if (aligned.includes(b.name)) buffers.push({ ...b, name: rename(b.name), init: b.init === "zeros" ? "zeros" : "nan" }); // a pack or a kernel fills it
    else buffers.push(b);
  }
  const table = (name: string, n: number): PlanBuffer => ({ name, dtype: "i32", shape: [n], init: "input" });
  buffers.push(table("chunkSrc", lay.nc), table("chunkLen", lay.nc), table("seqChunk", ns + 1));
  const scans = new Map<string, KernelDef>([[discountedCumsum.name, discountedCumsumVarlen], [discountedCumsumBwd.name, discountedCumsumBwdVarlen]]);
  const steps = dense.steps.map((s): PlanStep => {
    const bind = Object.fromEntries(Object.entries(s.bind).map(([k, v]) => [k, rename(v)]));
    const scan = scans.get(s.kernel.name);
    if (!scan) return { ...s, bind };
    const { b: _b, ...params } = s.params;
    return stepOf(scan, s.spec, sched, { ...params, ns }, { ...bind, seqChunk: "seqChunk" });
  });
  return { buffers, steps };
}

/** Steps that copy caller buffers into their aligned copies (pack) or back (unpack). */
function copySteps(p: VarlenProblem, lay: VarlenLayout, names: readonly string[], pack: boolean, sched: ScheduleTable, dense: Plan): PlanStep[] {
  const spec = problemSpec(p);
  return names.flatMap((n) => {
    const b = dense.buffers.find((x) => x.name === n);
    if (!b) throw new Error(`varlen plan: the dense plan has no buffer '${n}'`);
    if (pack && n === "logG" && !p.gated) return []; // logGp starts as zeros
    const f32 = b.dtype === "f32" && p.dtype !== "f32";
    const k = pack ? (f32 ? varlenPackF32 : varlenPack) : f32 ? varlenUnpackF32 : varlenUnpack;
    const w = b.shape.slice(2).reduce((x, y) => x * y, 1); // [1, t, heads, features]: heads x features per row
    return [stepOf(k, spec, sched, { rows: p.t, nc: lay.nc, w }, { chunkSrc: "chunkSrc", chunkLen: "chunkLen", X: n, Xp: `${n}p` })];
  });
}

/** The caller's buffers of a packed problem: Q, K, V, logG [1, t, ...] as the dense plans have them. */
function packedBuffer(b: PlanBuffer, p: VarlenProblem): PlanBuffer {
  return { ...b, shape: [1, p.t, ...b.shape.slice(2)] };
}

/**
 * Forward over packed sequences. Inputs: the tables (varlenTables), Q, K, V [1, t, ...], logG when
 * gated, S0 [ns, h, D, e] and Z0 [ns, h, D] when `initialState`. Outputs: Y [1, t, hq, e]; what the backward reads, in the
 * aligned layout (lse, yS, wS, Sin, Zin); Sfinal, Zfinal [ns, ...] when `finalState`.
 */
export function varlenForwardPlan(p: VarlenProblem, sched: ScheduleTable = {}): Plan {
  const lay = checkVarlen(p);
  const dense = forwardPlan(alignedProblem(p, lay), sched);
  const io = ["Q", "K", "V", "logG"], init = p.initialState ? "input" : "zeros";
  const { buffers, steps } = rewrite(dense, p, lay, [...io, "Y"], { S0: init, Z0: init, Sfinal: "nan", Zfinal: "nan" }, sched);
  for (const n of io) buffers.push(packedBuffer({ ...dense.buffers.find((b) => b.name === n)!, init: n === "logG" && !p.gated ? "zeros" : "input" }, p));
  buffers.push(packedBuffer({ ...dense.buffers.find((b) => b.name === "Y")! }, p));
  const plan: Plan = {
    buffers,
    steps: [...copySteps(p, lay, io, true, sched, dense), ...steps, ...copySteps(p, lay, ["Y"], false, sched, dense)],
    outputs: ["Y", "lse", "yS", "wS", "Sin", "Zin", ...(p.finalState ? ["Sfinal", "Zfinal"] : [])],
  };
  return withoutUnusedBuffers(plan);
}

/**
 * Backward over packed sequences. Inputs: the forward's (tables, Q, K, V, logG, S0, Z0 as there) and its
 * aligned lse, yS, wS, Sin, Zin; dY [1, t, hq, e]; dSfinal, dZfinal [ns, ...] when `finalState`.
 * Outputs: dQ, dK, dV, dlogG [1, t, ...]; dS0, dZ0 [ns, ...] when `initialState`.
 */
export function varlenBackwardPlan(p: VarlenProblem, sched: ScheduleTable = {}): Plan {
  const lay = checkVarlen(p);
  const dense = backwardPlan(alignedProblem(p, lay), sched);
  const io = ["Q", "K", "V", "logG", "dY"], grads = ["dQ", "dK", "dV", "dlogG"];
  const init = p.initialState ? "input" : "zeros", final = p.finalState ? "input" : "zeros";
  const { buffers, steps } = rewrite(dense, p, lay, [...io, ...grads], { S0: init, Z0: init, dSfinal: final, dZfinal: final, dS0: "nan", dZ0: "nan" }, sched);
  for (const n of io) buffers.push(packedBuffer({ ...dense.buffers.find((b) => b.name === n)!, init: n === "logG" && !p.gated ? "zeros" : "input" }, p));
  for (const n of grads) buffers.push(packedBuffer({ ...dense.buffers.find((b) => b.name === n)!, init: "nan" }, p));
  const plan: Plan = {
    buffers,
    steps: [...copySteps(p, lay, io, true, sched, dense), ...steps, ...copySteps(p, lay, grads, false, sched, dense)],
    outputs: [...grads, ...(p.initialState ? ["dS0", "dZ0"] : [])],
  };
  return withoutUnusedBuffers(plan);
}

export interface VarlenForwardOutputs {
  readonly Y: Float32Array; // [1, t, hq, e], values of the dtype
  readonly Sfinal?: Float32Array; // [ns, h, D, e], when problem.finalState
  readonly Zfinal?: Float32Array; // [ns, h, D]
}

/** Run the packed forward through the interpreter. */
export function varlenForwardOnCpu(p: VarlenProblem, inputs: ForwardInputs, sched: ScheduleTable = {}): VarlenForwardOutputs {
  const out = executeOnCpu(varlenForwardPlan(p, sched), planInputs(p, { ...inputs, ...varlenTables(p) }, VARLEN_TABLES));
  return { Y: out.Y!, ...(p.finalState ? { Sfinal: out.Sfinal!, Zfinal: out.Zfinal! } : {}) };
}

export interface VarlenBackwardOutputs {
  readonly dQ: Float32Array; // [1, t, hq, d], values of the dtype
  readonly dK: Float32Array;
  readonly dV: Float32Array;
  readonly dlogG: Float32Array; // [1, t, h]
  readonly dS0?: Float32Array; // [ns, h, D, e], when problem.initialState
  readonly dZ0?: Float32Array;
}

/** Run the packed forward, then the packed backward, through the interpreter. */
export function varlenBackwardOnCpu(p: VarlenProblem, inputs: BackwardInputs, sched: ScheduleTable = {}): VarlenBackwardOutputs {
  const given = planInputs(p, { ...inputs, ...varlenTables(p) }, ["dY", ...VARLEN_TABLES], [["dSfinal", "finalState"], ["dZfinal", "finalState"]]);
  const fwd = executeOnCpu(varlenForwardPlan(p, sched), given);
  const { Y: _y, Sfinal: _s, Zfinal: _z, ...saved } = fwd;
  const out = executeOnCpu(varlenBackwardPlan(p, sched), { ...given, ...saved });
  return {
    dQ: out.dQ!, dK: out.dK!, dV: out.dV!, dlogG: out.dlogG!,
    ...(p.initialState ? { dS0: out.dS0!, dZ0: out.dZ0! } : {}),
  };
}
