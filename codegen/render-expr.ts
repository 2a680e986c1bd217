// Scalar expressions -> C: f32 math (exp and log through the hardware's base-2 units,
// prt::exp / prt::log; sqrtf, ...), i32 indices, NaN-propagating max/min (the
// interpreter's Math.max keeps NaN, fmaxf drops it), tile reads converted to f32.

import type { Expr } from "../dsl/ir.ts";
import { bufferOf, type LBuffer, type LKernel } from "./lir.ts";
import { fragRead, type FragIndex } from "./emit.ts";
import { ownElement } from "./lower/fuse-maps.ts";

export type CType = "i32" | "f32" | "bool";

export function exprType(e: Expr, k: LKernel): CType {
  switch (e.op) {
    case "const":
      return e.type;
    case "param":
      return k.params.find((p) => p.name === e.name)!.type;
    case "pid":
    case "var":
    case "row":
    case "col":
      return "i32";
    case "read":
      return "f32";
    case "fetch":
      return "i32";
    case "unary":
      if (e.fn === "not" || e.fn === "finite") return "bool";
      return e.fn === "neg" || e.fn === "abs" ? exprType(e.a, k) : "f32";
    case "binary":
      if (["lt", "le", "gt", "ge", "eq", "ne", "and", "or"].includes(e.fn)) return "bool";
      return exprType(e.a, k);
    case "pow":
      return exprType(e.a, k);
    case "select":
      return exprType(e.a, k);
    case "cast":
      return e.to;
    case "any":
      return "bool";
  }
}

/** A C float literal that rounds to the same f32 as `v` (inf / NaN by bit pattern). */
export function floatLiteral(v: number): string {
  if (Number.isNaN(v)) return "__int_as_float(0x7fc00000)";
  if (v === Infinity) return "__int_as_float(0x7f800000)";
  if (v === -Infinity) return "__int_as_float(0xff800000)";
  const s = String(v);
  const lit = /[.eE]/.test(s) ? s : `${s}.0`;
  return v < 0 || Object.is(v, -0) ? `(${Object.is(v, -0) ? "-0.0" : lit}f)` : `${lit}f`;
}

export const NEG_INF = "__int_as_float(0xff800000)";

export interface ExprCtx {
  readonly k: LKernel;
  /** C expressions for `row` / `col` inside a map. */
  readonly row?: string;
  readonly col?: string;
  /** Inside a loop over fragment elements: the current element's index, valid for every frag tile
   * of the same tiling (and row vectors of its rows). */
  readonly fragElem?: FragIndex;
  /** Inside a fused run of maps (lower/fuse-maps.ts): tiles whose element [row, col] this thread
   * has just computed, as the C name of the f32 value. */
  readonly locals?: ReadonlyMap<string, string>;
  /** Inside a map over fragment element pairs: 1-D shared tiles read at `col`, as the C name of
   * the value this element's column holds (loaded once per column pair, see columnPairReads). */
  readonly colVec?: ReadonlyMap<string, string>;
}

const C_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** DSL names become C identifiers with a prefix per kind, so they never meet generated locals. */
export function cName(prefix: string, name: string): string {
  if (!C_NAME.test(name)) throw new Error(`name '${name}' is not a C identifier`);
  return `${prefix}_${name}`;
}

/** The C element offset of (r, c) in a 2-D shared tile: rows of `pitch` elements, or the swizzled
 * layout (lir.ts, Swizzle): panels of E = swizzle / 2 columns, each [rows][E], the 16-byte chunks
 * of a row XORed with the row's place among 8 (prt::swz: the bits wgmma and TMA use). */
export function tileOffset(b: LBuffer, r: string, c: string): string {
  if (b.swizzle === 0) return `(${r}) * ${b.pitch} + (${c})`;
  const E = b.swizzle / 2, rows = b.type.shape[0]!;
  const panels = b.type.shape[1]! / E;
  const linear = panels > 1 ? `((${c}) / ${E} * ${rows} + (${r})) * ${E} + ((${c}) % ${E})` : `(${r}) * ${E} + (${c})`;
  return `prt::swz<${b.swizzle}>(${linear})`;
}

