// The IR of the tile DSL: plain readonly data. A kernel is a list of statements over named tiles
// (fixed-shape buffers in shared memory or registers) and named global tensors, run once per
// program of a launch grid. Every pass (validator, printer, interpreter, CUDA lowering) is a
// function over these nodes; nothing here knows how it will be executed.

import type { DType, ScalarType, TensorDType } from "./dtype.ts";

/** Where a tile lives on the GPU. The interpreter ignores it; the lowering honours it. */
export type Space = "shared" | "reg";

export interface TileType {
  readonly shape: readonly number[]; // [rows] or [rows, cols], compile-time constants
  readonly dtype: DType;
  readonly space: Space;
}

export interface BufferDecl {
  readonly name: string;
  readonly type: TileType;
}

/** A kernel argument in device memory: row-major, contiguous, dims are integer expressions over params. */
export interface TensorDecl {
  readonly name: string;
  /** i32: a table, input only, read by \`fetch\` alone (never loaded into a tile). */
  readonly dtype: TensorDType;
  readonly dims: readonly Expr[];
  readonly role: "in" | "out";
}

export interface ParamDecl {
  readonly name: string;
  readonly type: "i32" | "f32";
}

export type UnaryFn = "neg" | "exp" | "log" | "abs" | "sqrt" | "not" | "finite";
export type BinaryFn =
  | "add" | "sub" | "mul" | "div" // div is real division; idiv/mod are for i32
  | "max" | "min"
  | "idiv" | "mod"
  | "lt" | "le" | "gt" | "ge" | "eq" | "ne"
  | "and" | "or";

/** Scalar expressions: indices, masks and the element-wise math of `map`. */
export type Expr =
  | { readonly op: "const"; readonly value: number; readonly type: "i32" | "f32" | "bool" }
  | { readonly op: "param"; readonly name: string }
  | { readonly op: "pid"; readonly axis: 0 | 1 | 2 }
  | { readonly op: "var"; readonly name: string } // a loop variable (i32)
  | { readonly op: "row" } // row index of the element a `map` writes
  | { readonly op: "col" } // column index of the element a `map` writes
  | { readonly op: "read"; readonly buf: string; readonly index: readonly Expr[] } // tile element (as f32)
  /** Element \`index\` of a 1-D i32 table (an input tensor), an i32; the index is program-uniform
   * (params, program ids, loop variables, other fetches), so the whole program reads one value. */
  | { readonly op: "fetch"; readonly tensor: string; readonly index: Expr }
  | { readonly op: "unary"; readonly fn: UnaryFn; readonly a: Expr }
  | { readonly op: "binary"; readonly fn: BinaryFn; readonly a: Expr; readonly b: Expr }
  | { readonly op: "pow"; readonly a: Expr; readonly n: number } // integer power, n >= 0 constant
  | { readonly op: "select"; readonly cond: Expr; readonly a: Expr; readonly b: Expr }
  | { readonly op: "cast"; readonly to: "i32" | "f32"; readonly a: Expr }
  /** Whether `pred` (a bool over row, col, tile reads, params, program ids and loop variables)
   * holds at some element of a tile shape: a program-uniform bool that the whole block computes
   * together (one vote per element). Only as the condition of an `if`. */
  | { readonly op: "any"; readonly shape: readonly number[]; readonly pred: Expr };

/** The sub-expressions of e in order (a tile read's indices, a fetch's index, the operands, a vote's
 * predicate): the one place that knows the shape of the expression tree, for every pass that only
 * walks it (validate's checks, the LIR's read sets, loop-variable substitution). */
export function exprChildren(e: Expr): readonly Expr[] {
  switch (e.op) {
    case "read":
      return e.index;
    case "fetch":
      return [e.index];
    case "unary":
    case "cast":
    case "pow":
      return [e.a];
    case "binary":
      return [e.a, e.b];
    case "select":
      return [e.cond, e.a, e.b];
    case "any":
      return [e.pred];
    default:
      return [];
  }
}

