// Pass: choose how each mma runs. f16/bf16 operands whose shapes are multiples of 16x8x16 go to
// tensor cores (mma.sync m16n8k16 fed by ldmatrix); f32 operands use fp32 FMA (SPEC asks 1e-4 for
// them, which tf32 would not meet), in the accumulator fragment layout when the shape allows so
// the result can stay in registers; anything else uses plain FMA over shared memory.

import { mapStmts, type LKernel, type MmaImpl } from "../lir.ts";
import { chooseTiling, mmaShape, whyNotTensorCores } from "./rules.ts";

export function selectMma(k: LKernel): LKernel {
  const body = mapStmts(k.body, (s) => {
    if (s.kind !== "mma" || s.impl !== null) return s;
    const { m, n } = mmaShape(k, s);
    const tiling = chooseTiling(m, n, k.numWarps);
    let impl: MmaImpl;
    if (whyNotTensorCores(k, s) === null && tiling) impl = { kind: "tc", tiling };
    else if (tiling) impl = { kind: "fmaFrag", tiling };
    else impl = { kind: "fma" };
    return { ...s, impl };
  });
  return { ...k, body };
}
