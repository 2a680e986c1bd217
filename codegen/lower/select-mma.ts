// Pass: choose how each mma runs. f16/bf16 operands whose shapes are multiples of 16x8x16 go to
// tensor cores (mma.sync m16n8k16 fed by ldmatrix); f32 operands use fp32 FMA (SPEC asks 1e-4 for
// them, which tf32 would not meet), in the accumulator fragment layout when the shape allows so
// the result can stay in registers; anything else uses plain FMA over shared memory.

import { bufferOf, mapStmts, stmtAccess, walkStmts, type LKernel, type MmaImpl } from "../lir.ts";
import { chooseTiling, mmaShape, whyNotTensorCores } from "./rules.ts";

/** The accumulators of mmas whose B operand is a 16-bit tile that maps write and only mmas into
 * that one accumulator (or maps writing such tiles: a hi / lo pair) read: the operands
 * fuse-operands may compute in registers (it decides; this only shapes the tiling for them). */
function computedBAccumulators(k: LKernel): Set<string> {
  const mapped = new Set<string>();
  walkStmts(k.body, (s) => {
    if (s.kind === "map" && bufferOf(k, s.dst).type.dtype !== "f32") mapped.add(s.dst);
  });
  const readers = new Map<string, Set<string>>(), other = new Set<string>();
  walkStmts(k.body, (s) => {
    for (const r of stmtAccess(s).reads) {
      if (s.kind === "mma" && (s.a === r || s.b === r) && s.dst !== r) readers.set(r, (readers.get(r) ?? new Set<string>()).add(s.dst));
      else if (!(s.kind === "map" && mapped.has(s.dst) && s.dst !== r)) other.add(r);
    }
  });
  const accs = new Set<string>();
  walkStmts(k.body, (s) => {
    if (s.kind !== "mma" || !mapped.has(s.b) || other.has(s.b) || readers.get(s.b)?.size !== 1 || mapped.has(s.a)) return;
    accs.add(s.dst);
  });
  return accs;
}

export function selectMma(k: LKernel): LKernel {
  const computedB = computedBAccumulators(k);
  const body = mapStmts(k.body, (s) => {
    if (s.kind !== "mma" || s.impl !== null) return s;
    const { m, n } = mmaShape(k, s);
    const tensorCores = whyNotTensorCores(k, s) === null;
    const tiling = chooseTiling(m, n, k.numWarps, tensorCores && computedB.has(s.dst));
    let impl: MmaImpl;
    if (tensorCores && tiling) impl = { kind: "tc", tiling };
    else if (tiling) impl = { kind: "fmaFrag", tiling };
    else impl = { kind: "fma" };
    return { ...s, impl };
  });
  return { ...k, body };
}