/** e with each sub-expression c (exprChildren's) replaced by f(c). */
export function mapExprChildren(e: Expr, f: (c: Expr) => Expr): Expr {
  switch (e.op) {
    case "read":
      return { ...e, index: e.index.map(f) };
    case "fetch":
      return { ...e, index: f(e.index) };
    case "unary":
    case "cast":
    case "pow":
      return { ...e, a: f(e.a) };
    case "binary":
      return { ...e, a: f(e.a), b: f(e.b) };
    case "select":
      return { ...e, cond: f(e.cond), a: f(e.a), b: f(e.b) };
    case "any":
      return { ...e, pred: f(e.pred) };
    default:
      return e;
  }
}

/** One tensor dimension of a load or store: a single index, or a range that becomes a tile axis. */
export type Slice =
  | { readonly kind: "at"; readonly at: Expr }
  | { readonly kind: "range"; readonly start: Expr; readonly size: number };

export type Stmt =
  /** dst = tensor[slices], out-of-bounds elements read as 0, rounded to dst's dtype. */
  | { readonly kind: "load"; readonly dst: string; readonly tensor: string; readonly slices: readonly Slice[] }
  /** tensor[slices] = src, out-of-bounds elements skipped, rounded to the tensor's dtype. With a
   * mask (a bool over row, col of src, params, program ids and loop variables; no tile reads), the
   * elements where it is false are skipped too: a tile whose rows straddle two regions of a tensor. */
  | { readonly kind: "store"; readonly tensor: string; readonly slices: readonly Slice[]; readonly src: string; readonly mask?: Expr }
  /** dst[row, col] = expr for every element, rounded to dst's dtype. */
  | { readonly kind: "map"; readonly dst: string; readonly expr: Expr }
  /** dst[r] = fn over src[r, :] (axis 1), or dst[c] = fn over src[:, c] (axis 0). */
  | { readonly kind: "reduce"; readonly dst: string; readonly src: string; readonly fn: "sum" | "max"; readonly axis: 0 | 1 }
  /** Inclusive prefix sum along an axis (reverse: suffix sum). */
  | { readonly kind: "scan"; readonly dst: string; readonly src: string; readonly axis: 0 | 1; readonly reverse: boolean }
  /** dst (+)= op(a) @ op(b) with op = transpose when asked; fp32 accumulation, operands in their dtype. */
  | {
      readonly kind: "mma";
      readonly dst: string;
      readonly a: string;
      readonly b: string;
      readonly transA: boolean;
      readonly transB: boolean;
      readonly accumulate: boolean;
    }
  /** dst[r, f] = phi_{offset+f}(src[r, :]): one block of the symmetric power expansion (0 past D). */
  | { readonly kind: "expand"; readonly dst: string; readonly src: string; readonly deg: number; readonly offset: Expr }
  /** dst[r, a] (+)= sum_f dphi[r, f] * d phi_{offset+f}(x[r, :]) / d x[r, a]: the expansion's backward. */
  | {
      readonly kind: "expandGrad";
      readonly dst: string;
      readonly x: string;
      readonly dphi: string;
      readonly deg: number;
      readonly offset: Expr;
      readonly accumulate: boolean;
    }
  /** Sequential loop; `stages` is the software-pipelining depth the schedule asks for (1 = none). */
  | {
      readonly kind: "for";
      readonly var: string;
      readonly start: Expr;
      readonly end: Expr;
      readonly step: number;
      readonly stages: number;
      readonly body: readonly Stmt[];
    }
  /** A branch on a program-uniform condition (params, program ids, loop variables; or one `any`
   * over tiles as the whole condition): body when it holds, else orelse (none: nothing). */
  | { readonly kind: "if"; readonly cond: Expr; readonly body: readonly Stmt[]; readonly orelse?: readonly Stmt[] };

export interface Kernel {
  readonly name: string;
  readonly doc: string;
  readonly params: readonly ParamDecl[];
  readonly tensors: readonly TensorDecl[];
  readonly buffers: readonly BufferDecl[];
  /** Programs per axis, integer expressions over params. */
  readonly grid: readonly [Expr, Expr, Expr];
  /** Threads per program = 32 * numWarps on the GPU (from the schedule). */
  readonly numWarps: number;
  readonly body: readonly Stmt[];
}

export type ExprType = ScalarType;
