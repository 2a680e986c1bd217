// The composition of the retention kernels into whole calls (forward; backward and decode live
// beside it in plan-backward.ts and plan-decode.ts), written once for the interpreter and the GPU
// runtime. See kernels/README.md for the math of each step.

import type { DType } from "./dtype.ts";
import { executeOnCpu } from "./execute-cpu.ts";
import { attention, attentionY } from "./kernels/attention.ts";
import { discountedCumsum } from "./kernels/discounted-cumsum.ts";
import { queryState } from "./kernels/query-state.ts";
import { updateState } from "./kernels/update-state.ts";
import { withoutUnusedBuffers, type Plan, type PlanBuffer, type PlanStep } from "./plan-types.ts";
import { checkSpec, specKey, stateFeatures, tableSchedule, type KernelDef, type Schedule, type Spec } from "./spec.ts";

/** One retention call's sizes and options. */
export interface Problem {
  readonly b: number;
  readonly t: number;
  readonly hq: number;
  readonly h: number;
  readonly d: number;
  readonly e: number;
  readonly deg: number;
  readonly chunk: number;
  readonly dtype: DType;
  readonly scale: number;
  /** logG is supplied (else the plan uses zeros: a gate of 1). */
  readonly gated: boolean;
  /** S0/Z0 are supplied. */
  readonly initialState: boolean;
  /** The caller wants the state after the last token (Sfinal, Zfinal); default false. */
  readonly finalState?: boolean;
}

/** Schedules by "<kernel>/<specKey>" (one spec) or by kernel name (every spec); kernels not listed
 * use their default. A plan may run one kernel under two specs (the decoder's fold is f32). */
export type ScheduleTable = Readonly<Record<string, Schedule>>;

/** The schedule a plan step of kernel `k` at `spec` takes from `sched`. */
export function scheduleOf(sched: ScheduleTable, k: KernelDef, spec: Spec): Schedule {
  return tableSchedule((key) => sched[key], k, spec);
}

export function problemSpec(p: Problem): Spec {
  return checkSpec({ deg: p.deg, d: p.d, e: p.e, chunk: p.chunk, dtype: p.dtype });
}

/** Throw an error naming the argument for any invalid size or option. */
export function checkProblem(p: Problem): void {
  for (const f of ["b", "t", "hq", "h", "d", "e"] as const)
    if (!Number.isInteger(p[f]) || p[f] < 1) throw new Error(`${f}: expected a positive integer, received ${p[f]}`);
  if (p.hq % p.h !== 0) throw new Error(`hq: expected a multiple of h = ${p.h}, received ${p.hq}`);
  if (!Number.isFinite(p.scale)) throw new Error(`scale: expected a finite number, received ${p.scale}`);
  // the flags say which inputs the plan reads: a missing one must not read as false
  for (const f of ["gated", "initialState"] as const)
    if (typeof p[f] !== "boolean") throw new Error(`${f}: expected true or false (${FLAG_INPUTS[f]} given or not), received ${String(p[f])}`);
  if (p.finalState !== undefined && typeof p.finalState !== "boolean")
    throw new Error(`finalState: expected true, false or undefined (whether Sfinal, Zfinal are wanted), received ${String(p.finalState)}`);
  problemSpec(p);
}

/** The inputs each flag of a problem stands for. */
const FLAG_INPUTS = { gated: "logG", initialState: "S0, Z0", finalState: "dSfinal, dZfinal" } as const;

export const chunksOf = (p: Problem): number => Math.ceil(p.t / p.chunk);

/** Helper for plan builders: steps with a spec's schedules applied. */
export function stepOf(k: KernelDef, spec: Spec, sched: ScheduleTable, params: Record<string, number>, bind: Record<string, string>): PlanStep {
  return { kernel: k, spec, schedule: scheduleOf(sched, k, spec), params, bind };
}

