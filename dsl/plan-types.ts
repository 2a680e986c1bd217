// A plan is data: the buffers a retention call needs and the kernel launches that fill them, in
// order. The CPU executor (`execute-cpu.ts`) runs it through the interpreter; the GPU runtime runs
// the same plan with the generated kernels. Composition therefore lives in one place.

import type { TensorDType } from "./dtype.ts";
import type { Kernel } from "./ir.ts";
import { scheduleKey, specKey, type KernelDef, type Schedule, type Spec } from "./spec.ts";

export interface PlanBuffer {
  readonly name: string;
  readonly dtype: TensorDType;
  readonly shape: readonly number[];
  /** input: supplied by the caller (an i32 table too: where packed sequences sit); nan: poisoned
   * (every element must be written); zeros: starts at 0. */
  readonly init: "input" | "nan" | "zeros";
}

export interface PlanStep {
  readonly kernel: KernelDef;
  readonly spec: Spec;
  readonly schedule: Schedule;
  readonly params: Readonly<Record<string, number>>;
  /** kernel tensor name -> plan buffer name (a buffer may be bound under another shape of the same size). */
  readonly bind: Readonly<Record<string, string>>;
}

export interface Plan {
  readonly buffers: readonly PlanBuffer[];
  readonly steps: readonly PlanStep[];
  /** Buffers the caller reads back. */
  readonly outputs: readonly string[];
}

export const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** The plan without the buffers nothing touches: no step binds them, the caller reads none of them
 * back, and they are not inputs (which callers supply whatever the path). The quadratic path's
 * zero initial state (S0, Z0) and zero state gradient (dSfinal, dZfinal) were allocated and zeroed
 * on every call though no kernel reads them: 68 MB each of [b, h, D, e] f32 at b = 16, t = 1024. */
export function withoutUnusedBuffers(plan: Plan): Plan {
  const used = new Set<string>([...plan.outputs, ...plan.steps.flatMap((s) => Object.values(s.bind))]);
  return { ...plan, buffers: plan.buffers.filter((b) => b.init === "input" || used.has(b.name)) };
}

const built = new Map<string, Kernel>();

/** Forget the traced kernels (after a change of what a build depends on beyond its spec and
 * schedule: `overrideStateSplit`, for measurements). */
export function clearBuiltKernels(): void {
  built.clear();
}

/** The kernel IR of a step, traced once per (kernel, spec, schedule): IR is immutable data. */
export function stepKernel(step: PlanStep): Kernel {
  const key = `${step.kernel.name}/${specKey(step.spec)}/${scheduleKey(step.schedule)}`;
  let k = built.get(key);
  if (!k) {
    k = step.kernel.build(step.spec, step.schedule);
    built.set(key, k);
  }
  return k;
}
