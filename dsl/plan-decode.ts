// Decoding as plans (kernels/README.md, "State layout and decoding"). A decode state is, per layer,
// S [b,h,D,e] and Z [b,h,D] plus a cache Kc [b,c,h,d], Vc [b,c,h,e], Gc [b,c,h] (all f32, the cache
// holding values of the dtype) whose first `len` rows are the tokens since the last fold
// (0 <= len < c between calls). One call
// with tn new tokens becomes segments that each fill the cache at most up to c:
//   cache_append -> decode  [-> update_state -> discounted_cumsum -> state_copy, when len reaches c]
// The CPU API below runs the plan through the interpreter; the GPU runtime runs the same plan.

import { executeOnCpu } from "./execute-cpu.ts";
import { cacheAppend, decode, stateCopy } from "./kernels/decode.ts";
import { discountedCumsum } from "./kernels/discounted-cumsum.ts";
import { updateState } from "./kernels/update-state.ts";
import { numel, type Plan, type PlanBuffer, type PlanStep } from "./plan-types.ts";
import { scheduleOf, type Problem, type ScheduleTable } from "./plan.ts";
import { checkSpec, stateFeatures, type KernelDef, type Spec } from "./spec.ts";

/** Sizes and options of a decoding layer: a forward `Problem` without t and the state flags (the
 * state is always there); `chunk` is the cache's capacity c, `gated` says each call brings logG. */
export type DecodeProblem = Omit<Problem, "t" | "initialState" | "finalState">;

export function decodeSpec(p: DecodeProblem): Spec {
  return checkSpec({ deg: p.deg, d: p.d, e: p.e, chunk: p.chunk, dtype: p.dtype });
}

function checkDecodeProblem(p: DecodeProblem): void {
  for (const f of ["b", "hq", "h", "d", "e"] as const)
    if (!Number.isInteger(p[f]) || p[f] < 1) throw new Error(`${f}: expected a positive integer, received ${p[f]}`);
  if (p.hq % p.h !== 0) throw new Error(`hq: expected a multiple of h = ${p.h}, received ${p.hq}`);
  if (!Number.isFinite(p.scale)) throw new Error(`scale: expected a finite number, received ${p.scale}`);
  if (typeof p.gated !== "boolean") throw new Error(`gated: expected true or false (logG given with each call or not), received ${String(p.gated)}`);
  decodeSpec(p);
}

/** The state buffers of a decoding layer: names, shapes, dtypes (what the caller keeps between calls). */
export function decodeStateBuffers(p: DecodeProblem): (PlanBuffer & { readonly dtype: "f32" })[] {
  const D = stateFeatures(decodeSpec(p));
  const { b, h, d, e, chunk: c } = p;
  return [
    { name: "S", dtype: "f32", shape: [b, h, D, e], init: "input" },
    { name: "Z", dtype: "f32", shape: [b, h, D], init: "input" },
    { name: "Kc", dtype: "f32", shape: [b, c, h, d], init: "input" }, // values of p.dtype
    { name: "Vc", dtype: "f32", shape: [b, c, h, e], init: "input" },
    { name: "Gc", dtype: "f32", shape: [b, c, h], init: "input" },
  ];
}

export interface DecodePlan {
  readonly plan: Plan;
  /** Cache rows in use after the call. */
  readonly len: number;
  /** How many times the cache was folded into the state during the call. */
  readonly folds: number;
}

/** How one decoding call of tn tokens, given a cache of len0 rows, splits into segments that each
 * fill the cache at most up to its capacity c; `fold` says the cache is full after the segment
 * and is folded into the state. (The native runtime walks the same segments: runtime/native/plans.cc,
 * kept equal by test/plan-data.test.ts.) */
export function decodeSegments(len0: number, tn: number, c: number): { q0: number; seg: number; len0: number; fold: boolean }[] {
  const out: { q0: number; seg: number; len0: number; fold: boolean }[] = [];
  let len = len0;
  for (let q0 = 0; q0 < tn; ) {
    const seg = Math.min(tn - q0, c - len); // tokens that fit before the cache is full
    out.push({ q0, seg, len0: len, fold: len + seg === c });
    len = len + seg === c ? 0 : len + seg;
    q0 += seg;
  }
  return out;
}

