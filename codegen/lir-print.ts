// A readable text form of the LIR: what `gen --dump-ir` writes after each pass and what the pass
// tests compare. It extends the DSL printer (`dsl/print.ts`) with tile homes and lowering choices.

import { printExpr } from "../dsl/print.ts";
import type { Slice } from "../dsl/ir.ts";
import type { LBuffer, LKernel, LStmt, MmaImpl, WarpTiling } from "./lir.ts";

const slices = (ss: readonly Slice[]): string =>
  ss.map((s) => (s.kind === "at" ? printExpr(s.at) : `${printExpr(s.start)}:+${s.size}`)).join(", ");

export const printTiling = (t: WarpTiling): string => `${t.m}x${t.n} in 16x${8 * t.nt} units over ${t.warps} warps`;

function printImpl(i: MmaImpl | null): string {
  if (i === null) return "mma";
  return i.kind === "fma" ? "mma.fma" : `mma.${i.kind}`;
}

function printBuffer(b: LBuffer): string {
  const shape = `${b.type.dtype}[${b.type.shape.join(", ")}]`;
  if (b.home === "frag") {
    const what = b.type.shape.length === 1 ? "rows of " : b.type.dtype !== "f32" ? "packed, " : "";
    return `  frag ${b.name}: ${shape} (${b.tiling ? what + printTiling(b.tiling) : "no tiling"})`;
  }
  if (b.home === "inline") return `  inline ${b.name}: ${shape} (computed in an mma group)`;
  const cols = b.type.shape[1] ?? b.type.shape[0]!;
  const extra = [
    b.swizzle ? `swizzle ${b.swizzle}` : b.pitch !== cols ? `pitch ${b.pitch}` : "",
    b.copies > 1 ? `x${b.copies} copies` : "",
    b.offset !== null ? `@${b.offset}` : "",
  ].filter((x) => x !== "");
  return `  smem ${b.name}: ${shape}${extra.length ? " " + extra.join(" ") : ""}`;
}

export type Ranks = ReadonlyMap<string, number>;
export const ranksOf = (k: LKernel): Ranks => new Map(k.buffers.map((b) => [b.name, b.type.shape.length]));

/** A statement's lines; `ranks` (tile name -> rank) prints a map over a 1-D tile as `t[row] = ...`. */
export function printLStmt(s: LStmt, ind: string, ranks: Ranks = new Map()): string[] {
  switch (s.kind) {
    case "load": {
      const stage = s.stage ? ` into stage ${printExpr(s.stage)}` : "";
      return [`${ind}${s.dst} = load${s.mode === "async" ? ".async" : ""} ${s.tensor}[${slices(s.slices)}]${stage}`];
    }
    case "store":
      return [`${ind}store ${s.tensor}[${slices(s.slices)}] = ${s.src}${s.mask ? ` where ${printExpr(s.mask)}` : ""}`];
    case "map":
      return [`${ind}${s.dst}[${ranks.get(s.dst) === 1 ? "row" : "row, col"}] = ${printExpr(s.expr)}`];
    case "reduce":
      return [`${ind}${s.dst} = reduce_${s.fn}(${s.src}, axis=${s.axis})${s.scratch ? ` via ${s.scratch}` : ""}`];
    case "scan":
      return [`${ind}${s.dst} = cumsum(${s.src}, axis=${s.axis}${s.reverse ? ", reverse" : ""})`];
    case "mma": {
      const tiling = s.impl && s.impl.kind !== "fma" ? ` [${printTiling(s.impl.tiling)}]` : "";
      return [`${ind}${s.dst} ${s.accumulate ? "+=" : "="} ${printImpl(s.impl)}(${s.a}${s.transA ? "^T" : ""}, ${s.b}${s.transB ? "^T" : ""})${tiling}`];
    }
    case "mmaGroup":
      return [
        `${ind}mma.group (operands in registers):`,
        ...s.operands.map((m) => `${ind}  ${m.dst}[row, col] = ${printExpr(m.expr)}`),
        ...s.mmas.flatMap((m) => printLStmt(m, ind + "  ", ranks)),
      ];
    case "expand":
      return [`${ind}${s.dst} = sympow${s.deg}(${s.src}, features from ${printExpr(s.offset)})`];
    case "expandGrad":
      return [`${ind}${s.dst} ${s.accumulate ? "+=" : "="} sympow${s.deg}_grad(${s.x}, ${s.dphi}, features from ${printExpr(s.offset)})`];
    case "asyncCommit":
      return [`${ind}async.commit`];
    case "asyncWait":
      return [`${ind}async.wait ${s.pending}`];
    case "wgmmaWait":
      return [`${ind}wgmma.wait (${s.tiles.join(", ")})`];
    case "barrier":
      return [`${ind}barrier`];
    case "bindStage":
      return [`${ind}bind ${s.buf} stage ${printExpr(s.stage)}`];
    case "for":
      return [
        `${ind}for ${s.var} in ${printExpr(s.start)}..${printExpr(s.end)} step ${s.step}${s.stages > 1 ? ` stages ${s.stages}` : ""}:`,
        ...s.body.flatMap((b) => printLStmt(b, ind + "  ", ranks)),
      ];
    case "if":
      return [
        `${ind}if ${printExpr(s.cond)}:`,
        ...s.body.flatMap((b) => printLStmt(b, ind + "  ", ranks)),
        ...(s.orelse ? [`${ind}else:`, ...s.orelse.flatMap((b) => printLStmt(b, ind + "  ", ranks))] : []),
      ];
  }
}

/** The body alone (what pass tests compare). */
export function printLBody(body: readonly LStmt[], ranks: Ranks = new Map()): string {
  return body.flatMap((s) => printLStmt(s, "", ranks)).join("\n") + "\n";
}

export function printLKernel(k: LKernel): string {
  const ranks = ranksOf(k);
  const smem = k.smemBytes !== null ? ` smem ${k.smemBytes}` : "";
  const lines = [
    `kernel ${k.name}(${k.params.map((p) => `$${p.name}: ${p.type}`).join(", ")}) grid (${k.grid.map(printExpr).join(", ")}) warps ${k.numWarps}${smem}`,
    ...k.tensors.map((t) => `  ${t.role} ${t.name}: ${t.dtype}[${t.dims.map(printExpr).join(", ")}]`),
    ...k.buffers.map(printBuffer),
    ...k.body.flatMap((s) => printLStmt(s, "  ", ranks)),
  ];
  return lines.join("\n") + "\n";
}