/** The C lvalue of element (i, j) (or (i)) of a shared tile. */
export function smemElem(k: LKernel, buf: string, index: readonly string[]): string {
  const b = bufferOf(k, buf);
  const t = cName("t", buf);
  return index.length === 1 ? `${t}[${index[0]}]` : `${t}[${tileOffset(b, index[0]!, index[1]!)}]`;
}

export function renderExpr(e: Expr, c: ExprCtx): string {
  const r = (x: Expr): string => renderExpr(x, c);
  switch (e.op) {
    case "const":
      if (e.type === "bool") return e.value ? "true" : "false";
      if (e.type === "i32") return e.value < 0 ? `(${e.value})` : String(e.value);
      return floatLiteral(e.value);
    case "param":
      return cName("p", e.name);
    case "pid":
      return `static_cast<int>(blockIdx.${"xyz"[e.axis]})`;
    case "var":
      return cName("v", e.name);
    case "row":
      if (c.row === undefined) throw new Error("'row' outside a map");
      return c.row;
    case "col":
      if (c.col === undefined) throw new Error("'col' outside a map");
      return c.col;
    case "fetch": {
      const g = cName("g", e.tensor);
      return `prt::fetch_i32(${g}, ${g}_d0, ${r(e.index)})`;
    }
    case "read": {
      const b = bufferOf(c.k, e.buf);
      if (b.home === "frag") {
        if (c.fragElem === undefined) throw new Error(`frag tile ${e.buf} read outside a map over fragments`);
        return fragRead(c.k, e.buf, c.fragElem);
      }
      const local = c.locals?.get(e.buf);
      if (local !== undefined && ownElement(b.type.shape.length, e.index)) return local;
      const cv = c.colVec?.get(e.buf);
      if (cv !== undefined && e.index.length === 1 && e.index[0]!.op === "col") return cv;
      return `prt::to_f32(${smemElem(c.k, e.buf, e.index.map(r))})`;
    }
    case "unary": {
      const a = r(e.a);
      switch (e.fn) {
        case "neg":
          return `(-${a})`;
        case "exp":
          return `prt::exp(${a})`;
        case "log":
          return `prt::log(${a})`;
        case "abs":
          return exprType(e.a, c.k) === "i32" ? `abs(${a})` : `fabsf(${a})`;
        case "sqrt":
          return `sqrtf(${a})`;
        case "not":
          return `(!${a})`;
        case "finite":
          return `isfinite(${a})`;
      }
    }
    // falls through (unreachable: the switch above is exhaustive)
    case "binary": {
      if (e.op !== "binary") throw new Error("unreachable");
      const a = r(e.a), b = r(e.b);
      const infix: Record<string, string> = {
        add: "+", sub: "-", mul: "*", div: "/", idiv: "/", mod: "%",
        lt: "<", le: "<=", gt: ">", ge: ">=", eq: "==", ne: "!=", and: "&&", or: "||",
      };
      if (e.fn === "max") return `prt::max_nan(${a}, ${b})`;
      if (e.fn === "min") return `prt::min_nan(${a}, ${b})`;
      return `(${a} ${infix[e.fn]} ${b})`;
    }
    case "pow":
      return `prt::powi<${e.n}>(${r(e.a)})`;
    case "select":
      return `(${r(e.cond)} ? ${r(e.a)} : ${r(e.b)})`;
    case "cast":
      return e.to === "i32" ? `static_cast<int>(${r(e.a)})` : `static_cast<float>(${r(e.a)})`;
    case "any":
      throw new Error("render: an `any` renders as its if's block vote (render-cuda), not inline");
  }
}

/** An expression as an f32 value (i32 results converted). */
export function renderF32(e: Expr, c: ExprCtx): string {
  const s = renderExpr(e, c);
  return exprType(e, c.k) === "f32" ? s : `static_cast<float>(${s})`;
}
