// The DSL surface: kernels are traced from TypeScript builder calls into IR (`ir.ts`).
// A kernel definition is a function (spec, schedule) => Kernel; the builder records statements in
// order, so control flow written with `k.for` / `k.if` becomes IR loops and branches, while plain
// TypeScript `if`/`for` unrolls at trace time (use it for compile-time choices such as the degree).

import type { DType } from "./dtype.ts";
import type { BinaryFn, BufferDecl, Expr, Kernel, ParamDecl, Slice, Space, Stmt, TensorDecl, UnaryFn } from "./ir.ts";

export type Scalar = Val | number;

type VType = "i32" | "f32" | "bool";

/** A scalar expression with fluent arithmetic; `type` is its static type. Bare numbers take the
 * other operand's type (an integer beside an i32 is i32, anything else f32). */
export class Val {
  constructor(readonly expr: Expr, readonly type: VType) {}
  add(b: Scalar): Val { return arith("add", this, b); }
  sub(b: Scalar): Val { return arith("sub", this, b); }
  mul(b: Scalar): Val { return arith("mul", this, b); }
  /** Real division (f32). */
  div(b: Scalar): Val { return arith("div", this.toF32(), lift(b, null).toF32()); }
  /** Integer division (i32, toward zero; used on non-negative indices). */
  idiv(b: Scalar): Val { return arith("idiv", this, b); }
  mod(b: Scalar): Val { return arith("mod", this, b); }
  max(b: Scalar): Val { return arith("max", this, b); }
  min(b: Scalar): Val { return arith("min", this, b); }
  lt(b: Scalar): Val { return cmp("lt", this, b); }
  le(b: Scalar): Val { return cmp("le", this, b); }
  gt(b: Scalar): Val { return cmp("gt", this, b); }
  ge(b: Scalar): Val { return cmp("ge", this, b); }
  eq(b: Scalar): Val { return cmp("eq", this, b); }
  ne(b: Scalar): Val { return cmp("ne", this, b); }
  and(b: Val): Val { return new Val({ op: "binary", fn: "and", a: this.expr, b: b.expr }, "bool"); }
  or(b: Val): Val { return new Val({ op: "binary", fn: "or", a: this.expr, b: b.expr }, "bool"); }
  not(): Val { return new Val({ op: "unary", fn: "not", a: this.expr }, "bool"); }
  /** true unless this is +-Infinity or NaN (the guard of non-finite inputs: README "Non-finite inputs"). */
  isFinite(): Val { return new Val({ op: "unary", fn: "finite", a: this.toF32().expr }, "bool"); }
  neg(): Val { return new Val({ op: "unary", fn: "neg", a: this.expr }, this.type); }
  exp(): Val { return real("exp", this); }
  log(): Val { return real("log", this); }
  abs(): Val { return new Val({ op: "unary", fn: "abs", a: this.expr }, this.type); }
  sqrt(): Val { return real("sqrt", this); }
  /** this^n for a constant integer n >= 0. */
  pow(n: number): Val {
    if (!Number.isInteger(n) || n < 0) throw new Error(`pow: exponent must be a non-negative integer, got ${n}`);
    return new Val({ op: "pow", a: this.expr, n }, this.type);
  }
  toF32(): Val { return this.type === "f32" ? this : new Val({ op: "cast", to: "f32", a: this.expr }, "f32"); }
  toI32(): Val { return this.type === "i32" ? this : new Val({ op: "cast", to: "i32", a: this.expr }, "i32"); }
}

function real(fn: UnaryFn, a: Val): Val {
  return new Val({ op: "unary", fn, a: a.toF32().expr }, "f32");
}

function lift(x: Scalar, like: Val | null): Val {
  if (x instanceof Val) return x;
  const t = like !== null && like.type === "i32" && Number.isInteger(x) ? "i32" : "f32";
  return new Val({ op: "const", value: x, type: t }, t);
}

function pair(a: Scalar, b: Scalar): [Val, Val] {
  const av = lift(a, b instanceof Val ? b : null);
  const bv = lift(b, av);
  // Mixed i32/f32 promotes to f32.
  if (av.type !== bv.type && av.type !== "bool" && bv.type !== "bool") return [av.toF32(), bv.toF32()];
  return [av, bv];
}

function arith(fn: BinaryFn, a: Scalar, b: Scalar): Val {
  const [av, bv] = pair(a, b);
  return new Val({ op: "binary", fn, a: av.expr, b: bv.expr }, av.type);
}

function cmp(fn: BinaryFn, a: Scalar, b: Scalar): Val {
  const [av, bv] = pair(a, b);
  return new Val({ op: "binary", fn, a: av.expr, b: bv.expr }, "bool");
}

