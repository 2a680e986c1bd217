// A plan is data: the buffers a retention call needs and the kernel launches that fill them, in
// order. The CPU executor (`execute-cpu.ts`) runs it through the interpreter; the GPU runtime runs
// the same plan with the generated kernels. Composition therefore lives in one place.

import type { DType } from "./dtype.ts";
import type { KernelDef, Schedule, Spec } from "./spec.ts";

export interface PlanBuffer {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** input: supplied by the caller; nan: poisoned (every element must be written); zeros: starts at 0. */
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