const stepIn = (sched: ScheduleTable, k: KernelDef, s: Spec, params: Record<string, number>, bind: Record<string, string>): PlanStep => ({
  kernel: k, spec: s, schedule: scheduleOf(sched, k, s), params, bind,
});

/** The buffers of a decoding call of tn tokens (inputs, the state and Y), before any fold. */
export function decodeBuffers(p: DecodeProblem, tn: number): PlanBuffer[] {
  const { b, hq, h, d, e } = p;
  return [
    { name: "Q", dtype: p.dtype, shape: [b, tn, hq, d], init: "input" },
    { name: "K", dtype: p.dtype, shape: [b, tn, h, d], init: "input" },
    { name: "V", dtype: p.dtype, shape: [b, tn, h, e], init: "input" },
    { name: "logG", dtype: "f32", shape: [b, tn, h], init: p.gated ? "input" : "zeros" },
    ...decodeStateBuffers(p),
    { name: "Y", dtype: p.dtype, shape: [b, tn, hq, e], init: "nan" },
  ];
}

/** One segment: tokens q0..q0+seg of the call's tn appended to a cache of len0 rows, then decoded. */
export function decodeSegmentSteps(p: DecodeProblem, tn: number, q0: number, seg: number, len0: number, sched: ScheduleTable = {}): PlanStep[] {
  const spec = decodeSpec(p);
  const { b, hq, h } = p;
  const cache = { Kc: "Kc", Vc: "Vc", Gc: "Gc" };
  return [
    stepIn(sched, cacheAppend, spec, { b, tq: tn, h, q0, tn: seg, len0 }, { K: "K", V: "V", logG: "logG", ...cache }),
    stepIn(sched, decode, spec, { b, tq: tn, hq, h, q0, tn: seg, len: len0 + seg, scale: p.scale }, { Q: "Q", ...cache, S: "S", Z: "Z", Y: "Y" }),
  ];
}

/** Folding the full cache into S, Z: the buffers it adds to a call (once, however many folds) and its steps. */
export function decodeFold(p: DecodeProblem, sched: ScheduleTable = {}): { buffers: PlanBuffer[]; steps: PlanStep[] } {
  const spec = decodeSpec(p);
  const D = stateFeatures(spec);
  const { b, h, e, chunk: c } = p;
  // The fold runs with f32 operands (its spec's dtype): phi(k') rounded to bf16 costs ~2e-3 in S, which
  // the cancellation in phi(q').S turns into more than SPEC's tolerance at p = 4 (README, "State layout").
  const foldSpec: Spec = { ...spec, dtype: "f32" };
  const tmp = (name: string, shape: number[]): PlanBuffer => ({ name, dtype: "f32", shape, init: "nan" });
  return {
    buffers: [
      tmp("dS", [b, h, 1, D, e]), tmp("dZ", [b, h, 1, D]), tmp("Sin", [b, h, 1, D, e]), tmp("Zin", [b, h, 1, D]),
      tmp("Sfinal", [b, h, D, e]), tmp("Zfinal", [b, h, D]),
    ],
    // the full cache is one chunk (t = c, n = 1) whose initial state is S, Z
    steps: [
      stepIn(sched, updateState, foldSpec, { b, t: c, h, n: 1 }, { K: "Kc", V: "Vc", logG: "Gc", dS: "dS", dZ: "dZ" }),
      stepIn(sched, discountedCumsum, foldSpec, { b, t: c, h, n: 1 }, {
        dS: "dS", dZ: "dZ", logG: "Gc", S0: "S", Z0: "Z", Sin: "Sin", Zin: "Zin", Sfinal: "Sfinal", Zfinal: "Zfinal",
      }),
      stepIn(sched, stateCopy, foldSpec, { b, h }, { Sfinal: "Sfinal", Zfinal: "Zfinal", S: "S", Z: "Z" }),
    ],
  };
}

/**
 * One decoding call: tn new tokens Q [b,tn,hq,d], K [b,tn,h,d], V [b,tn,h,e], logG [b,tn,h] given
 * a cache of len0 rows. Outputs Y [b,tn,hq,e] and the updated state buffers (S, Z, Kc, Vc, Gc,
 * updated in place: the caller passes them in and reads them back).
 */
