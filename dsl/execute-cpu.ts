// Run a plan on the CPU through the interpreter: the executable definition the generated CUDA is
// compared with. Poisoned buffers start as NaN, so a kernel that forgets an element is caught.

import { roundArray } from "./dtype.ts";
import { interpret } from "./interpret.ts";
import { numel, stepKernel, type Plan, type PlanStep } from "./plan-types.ts";

/** An input given for a buffer the plan fills itself (logG of an ungated plan: zeros) would be
 * ignored; the error says so (shared with the GPU executor). */
export function notReadError(name: string, init: "nan" | "zeros"): string {
  return `plan input '${name}': given, but the plan does not read it (it starts as ${init === "zeros" ? "zeros" : "NaN, an output"}${name === "logG" ? ": the problem is not gated" : ""}); leave it out`;
}

/** Options of executeOnCpu: `afterStep` sees every buffer (by name) after each step, for
 * measurements that change what a step leaves in memory (bench/precision.ts --states: per-chunk
 * states stored in bf16). */
export interface CpuRunOptions {
  readonly afterStep?: (step: PlanStep, buffers: ReadonlyMap<string, Float32Array>) => void;
}

/** Inputs are rounded to their buffer's dtype on the way in (the caller may pass float64 data). */
export function executeOnCpu(plan: Plan, inputs: Readonly<Record<string, ArrayLike<number>>>, opts: CpuRunOptions = {}): Record<string, Float32Array> {
  const mem = new Map<string, Float32Array>();
  for (const b of plan.buffers) {
    const n = numel(b.shape);
    if (b.init === "input") {
      const x = inputs[b.name];
      if (!x) throw new Error(`plan input '${b.name}' missing`);
      if (x.length !== n) throw new Error(`plan input '${b.name}': expected ${n} elements for shape [${b.shape}], received ${x.length}`);
      mem.set(b.name, roundArray(x, b.dtype));
    } else {
      if (inputs[b.name]) throw new Error(notReadError(b.name, b.init));
      mem.set(b.name, new Float32Array(n).fill(b.init === "nan" ? NaN : 0));
    }
  }
  for (const s of plan.steps) {
    const k = stepKernel(s);
    const tensors: Record<string, Float32Array> = {};
    for (const t of k.tensors) {
      const name = s.bind[t.name];
      if (!name) throw new Error(`step ${k.name}: kernel tensor '${t.name}' is not bound to a plan buffer`);
      tensors[t.name] = mem.get(name)!;
    }
    interpret(k, { tensors, params: s.params });
    opts.afterStep?.(s, mem);
  }
  return Object.fromEntries(plan.outputs.map((o) => [o, mem.get(o)!]));
}
