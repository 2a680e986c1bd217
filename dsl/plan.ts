// The composition of the retention kernels into whole calls (forward; backward and decode live
// beside it in plan-backward.ts and plan-decode.ts), written once for the interpreter and the GPU
// runtime. See kernels/README.md for the math of each step.

import type { DType } from "./dtype.ts";
import { attention } from "./kernels/attention.ts";
import { discountedCumsum } from "./kernels/discounted-cumsum.ts";
import { queryState } from "./kernels/query-state.ts";
import { updateState } from "./kernels/update-state.ts";
import type { Plan, PlanBuffer, PlanStep } from "./plan-types.ts";
import { checkSpec, stateFeatures, type KernelDef, type Schedule, type Spec } from "./spec.ts";

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
}

/** Schedules by kernel name; kernels not listed use their default. */
export type ScheduleTable = Readonly<Record<string, Schedule>>;

export function problemSpec(p: Problem): Spec {
  return checkSpec({ deg: p.deg, d: p.d, e: p.e, chunk: p.chunk, dtype: p.dtype });
}

/** Throw an error naming the argument for any invalid size or option. */
export function checkProblem(p: Problem): void {
  for (const f of ["b", "t", "hq", "h", "d", "e"] as const)
    if (!Number.isInteger(p[f]) || p[f] < 1) throw new Error(`${f}: expected a positive integer, received ${p[f]}`);
  if (p.hq % p.h !== 0) throw new Error(`hq: expected a multiple of h = ${p.h}, received ${p.hq}`);
  if (!Number.isFinite(p.scale)) throw new Error(`scale: expected a finite number, received ${p.scale}`);
  problemSpec(p);
}

export const chunksOf = (p: Problem): number => Math.ceil(p.t / p.chunk);

/** Helper for plan builders: steps with a spec's schedules applied. */
export function stepOf(k: KernelDef, spec: Spec, sched: ScheduleTable, params: Record<string, number>, bind: Record<string, string>): PlanStep {
  return { kernel: k, spec, schedule: sched[k.name] ?? k.schedule(spec), params, bind };
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

/**
 * Forward: Y [b,t,hq,e] and what the backward needs (lse, Sin, Zin), plus the final state.
 * Outputs: Y, lse, Sin, Zin, Sfinal, Zfinal.
 */
export function forwardPlan(p: Problem, sched: ScheduleTable = {}): Plan {
  checkProblem(p);
  const spec = problemSpec(p);
  const D = stateFeatures(spec);
  const n = chunksOf(p);
  const { b, t, hq, h, e } = p;
  const f32 = (name: string, shape: number[]): PlanBuffer => ({ name, dtype: "f32", shape, init: "nan" });
  const buffers: PlanBuffer[] = [
    ...inputBuffers(p),
    f32("numA", [b, t, hq, e]),
    f32("denA", [b, t, hq]),
    f32("maxA", [b, t, hq]),
    f32("dS", [b, h, n, D, e]),
    f32("dZ", [b, h, n, D]),
    f32("Sin", [b, h, n, D, e]),
    f32("Zin", [b, h, n, D]),
    f32("Sfinal", [b, h, D, e]),
    f32("Zfinal", [b, h, D]),
    { name: "Y", dtype: p.dtype, shape: [b, t, hq, e], init: "nan" },
    f32("lse", [b, t, hq]),
  ];
  const dims = { b, t, hq, h, n };
  const steps: PlanStep[] = [
    stepOf(attention, spec, sched, { ...dims, scale: p.scale }, { Q: "Q", K: "K", V: "V", logG: "logG", numA: "numA", denA: "denA", maxA: "maxA" }),
    stepOf(updateState, spec, sched, { b, t, h, n }, { K: "K", V: "V", logG: "logG", dS: "dS", dZ: "dZ" }),
    stepOf(discountedCumsum, spec, sched, { b, t, h, n }, {
      dS: "dS", dZ: "dZ", logG: "logG", S0: "S0", Z0: "Z0", Sin: "Sin", Zin: "Zin", Sfinal: "Sfinal", Zfinal: "Zfinal",
    }),
    stepOf(queryState, spec, sched, { ...dims, scale: p.scale }, {
      Q: "Q", logG: "logG", Sin: "Sin", Zin: "Zin", numA: "numA", denA: "denA", maxA: "maxA", Y: "Y", lse: "lse",
    }),
  ];
  return { buffers, steps, outputs: ["Y", "lse", "Sin", "Zin", "Sfinal", "Zfinal"] };
}