/** The buffers every plan over a problem shares: inputs and the gate. */
export function inputBuffers(p: Problem): PlanBuffer[] {
  const D = stateFeatures(problemSpec(p));
  const bufs: PlanBuffer[] = [
    { name: "Q", dtype: p.dtype, shape: [p.b, p.t, p.hq, p.d], init: "input" },
    { name: "K", dtype: p.dtype, shape: [p.b, p.t, p.h, p.d], init: "input" },
    { name: "V", dtype: p.dtype, shape: [p.b, p.t, p.h, p.e], init: "input" },
    { name: "logG", dtype: "f32", shape: [p.b, p.t, p.h], init: p.gated ? "input" : "zeros" },
  ];
  bufs.push(
    { name: "S0", dtype: "f32", shape: [p.b, p.h, D, p.e], init: p.initialState ? "input" : "zeros" },
    { name: "Z0", dtype: "f32", shape: [p.b, p.h, D], init: p.initialState ? "input" : "zeros" },
  );
  return bufs;
}

/** The buffers the query_state step reads as the state of each chunk: Sin/Zin, or S0/Z0 on the
 * short path (one chunk, no final state asked), where chunk 0's state is the initial one. */
export function stateInBuffers(p: Problem): { Sin: string; Zin: string } {
  return isShortPath(p) ? { Sin: "S0", Zin: "Z0" } : { Sin: "Sin", Zin: "Zin" };
}

/** One chunk and no final state wanted: update_state and discounted_cumsum have nothing to do. */
const isShortPath = (p: Problem): boolean => chunksOf(p) === 1 && !p.finalState;

/** The short path with no state in: the quadratic form alone (attention_y), no query_state. */
const isQuadratic = (p: Problem): boolean => isShortPath(p) && !p.initialState;

/**
 * Forward: Y [b,t,hq,e] and what the backward needs (lse, the state's part of y and of the
 * weights, and the state each chunk read; on the quadratic path yS is all of y in f32). Outputs: Y, lse, yS, wS; Sin, Zin unless on the short path (see `stateInBuffers`); Sfinal, Zfinal when
 * `p.finalState`.
 */
export function forwardPlan(p: Problem, sched: ScheduleTable = {}): Plan {
  checkProblem(p);
  const spec = problemSpec(p);
  const D = stateFeatures(spec);
  const n = chunksOf(p);
  const { b, t, hq, h, e } = p;
  const short = isShortPath(p);
  const f32 = (name: string, shape: number[]): PlanBuffer => ({ name, dtype: "f32", shape, init: "nan" });
  const buffers: PlanBuffer[] = [
    ...inputBuffers(p),
    f32("numA", [b, t, hq, e]),
    f32("denA", [b, t, hq]),
    f32("maxA", [b, t, hq]),
    { name: "Y", dtype: p.dtype, shape: [b, t, hq, e], init: "nan" },
    f32("lse", [b, t, hq]),
    f32("yS", [b, t, hq, e]),
    f32("wS", [b, t, hq]),
  ];
  const dims = { b, t, hq, h, n };
  if (isQuadratic(p)) {
    // y = numA / denA straight from the attention; no state, so the backward forms dy . y from y
    // itself: yS holds all of y in f32 (the attention's output before rounding), wS is 0
    const zeros = (name: string, shape: number[]): PlanBuffer => ({ name, dtype: "f32", shape, init: "zeros" });
    const quad: PlanBuffer[] = [...inputBuffers(p), { name: "Y", dtype: p.dtype, shape: [b, t, hq, e], init: "nan" }, f32("lse", [b, t, hq]), f32("yS", [b, t, hq, e]), zeros("wS", [b, t, hq])];
    const step = stepOf(attentionY, spec, sched, { b, t, hq, h, window: t, scale: p.scale }, { Q: "Q", K: "K", V: "V", logG: "logG", Y: "Y", yF: "yS", lse: "lse" });
    return withoutUnusedBuffers({ buffers: quad, steps: [step], outputs: ["Y", "lse", "yS", "wS"] });
  }
  const steps: PlanStep[] = [
    stepOf(attention, spec, sched, { b, t, hq, h, window: p.chunk, scale: p.scale }, { Q: "Q", K: "K", V: "V", logG: "logG", numA: "numA", denA: "denA", maxA: "maxA" }),
  ];
  if (!short) {
    buffers.push(
      f32("dS", [b, h, n, D, e]),
      f32("dZ", [b, h, n, D]),
      f32("Sin", [b, h, n, D, e]),
      f32("Zin", [b, h, n, D]),
      f32("Sfinal", [b, h, D, e]),
      f32("Zfinal", [b, h, D]),
    );
    steps.push(
      stepOf(updateState, spec, sched, { b, t, h, n }, { K: "K", V: "V", logG: "logG", dS: "dS", dZ: "dZ" }),
      stepOf(discountedCumsum, spec, sched, { b, t, h, n }, {
        dS: "dS", dZ: "dZ", logG: "logG", S0: "S0", Z0: "Z0", Sin: "Sin", Zin: "Zin", Sfinal: "Sfinal", Zfinal: "Zfinal",
      }),
    );
  }
  const state = stateInBuffers(p);
  steps.push(
    stepOf(queryState, spec, sched, { ...dims, scale: p.scale }, {
      Q: "Q", logG: "logG", Sin: state.Sin, Zin: state.Zin, numA: "numA", denA: "denA", maxA: "maxA", Y: "Y", lse: "lse",
      yS: "yS", wS: "wS",
    }),
  );
  const outputs = ["Y", "lse", "yS", "wS", ...(short ? [] : ["Sin", "Zin"]), ...(p.finalState ? ["Sfinal", "Zfinal"] : [])];
  return withoutUnusedBuffers({ buffers, steps, outputs });
}

