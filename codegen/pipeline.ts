// The lowering from a DSL kernel to CUDA C++, every pass in order. Each pass is a function
// LKernel -> LKernel over plain data (lir.ts); the LIR validator runs after each one, and a dump
// hook sees the IR after each pass and the final CUDA (`gen --dump-ir DIR`).
//
// Simplifications today (see README.md): `reg` tiles live in registers only as mma-fragment-layout
// tiles (accumulators and tiles used element-wise with them or reduced); 1-D reg tiles and reg
// tiles that are scanned or read at other elements live in shared memory. Every statement is a block-cooperative
// loop, with barriers between statements where a shared-memory hazard needs one.

import type { Kernel } from "../dsl/ir.ts";
import { printKernel } from "../dsl/print.ts";
import { assertValid } from "../dsl/validate.ts";
import { fromDsl, type LKernel, type Target } from "./lir.ts";
import { printLKernel } from "./lir-print.ts";
import { assertValidLir } from "./lir-validate.ts";
import { elideBarriers, insertBarriers } from "./lower/barriers.ts";
import { checkSupported } from "./lower/check-supported.ts";
import { fuseOperands } from "./lower/fuse-operands.ts";
import { padShared } from "./lower/pad-shared.ts";
import { pipelineLoops } from "./lower/pipeline-loops.ts";
import { deferWgmmaWaits } from "./lower/defer-wgmma-waits.ts";
import { placeFragments } from "./lower/place-fragments.ts";
import { planShared } from "./lower/plan-shared.ts";
import { selectLoads } from "./lower/select-loads.ts";
import { selectMma } from "./lower/select-mma.ts";
import { renderKernel } from "./render-cuda.ts";

export interface Pass {
  readonly name: string;
  /** Why the pass exists, in one line. */
  readonly why: string;
  readonly run: (k: LKernel) => LKernel;
}

export const PASSES: readonly Pass[] = [
  { name: "check-supported", why: "reject statements that read their own destination across elements (the GPU computes a statement's elements at once)", run: checkSupported },
  { name: "select-mma", why: "f16/bf16 mma on tensor cores (m16n8k16), f32 mma by fp32 FMA (1e-4 forbids tf32); pick the warp tiling", run: selectMma },
  { name: "place-fragments", why: "keep mma accumulators in registers when every use is per element in the fragment layout or a reduce", run: placeFragments },
  { name: "fuse-operands", why: "compute f16/bf16 mma operands that maps define right before tensor-core mmas in registers, per fragment element (no shared store, barrier or reload)", run: fuseOperands },
  { name: "select-loads", why: "global -> shared copies of whole 16-byte chunks through cp.async, one commit group per run of loads", run: selectLoads },
  { name: "pipeline-loops", why: "loops with stages > 1 prefetch the next iterations' tiles into extra copies while computing", run: pipelineLoops },
  { name: "pad-shared", why: "pad mma operand rows by 16 bytes so ldmatrix / FMA column reads hit 32 different banks", run: padShared },
  { name: "plan-shared", why: "give every shared tile its bytes; tiles with disjoint live ranges share them", run: planShared },
  { name: "insert-barriers", why: "a __syncthreads() between every two statements is correct by construction", run: insertBarriers },
  { name: "elide-barriers", why: "keep only barriers that order a shared-memory hazard between threads (same-thread element-wise chains need none)", run: elideBarriers },
  { name: "defer-wgmma-waits", why: "sm_90a: a wgmma's wait moves down to the first statement needing its result or writing its operands, so the statements between run under it", run: deferWgmmaWaits },
];

export interface LowerOptions {
  /** The C symbol of the kernel. */
  readonly symbol: string;
  /** The targets to lower for, each its own body of the one function (default sm_80 and sm_90a). */
  readonly targets?: readonly Target[];
  /** Blocks per SM the compiler must fit (Schedule.minBlocks; __launch_bounds__'s second argument). */
  readonly minBlocks?: number;
  /** Called with (step name, text) for the DSL IR, the LIR after each pass and the final CUDA. */
  readonly dump?: (step: string, text: string) => void;
}

export interface Lowered {
  /** The lowering per target, in the order asked. */
  readonly lirs: readonly LKernel[];
  /** The first target's (the one most callers want: sm_80 by default). */
  readonly lir: LKernel;
  /** The kernel's CUDA source (a __global__ function; the file skeleton comes from templates/). */
  readonly cuda: string;
}

export function lowerKernel(kernel: Kernel, opts: LowerOptions): Lowered {
  assertValid(kernel);
  opts.dump?.("00-dsl", printKernel(kernel));
  const targets = opts.targets ?? ["sm_80", "sm_90a"];
  const lirs = targets.map((target) => {
    let k = assertValidLir(fromDsl(kernel, target), "from-dsl");
    const tag = targets.length > 1 ? `-${target}` : "";
    PASSES.forEach((p, i) => {
      try {
        k = assertValidLir(p.run(k), p.name);
      } catch (e) {
        throw new Error(`lowering ${kernel.name} for ${target}, pass ${p.name}: ${e instanceof Error ? e.message : String(e)}`);
      }
      opts.dump?.(`${String(i + 1).padStart(2, "0")}-${p.name}${tag}`, printLKernel(k));
    });
    return k;
  });
  const cuda = renderKernel(lirs, opts.symbol, opts.minBlocks);
  opts.dump?.(`${String(PASSES.length + 1).padStart(2, "0")}-cuda`, cuda);
  return { lirs, lir: lirs[0]!, cuda };
}

/** Run the passes up to and including `name` (the pass tests start from here). */
export function lowerUpTo(kernel: Kernel, name: string, target: Target = "sm_80"): LKernel {
  let k = fromDsl(assertValid(kernel), target);
  for (const p of PASSES) {
    k = assertValidLir(p.run(k), p.name);
    if (p.name === name) return k;
  }
  throw new Error(`no pass named ${name}`);
}