/** Constants of each type. */
export const i32 = (v: number): Val => new Val({ op: "const", value: v, type: "i32" }, "i32");
export const f32 = (v: number): Val => new Val({ op: "const", value: v, type: "f32" }, "f32");
export const bool = (v: boolean): Val => new Val({ op: "const", value: v ? 1 : 0, type: "bool" }, "bool");
/** cond ? a : b, element-wise. */
export function select(cond: Val, a: Scalar, b: Scalar): Val {
  const [av, bv] = pair(a, b);
  return new Val({ op: "select", cond: cond.expr, a: av.expr, b: bv.expr }, av.type);
}
export function max(a: Scalar, b: Scalar): Val { return arith("max", a, b); }
export function min(a: Scalar, b: Scalar): Val { return arith("min", a, b); }

/** A tile: a fixed-shape buffer of one dtype in shared memory or registers. */
export class Tile {
  constructor(readonly name: string, readonly shape: readonly number[], readonly dtype: DType, readonly space: Space) {}
  get rows(): number { return this.shape[0]!; }
  get cols(): number { return this.shape[1] ?? 1; }
  /** The element at (i) or (i, j), read as f32. */
  at(...index: Scalar[]): Val {
    if (index.length !== this.shape.length)
      throw new Error(`tile ${this.name} has rank ${this.shape.length}, indexed with ${index.length} indices`);
    return new Val({ op: "read", buf: this.name, index: index.map((i) => lift(i, i32(0)).expr) }, "f32");
  }
}

/** A global tensor argument. */
export class TensorRef {
  constructor(readonly name: string, readonly dtype: DType, readonly rank: number) {}
}

/** A 1-D i32 input tensor read one element at a time (\`at\`: a program-uniform i32), e.g. where
 * each packed sequence starts. Its index may use params, program ids, loop variables and other
 * tables' elements, not tiles, rows or columns. */
export class TableRef {
  constructor(readonly name: string) {}
  at(i: Scalar): Val {
    return new Val({ op: "fetch", tensor: this.name, index: lift(i, i32(0)).expr }, "i32");
  }
}

/** A tile axis of a load/store: `size` elements from `start`. */
export class Range {
  constructor(readonly start: Val, readonly size: number) {}
}
export function range(start: Scalar, size: number): Range {
  return new Range(lift(start, i32(0)), size);
}

/** The element coordinates a `map` body sees. */
export interface MapIndex {
  readonly row: Val;
  readonly col: Val;
}

/** The row and column of the element a map (or a store's mask, or a vote) is evaluated at. */
const mapIndex = (): MapIndex => ({ row: new Val({ op: "row" }, "i32"), col: new Val({ op: "col" }, "i32") });

export class KernelBuilder {
  private readonly params: ParamDecl[] = [];
  private readonly tensors: TensorDecl[] = [];
  private readonly buffers: BufferDecl[] = [];
  private readonly stack: Stmt[][] = [[]];
  private loopCount = 0;
  private grid: [Expr, Expr, Expr] = [i32(1).expr, i32(1).expr, i32(1).expr];

  constructor(readonly name: string, readonly numWarps: number) {}

  /** A scalar kernel argument. */
  param(name: string, type: "i32" | "f32"): Val {
    this.params.push({ name, type });
    return new Val({ op: "param", name }, type);
  }

  tensor(name: string, dtype: DType, dims: readonly Scalar[], role: "in" | "out"): TensorRef {
    this.tensors.push({ name, dtype, dims: dims.map((d) => lift(d, i32(0)).expr), role });
    return new TensorRef(name, dtype, dims.length);
  }

  /** An i32 table of \`length\` elements (an input; see TableRef). */
  table(name: string, length: Scalar): TableRef {
    this.tensors.push({ name, dtype: "i32", dims: [lift(length, i32(0)).expr], role: "in" });
    return new TableRef(name);
  }

  /** Programs per grid axis (x, y, z). */
  launch(x: Scalar, y: Scalar = 1, z: Scalar = 1): void {
    this.grid = [lift(x, i32(0)).expr, lift(y, i32(0)).expr, lift(z, i32(0)).expr];
  }

  programId(axis: 0 | 1 | 2): Val {
    return new Val({ op: "pid", axis }, "i32");
  }

  shared(name: string, shape: readonly number[], dtype: DType): Tile {
    return this.alloc(name, shape, dtype, "shared");
  }

  reg(name: string, shape: readonly number[], dtype: DType): Tile {
    return this.alloc(name, shape, dtype, "reg");
  }

  private alloc(name: string, shape: readonly number[], dtype: DType, space: Space): Tile {
    this.buffers.push({ name, type: { shape: [...shape], dtype, space } });
    return new Tile(name, shape, dtype, space);
  }

  private emit(s: Stmt): void {
    this.stack[this.stack.length - 1]!.push(s);
  }

  load(dst: Tile, src: TensorRef, index: readonly (Scalar | Range)[]): void {
    this.emit({ kind: "load", dst: dst.name, tensor: src.name, slices: index.map(toSlice) });
  }