/** The inputs of a forward call, float64 or f32 data in the layouts of SPEC.md (rounded on the way in). */
export interface ForwardInputs {
  readonly Q: ArrayLike<number>;
  readonly K: ArrayLike<number>;
  readonly V: ArrayLike<number>;
  /** Required when `problem.gated`. */
  readonly logG?: ArrayLike<number>;
  /** [b, h, D, e] and [b, h, D], required when `problem.initialState`. */
  readonly S0?: ArrayLike<number>;
  readonly Z0?: ArrayLike<number>;
}

export interface ForwardOutputs {
  readonly Y: Float32Array; // [b, t, hq, e], values of the dtype
  readonly lse: Float32Array; // [b, t, hq]
  readonly Sfinal?: Float32Array; // [b, h, D, e], when problem.finalState
  readonly Zfinal?: Float32Array; // [b, h, D]
}

/** The plan inputs a problem needs, by name: Q, K, V, logG when gated, S0/Z0 with an initial state,
 * plus `extra` (always required), and `optional` (required when `problem[flag]`, refused otherwise).
 * Throws naming the first input missing, given where the problem's flags say the plan does not read
 * it (logG with gated false: the gates would be ignored), or unknown. */
export function planInputs(
  p: Problem,
  inputs: object,
  extra: readonly string[],
  optional: readonly (readonly [string, "gated" | "initialState" | "finalState"])[] = [],
): Record<string, ArrayLike<number>> {
  if (typeof inputs !== "object" || inputs === null) throw new Error(`inputs: expected an object of arrays, received ${String(inputs)}`);
  const given: Record<string, ArrayLike<number>> = {};
  const byFlag: (readonly [string, "gated" | "initialState" | "finalState"])[] = [["logG", "gated"], ["S0", "initialState"], ["Z0", "initialState"], ...optional];
  const known = ["Q", "K", "V", ...extra, ...byFlag.map(([n]) => n)];
  for (const key of Object.keys(inputs))
    if (!known.includes(key)) throw new Error(`inputs.${key}: unknown input; expected some of ${known.join(", ")}`);
  const at = (name: string): ArrayLike<number> | null | undefined => (inputs as Readonly<Record<string, ArrayLike<number> | null | undefined>>)[name];
  for (const n of ["Q", "K", "V", ...extra]) {
    const x = at(n);
    if (!x) throw new Error(`${n}: required always, received ${x}`);
    given[n] = x;
  }
  for (const [n, flag] of byFlag) {
    const x = at(n), on = p[flag] === true;
    if (on && !x) throw new Error(`${n}: required when problem.${flag} is true, received ${x}`);
    if (!on && x) throw new Error(`${n}: given, but problem.${flag} is ${String(p[flag])}, so the plan would not read it; set ${flag}: true, or leave ${n} out`);
    if (x) given[n] = x;
  }
  return given;
}

/** Run the forward plan through the interpreter. */
export function forwardOnCpu(p: Problem, inputs: ForwardInputs, sched: ScheduleTable = {}): ForwardOutputs {
  const out = executeOnCpu(forwardPlan(p, sched), planInputs(p, inputs, []));
  return { Y: out.Y!, lse: out.lse!, ...(p.finalState ? { Sfinal: out.Sfinal!, Zfinal: out.Zfinal! } : {}) };
}