export function decodePlan(p: DecodeProblem, len0: number, tn: number, sched: ScheduleTable = {}): DecodePlan {
  checkDecodeProblem(p);
  const c = p.chunk;
  if (!Number.isInteger(len0) || len0 < 0 || len0 >= c) throw new Error(`len0: expected an integer in [0, ${c}), received ${len0}`);
  if (!Number.isInteger(tn) || tn < 1) throw new Error(`tn: expected a positive integer, received ${tn}`);
  const buffers = decodeBuffers(p, tn);
  const steps: PlanStep[] = [];
  const segs = decodeSegments(len0, tn, c);
  const fold = decodeFold(p, sched);
  for (const s of segs) {
    steps.push(...decodeSegmentSteps(p, tn, s.q0, s.seg, s.len0, sched));
    if (s.fold) steps.push(...fold.steps);
  }
  const folds = segs.filter((s) => s.fold).length;
  if (folds > 0) buffers.push(...fold.buffers);
  const last = segs[segs.length - 1]!;
  const len = last.fold ? 0 : last.len0 + last.seg;
  return { plan: { buffers, steps, outputs: ["Y", "S", "Z", "Kc", "Vc", "Gc"] }, len, folds };
}

/** A decoding layer's state on the CPU (flat row-major arrays, see decodeStateBuffers). */
export interface DecodeState {
  readonly problem: DecodeProblem;
  len: number;
  S: Float32Array;
  Z: Float32Array;
  Kc: Float32Array;
  Vc: Float32Array;
  Gc: Float32Array;
}

/** A state with an empty cache: S = Z = 0, or a given S [b,h,D,e], Z [b,h,D] (e.g. a prefill's
 * Sfinal, Zfinal, which share this layout). */
export function createDecodeState(p: DecodeProblem, init?: { readonly S: ArrayLike<number>; readonly Z: ArrayLike<number> }): DecodeState {
  checkDecodeProblem(p);
  const bufs = decodeStateBuffers(p);
  const make = (name: string, from?: ArrayLike<number>): Float32Array => {
    const n = numel(bufs.find((x) => x.name === name)!.shape);
    if (from === undefined) return new Float32Array(n);
    if (from.length !== n) throw new Error(`init.${name}: expected ${n} elements, received ${from.length}`);
    return Float32Array.from(from);
  };
  return { problem: p, len: 0, S: make("S", init?.S), Z: make("Z", init?.Z), Kc: make("Kc"), Vc: make("Vc"), Gc: make("Gc") };
}

export interface DecodeInputs {
  readonly q: ArrayLike<number>; // [b, tn, hq, d]
  readonly k: ArrayLike<number>; // [b, tn, h, d]
  readonly v: ArrayLike<number>; // [b, tn, h, e]
  readonly logG?: ArrayLike<number> | null; // [b, tn, h], required when the problem is gated
}

/** Decode tn = q.length / (b hq d) new tokens: returns Y [b,tn,hq,e] and updates `state`. */
export function decodeStepOnCpu(state: DecodeState, x: DecodeInputs, sched: ScheduleTable = {}): Float32Array {
  const p = state.problem;
  const tn = x.q.length / (p.b * p.hq * p.d);
  if (!Number.isInteger(tn) || tn < 1) throw new Error(`q: expected b*tn*hq*d elements with tn >= 1, received ${x.q.length}`);
  if (p.gated && !x.logG) throw new Error(`logG: required when the problem's gated is true, received ${x.logG}`);
  if (!p.gated && x.logG) throw new Error("logG: given, but the problem's gated is false, so the plan would not read it; create the state with gated: true, or leave logG out");
  const { plan, len } = decodePlan(p, state.len, tn, sched);
  const inputs: Record<string, ArrayLike<number>> = {
    Q: x.q, K: x.k, V: x.v, S: state.S, Z: state.Z, Kc: state.Kc, Vc: state.Vc, Gc: state.Gc,
  };
  if (p.gated) inputs["logG"] = x.logG!;
  const out = executeOnCpu(plan, inputs);
  state.S = out["S"]!;
  state.Z = out["Z"]!;
  state.Kc = out["Kc"]!;
  state.Vc = out["Vc"]!;
  state.Gc = out["Gc"]!;
  state.len = len;
  return out["Y"]!;
}
