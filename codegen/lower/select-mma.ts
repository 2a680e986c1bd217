// Pass: choose how each mma runs. f16/bf16 operands whose shapes are multiples of 16x8x16 go to
// tensor cores: on sm_90a as wgmma where the shape and operands allow (whyNotWgmma), else as
// mma.sync m16n8k16 fed by ldmatrix; f32 operands use fp32 FMA (SPEC asks 1e-4 for them, which
// tf32 would not meet), in the accumulator fragment layout when the shape allows so the result can
// stay in registers; anything else uses plain FMA over shared memory.
//
// The warp tiling: the default cuts the output into the widest units that still give every warp
// one (chooseTiling). Two cases take the row-block tiling instead (each warp owns whole rows,
// rules.rowBlockTiling): wgmma's accumulators (a warpgroup owns 64 consecutive rows), and the
// chains in which an accumulator's values, mapped element-wise into a 16-bit tile, become the A
// operand of the next mma (flash attention's P = f(S) in P @ V): in the row-block tiling a warp's
// accumulator fragments are, element for element, its A fragments, so P never leaves registers
// (place-fragments). Accumulators that maps read together at [row, col] take the same choice.

import { bufferOf, mapStmts, readNodes, stmtAccess, walkStmts, type LKernel, type LStmt, type MmaImpl } from "../lir.ts";
import { chooseTiling, mmaShape, rowBlockTiling, whyNotTensorCores, whyNotWgmma } from "./rules.ts";

type Mma = Extract<LStmt, { kind: "mma" }>;

/** The accumulators of mmas whose B operand is a 16-bit tile that maps write and only mmas into
 * that one accumulator (or maps writing such tiles: a hi / lo pair) read: the operands
 * fuse-operands may compute in registers (it decides; this only shapes the tiling for them). */
function computedB(k: LKernel): { accs: Set<string>; operands: Set<string> } {
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
  const accs = new Set<string>(), operands = new Set<string>();
  walkStmts(k.body, (s) => {
    if (s.kind !== "mma" || !mapped.has(s.b) || other.has(s.b) || readers.get(s.b)?.size !== 1) return;
    operands.add(s.b);
    if (!mapped.has(s.a)) accs.add(s.dst);
  });
  return { accs, operands };
}

/** Accumulators (2-D f32 reg tiles some mma writes) and, per tile, the accumulators maps read
 * together with it at [row, col] (element-wise ties). */
function accumulatorTies(k: LKernel): { accs: Set<string>; ties: Map<string, Set<string>> } {
  const accs = new Set<string>();
  walkStmts(k.body, (s) => {
    if (s.kind === "mma") accs.add(s.dst);
  });
  const isAcc = (n: string): boolean => accs.has(n) && bufferOf(k, n).type.space === "reg" && bufferOf(k, n).type.dtype === "f32";
  const ties = new Map<string, Set<string>>();
  const tie = (a: string, b: string): void => {
    ties.set(a, (ties.get(a) ?? new Set<string>()).add(b));
    ties.set(b, (ties.get(b) ?? new Set<string>()).add(a));
  };
  walkStmts(k.body, (s) => {
    if (s.kind !== "map") return;
    const own = readNodes(s.expr).filter((r) => r.index.length === 2 && r.index[0]!.op === "row" && r.index[1]!.op === "col").map((r) => r.buf);
    const group = [s.dst, ...own].filter(isAcc);
    for (const x of group) for (const y of group) if (x !== y) tie(x, y);
  });
  return { accs: new Set([...accs].filter(isAcc)), ties };
}

/** The accumulators that take the row-block tiling (header). */
function rowBlockAccumulators(k: LKernel, mmas: readonly Mma[], computedBOperands: ReadonlySet<string>): Set<string> {
  const { accs, ties } = accumulatorTies(k);
  const want = new Set<string>();
  // A operands that are 16-bit reg tiles written only by maps reading accumulators at [row, col]
  const writers = new Map<string, LStmt[]>();
  walkStmts(k.body, (s) => {
    for (const w of stmtAccess(s).writes) writers.set(w, [...(writers.get(w) ?? []), s]);
  });
  for (const s of mmas) {
    const a = bufferOf(k, s.a);
    if (whyNotWgmma(k, s) === null && !computedBOperands.has(s.b)) want.add(s.dst);
    if (s.transA || a.type.space !== "reg" || a.type.dtype === "f32" || a.type.shape.length !== 2) continue;
    const ws = writers.get(s.a) ?? [];
    const sources = ws.flatMap((w) => (w.kind === "map" ? readNodes(w.expr).filter((r) => accs.has(r.buf) && r.index[0]?.op === "row" && r.index[1]?.op === "col").map((r) => r.buf) : []));
    if (ws.length === 0 || ws.some((w) => w.kind !== "map") || sources.length === 0) continue;
    want.add(s.dst);
    sources.forEach((x) => want.add(x));
  }
  // close over element-wise ties, then drop accumulators some mma into them cannot tile by rows
  const queue = [...want];
  while (queue.length) for (const t of ties.get(queue.pop()!) ?? []) if (!want.has(t)) want.add(t), queue.push(t);
  for (const s of mmas) {
    const { m, n } = mmaShape(k, s);
    if (want.has(s.dst) && !rowBlockTiling(m, n, k.numWarps)) want.delete(s.dst);
  }
  return want;
}

export function selectMma(k: LKernel): LKernel {
  const computed = computedB(k);
  const mmas: Mma[] = [];
  walkStmts(k.body, (s) => {
    if (s.kind === "mma") mmas.push(s);
  });
  const rowBlock = rowBlockAccumulators(k, mmas, computed.operands);
  const body = mapStmts(k.body, (s) => {
    if (s.kind !== "mma" || s.impl !== null) return s;
    const { m, n } = mmaShape(k, s);
    const tensorCores = whyNotTensorCores(k, s) === null;
    const rb = rowBlock.has(s.dst) ? rowBlockTiling(m, n, k.numWarps) : null;
    let impl: MmaImpl;
    // a B that maps compute from shared tiles stays in registers on mma.sync (an mma group) rather
    // than going through shared memory for wgmma (the diagonal block's finite V: once a program)
    if (rb && whyNotWgmma(k, s) === null && !computed.operands.has(s.b)) impl = { kind: "wgmma", tiling: rb };
    else if (rb) impl = tensorCores ? { kind: "tc", tiling: rb } : { kind: "fmaFrag", tiling: rb };
    else {
      const tiling = chooseTiling(m, n, k.numWarps, tensorCores && computed.accs.has(s.dst));
      impl = tensorCores && tiling ? { kind: "tc", tiling } : tiling ? { kind: "fmaFrag", tiling } : { kind: "fma" };
    }
    return { ...s, impl };
  });
  return { ...k, body };
}