  /** dst[index] = src; with `where`, only the elements (row, col of src) where it holds. */
  store(dst: TensorRef, index: readonly (Scalar | Range)[], src: Tile, opts: { where?: (ix: MapIndex) => Val } = {}): void {
    const mask = opts.where ? { mask: opts.where(mapIndex()).expr } : {};
    this.emit({ kind: "store", tensor: dst.name, slices: index.map(toSlice), src: src.name, ...mask });
  }

  /** dst[row, col] = f({row, col}) for every element. */
  map(dst: Tile, f: (ix: MapIndex) => Scalar): void {
    this.emit({ kind: "map", dst: dst.name, expr: lift(f(mapIndex()), null).expr });
  }

  fill(dst: Tile, value: number): void {
    this.map(dst, () => f32(value));
  }

  /** axis 1: dst[r] = fn_c src[r, c]; axis 0: dst[c] = fn_r src[r, c]. */
  reduce(dst: Tile, src: Tile, fn: "sum" | "max", axis: 0 | 1): void {
    this.emit({ kind: "reduce", dst: dst.name, src: src.name, fn, axis });
  }

  /** Inclusive cumulative sum along `axis` (reverse = suffix sums). */
  cumsum(dst: Tile, src: Tile, axis: 0 | 1, opts: { reverse?: boolean } = {}): void {
    this.emit({ kind: "scan", dst: dst.name, src: src.name, axis, reverse: opts.reverse ?? false });
  }

  /** dst (+)= op(a) @ op(b), fp32 accumulation. */
  mma(dst: Tile, a: Tile, b: Tile, opts: { transA?: boolean; transB?: boolean; accumulate?: boolean } = {}): void {
    this.emit({
      kind: "mma",
      dst: dst.name,
      a: a.name,
      b: b.name,
      transA: opts.transA ?? false,
      transB: opts.transB ?? false,
      accumulate: opts.accumulate ?? false,
    });
  }

  /** dst[r, f] = phi_{offset+f}(src[r, :]) for the degree-`deg` symmetric power embedding. */
  expand(dst: Tile, src: Tile, deg: number, offset: Scalar): void {
    this.emit({ kind: "expand", dst: dst.name, src: src.name, deg, offset: lift(offset, i32(0)).expr });
  }

  /** dst (+)= the gradient w.r.t. x of sum(dphi * expand(x)). */
  expandGrad(dst: Tile, x: Tile, dphi: Tile, deg: number, offset: Scalar, opts: { accumulate?: boolean } = {}): void {
    this.emit({
      kind: "expandGrad",
      dst: dst.name,
      x: x.name,
      dphi: dphi.name,
      deg,
      offset: lift(offset, i32(0)).expr,
      accumulate: opts.accumulate ?? false,
    });
  }

  /** for (v = start; v < end; v += step) body(v); `stages` = pipelining depth hint. */
  for(start: Scalar, end: Scalar, body: (v: Val) => void, opts: { step?: number; stages?: number } = {}): void {
    const name = `i${this.loopCount++}`;
    this.stack.push([]);
    body(new Val({ op: "var", name }, "i32"));
    const stmts = this.stack.pop()!;
    this.emit({
      kind: "for",
      var: name,
      start: lift(start, i32(0)).expr,
      end: lift(end, i32(0)).expr,
      step: opts.step ?? 1,
      stages: opts.stages ?? 1,
      body: stmts,
    });
  }

  /** Run body when the program-uniform condition holds, else orelse (when given). */
  if(cond: Val, body: () => void, orelse?: () => void): void {
    const trace = (f: () => void): Stmt[] => {
      this.stack.push([]);
      f();
      return this.stack.pop()!;
    };
    const stmts = trace(body);
    this.emit({ kind: "if", cond: cond.expr, body: stmts, ...(orelse ? { orelse: trace(orelse) } : {}) });
  }

  /** Whether f({row, col}) holds at some element of `over`'s shape: a program-uniform bool the
   * block computes together, for the condition of `if` (e.g. a tile holds a non-finite value). */
  any(over: Tile, f: (ix: MapIndex) => Val): Val {
    return new Val({ op: "any", shape: over.shape, pred: f(mapIndex()).expr }, "bool");
  }

  build(doc: string): Kernel {
    if (this.stack.length !== 1) throw new Error(`kernel ${this.name}: unbalanced loop/branch nesting`);
    return {
      name: this.name,
      doc,
      params: this.params,
      tensors: this.tensors,
      buffers: this.buffers,
      grid: this.grid,
      numWarps: this.numWarps,
      body: this.stack[0]!,
    };
  }
}

function toSlice(x: Scalar | Range): Slice {
  if (x instanceof Range) return { kind: "range", start: x.start.expr, size: x.size };
  return { kind: "at", at: lift(x, i32(0)).expr };
}

/** Trace a kernel: `body` records statements on a fresh builder. */
export function traceKernel(name: string, numWarps: number, doc: string, body: (k: KernelBuilder) => void): Kernel {
  const k = new KernelBuilder(name, numWarps);
  body(k);
  return k.build(doc);
}
