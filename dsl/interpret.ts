// The interpreter: the executable definition of the IR on the CPU. It runs a kernel program by
// program over Float32Arrays, modelling the GPU's precision: every value written to a tile or a
// tensor is rounded to that storage's dtype (f16/bf16/f32), mma operands are whatever their tiles
// hold, and sums (mma, reduce, scan, the expansion) accumulate in float64 and round once to the
// f32 destination, i.e. at least as accurate as the GPU's fp32 accumulation. Tiles start as NaN in
// every program, so a kernel that reads an element it never wrote poisons its output.

import { rounder, type DType, type TensorDType } from "./dtype.ts";
import type { Expr, Kernel, Slice, Stmt } from "./ir.ts";
import { symPowTable } from "./sympow.ts";
import { assertValid } from "./validate.ts";

export interface KernelArgs {
  /** Every tensor the kernel declares, flat row-major (f16/bf16 data held as f32 values). */
  readonly tensors: Readonly<Record<string, Float32Array>>;
  /** Every scalar param the kernel declares. */
  readonly params: Readonly<Record<string, number>>;
}

interface Ctx {
  readonly pid: Int32Array;
  readonly vars: Float64Array;
  readonly bufs: Float32Array[];
  readonly params: Float64Array;
}

type Fn = (c: Ctx, r: number, k: number) => number;
type Run = (c: Ctx) => void;

interface Env {
  readonly kernel: Kernel;
  readonly tensors: Readonly<Record<string, Float32Array>>;
  readonly dims: ReadonlyMap<string, readonly number[]>;
  readonly varSlots: Map<string, number>;
}

const bufSlot = (env: Env, name: string): number => env.kernel.buffers.findIndex((b) => b.name === name);
const bufShape = (env: Env, name: string): readonly number[] => env.kernel.buffers[bufSlot(env, name)]!.type.shape;

function compileExpr(e: Expr, env: Env): Fn {
  switch (e.op) {
    case "const": {
      const v = e.value;
      return () => v;
    }
    case "param": {
      const i = env.kernel.params.findIndex((p) => p.name === e.name);
      return (c) => c.params[i]!;
    }
    case "pid": {
      const a = e.axis;
      return (c) => c.pid[a]!;
    }
    case "var": {
      const s = env.varSlots.get(e.name)!;
      return (c) => c.vars[s]!;
    }
    case "row":
      return (_c, r) => r;
    case "col":
      return (_c, _r, k) => k;
    case "read": {
      const slot = bufSlot(env, e.buf);
      const shape = bufShape(env, e.buf);
      const name = e.buf;
      const check = (i: number, n: number): number => {
        if (!(i >= 0 && i < n)) throw new Error(`${env.kernel.name}: read ${name}[${i}] outside its extent ${n}`);
        return i;
      };
      if (shape.length === 1) {
        const i0 = compileExpr(e.index[0]!, env), n0 = shape[0]!;
        return (c, r, k) => c.bufs[slot]![check(i0(c, r, k), n0)]!;
      }
      const i0 = compileExpr(e.index[0]!, env), i1 = compileExpr(e.index[1]!, env);
      const n0 = shape[0]!, n1 = shape[1]!;
      return (c, r, k) => c.bufs[slot]![check(i0(c, r, k), n0) * n1 + check(i1(c, r, k), n1)]!;
    }
    case "fetch": {
      // out of bounds reads 0, as a load's elements do
      const tab = env.tensors[e.tensor]!, n = env.dims.get(e.tensor)![0]!, i = compileExpr(e.index, env);
      return (c, r, k) => {
        const j = i(c, r, k);
        return j >= 0 && j < n ? tab[j]! : 0;
      };
    }
    case "unary": {
      const a = compileExpr(e.a, env);
      switch (e.fn) {
        case "neg": return (c, r, k) => -a(c, r, k);
        case "exp": return (c, r, k) => Math.exp(a(c, r, k));
        case "log": return (c, r, k) => Math.log(a(c, r, k));
        case "abs": return (c, r, k) => Math.abs(a(c, r, k));
        case "sqrt": return (c, r, k) => Math.sqrt(a(c, r, k));
        case "not": return (c, r, k) => (a(c, r, k) ? 0 : 1);
        case "finite": return (c, r, k) => (Number.isFinite(a(c, r, k)) ? 1 : 0);
      }
    }
    // falls through (unreachable: the switch above is exhaustive)
    case "binary": {
      if (e.op !== "binary") throw new Error("unreachable");
      const a = compileExpr(e.a, env), b = compileExpr(e.b, env);
      switch (e.fn) {
        case "add": return (c, r, k) => a(c, r, k) + b(c, r, k);
        case "sub": return (c, r, k) => a(c, r, k) - b(c, r, k);
        case "mul": return (c, r, k) => a(c, r, k) * b(c, r, k);
        case "div": return (c, r, k) => a(c, r, k) / b(c, r, k);
        case "idiv": return (c, r, k) => Math.trunc(a(c, r, k) / b(c, r, k));
        case "mod": return (c, r, k) => a(c, r, k) % b(c, r, k);
        // NaN propagates like CUDA's fmaxf? No: fmaxf drops NaN. Kernels must not rely on either.
        case "max": return (c, r, k) => Math.max(a(c, r, k), b(c, r, k));
        case "min": return (c, r, k) => Math.min(a(c, r, k), b(c, r, k));
        case "lt": return (c, r, k) => (a(c, r, k) < b(c, r, k) ? 1 : 0);
        case "le": return (c, r, k) => (a(c, r, k) <= b(c, r, k) ? 1 : 0);
        case "gt": return (c, r, k) => (a(c, r, k) > b(c, r, k) ? 1 : 0);
        case "ge": return (c, r, k) => (a(c, r, k) >= b(c, r, k) ? 1 : 0);
        case "eq": return (c, r, k) => (a(c, r, k) === b(c, r, k) ? 1 : 0);
        case "ne": return (c, r, k) => (a(c, r, k) !== b(c, r, k) ? 1 : 0);
        case "and": return (c, r, k) => (a(c, r, k) && b(c, r, k) ? 1 : 0);
        case "or": return (c, r, k) => (a(c, r, k) || b(c, r, k) ? 1 : 0);
      }
    }
    // falls through (unreachable)
    case "pow": {
      if (e.op !== "pow") throw new Error("unreachable");
      const a = compileExpr(e.a, env), n = e.n;
      return (c, r, k) => {
        const x = a(c, r, k);
        let y = 1;
        for (let i = 0; i < n; i++) y *= x;
        return y;
      };
    }
    case "select": {
      const p = compileExpr(e.cond, env), a = compileExpr(e.a, env), b = compileExpr(e.b, env);
      return (c, r, k) => (p(c, r, k) ? a(c, r, k) : b(c, r, k));
    }
    case "cast": {
      const a = compileExpr(e.a, env);
      return e.to === "i32" ? (c, r, k) => Math.trunc(a(c, r, k)) : (c, r, k) => Math.fround(a(c, r, k));
    }
    case "any": {
      // the predicate at every element of the shape (rows x cols; a 1-D shape has col 0)
      const pred = compileExpr(e.pred, env), rows = e.shape[0]!, cols = e.shape[1] ?? 1;
      return (c) => {
        for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++) if (pred(c, r, k)) return 1;
        return 0;
      };
    }
  }
}

/** Where the elements of a load/store tile sit in the tensor: a base offset plus one stride per tile axis. */
interface Placement {
  base: number;
  inBounds: boolean; // every 'at' index is inside its dim
  starts: number[]; // per tile axis: first index along its tensor dim
  strides: number[];
  extents: number[]; // the tensor dim sizes of the tile axes
}

function compilePlacement(tensor: string, slices: readonly Slice[], env: Env): (c: Ctx) => Placement {
  const dims = env.dims.get(tensor)!;
  const strides = dims.map((_, i) => dims.slice(i + 1).reduce((a, b) => a * b, 1));
  const parts = slices.map((s) => (s.kind === "at" ? compileExpr(s.at, env) : compileExpr(s.start, env)));
  return (c) => {
    const p: Placement = { base: 0, inBounds: true, starts: [], strides: [], extents: [] };
    slices.forEach((s, i) => {
      const v = parts[i]!(c, 0, 0);
      if (s.kind === "at") {
        if (v < 0 || v >= dims[i]!) p.inBounds = false;
        p.base += v * strides[i]!;
      } else {
        p.starts.push(v);
        p.strides.push(strides[i]!);
        p.extents.push(dims[i]!);
        p.base += v * strides[i]!;
      }
    });
    return p;
  };
}

/** Visit each tile element (flat tile index, flat tensor index or -1 when out of bounds). */
function forEachPlaced(p: Placement, shape: readonly number[], f: (ti: number, gi: number) => void): void {
  const rows = shape[0]!, cols = shape[1] ?? 1;
  const s0 = p.strides[0]!, s1 = p.strides[1] ?? 0;
  for (let r = 0; r < rows; r++) {
    const i0 = p.starts[0]! + r;
    const rowOk = p.inBounds && i0 >= 0 && i0 < p.extents[0]!;
    for (let k = 0; k < cols; k++) {
      const i1 = shape.length === 2 ? p.starts[1]! + k : 0;
      const ok = rowOk && (shape.length === 1 || (i1 >= 0 && i1 < p.extents[1]!));
      f(r * cols + k, ok ? p.base + r * s0 + k * s1 : -1);
    }
  }
}

function compileStmt(s: Stmt, env: Env): Run {
  const K = env.kernel;
  const slot = (n: string): number => bufSlot(env, n);
  const shape = (n: string): readonly number[] => bufShape(env, n);
  const rnd = (n: string): ((x: number) => number) => rounder(K.buffers[slot(n)]!.type.dtype);
  switch (s.kind) {
    case "load": {
      const place = compilePlacement(s.tensor, s.slices, env);
      const src = env.tensors[s.tensor]!, d = slot(s.dst), sh = shape(s.dst), round = rnd(s.dst);
      return (c) => {
        const dst = c.bufs[d]!;
        forEachPlaced(place(c), sh, (ti, gi) => void (dst[ti] = gi < 0 ? 0 : round(src[gi]!)));
      };
    }
    case "store": {
      const place = compilePlacement(s.tensor, s.slices, env);
      const dst = env.tensors[s.tensor]!, sl = slot(s.src), sh = shape(s.src);
      const round = rounder(storable(K.tensors.find((t) => t.name === s.tensor)!.dtype));
      const mask = s.mask ? compileExpr(s.mask, env) : null, cols = sh[1] ?? 1;
      return (c) => {
        const src = c.bufs[sl]!;
        forEachPlaced(place(c), sh, (ti, gi) => {
          if (gi >= 0 && (mask === null || mask(c, Math.floor(ti / cols), ti % cols))) dst[gi] = round(src[ti]!);
        });
      };
    }
    case "map": {
      const f = compileExpr(s.expr, env), d = slot(s.dst), sh = shape(s.dst), round = rnd(s.dst);
      const rows = sh[0]!, cols = sh[1] ?? 1;
      return (c) => {
        const dst = c.bufs[d]!;
        for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++) dst[r * cols + k] = round(f(c, r, k));
      };
    }
    case "reduce": {
      const d = slot(s.dst), x = slot(s.src), sh = shape(s.src), round = rnd(s.dst);
      const rows = sh[0]!, cols = sh[1] ?? 1;
      const isSum = s.fn === "sum";
      const [outer, inner] = sh.length === 1 ? [1, rows] : s.axis === 1 ? [rows, cols] : [cols, rows];
      const at = sh.length === 1 ? (_o: number, i: number) => i : s.axis === 1 ? (o: number, i: number) => o * cols + i : (o: number, i: number) => i * cols + o;
      return (c) => {
        const src = c.bufs[x]!, dst = c.bufs[d]!;
        for (let o = 0; o < outer; o++) {
          let acc = isSum ? 0 : -Infinity;
          for (let i = 0; i < inner; i++) {
            const v = src[at(o, i)]!;
            acc = isSum ? acc + v : Number.isNaN(v) || Number.isNaN(acc) ? NaN : Math.max(acc, v);
          }
          dst[o] = round(acc);
        }
      };
    }
    case "scan": {
      const d = slot(s.dst), x = slot(s.src), sh = shape(s.src), round = rnd(s.dst);
      const rows = sh[0]!, cols = sh[1] ?? 1;
      const [outer, inner] = sh.length === 1 ? [1, rows] : s.axis === 1 ? [rows, cols] : [cols, rows];
      const at = sh.length === 1 ? (_o: number, i: number) => i : s.axis === 1 ? (o: number, i: number) => o * cols + i : (o: number, i: number) => i * cols + o;
      const rev = s.reverse;
      return (c) => {
        const src = c.bufs[x]!, dst = c.bufs[d]!;
        const tmp = new Float64Array(inner);
        for (let o = 0; o < outer; o++) {
          let acc = 0;
          for (let j = 0; j < inner; j++) {
            const i = rev ? inner - 1 - j : j;
            acc += src[at(o, i)]!;
            tmp[i] = acc;
          }
          for (let i = 0; i < inner; i++) dst[at(o, i)] = round(tmp[i]!);
        }
      };
    }
    case "mma": {
      const d = slot(s.dst), a = slot(s.a), b = slot(s.b);
      const [ar, ac] = shape(s.a), [br, bc] = shape(s.b);
      const M = s.transA ? ac! : ar!, Kd = s.transA ? ar! : ac!, N = s.transB ? br! : bc!;
      // element (i, k) of op(A) is A[i*sai + k*sak]; (k, j) of op(B) is B[k*sbk + j*sbj]
      const [sai, sak] = s.transA ? [1, ac!] : [ac!, 1];
      const [sbk, sbj] = s.transB ? [1, bc!] : [bc!, 1];
      const acc = s.accumulate;
      return (c) => {
        const A = c.bufs[a]!, B = c.bufs[b]!, D = c.bufs[d]!;
        for (let i = 0; i < M; i++)
          for (let j = 0; j < N; j++) {
            let sum = acc ? D[i * N + j]! : 0;
            for (let k = 0; k < Kd; k++) sum += A[i * sai + k * sak]! * B[k * sbk + j * sbj]!;
            D[i * N + j] = sum;
          }
      };
    }
    case "expand": {
      const d = slot(s.dst), x = slot(s.src), [rows, bd] = shape(s.dst), dIn = shape(s.src)[1]!;
      const t = symPowTable(dIn, s.deg), p = s.deg, off = compileExpr(s.offset, env), round = rnd(s.dst);
      return (c) => {
        const X = c.bufs[x]!, D = c.bufs[d]!, o = off(c, 0, 0);
        for (let r = 0; r < rows!; r++)
          for (let f = 0; f < bd!; f++) {
            const g = o + f;
            let v = 0;
            if (g >= 0 && g < t.size) {
              v = t.weight[g]!;
              for (let q = 0; q < p; q++) v *= X[r * dIn + t.index[g * p + q]!]!;
            }
            D[r * bd! + f] = round(v);
          }
      };
    }
    case "expandGrad": {
      const d = slot(s.dst), x = slot(s.x), g = slot(s.dphi), [rows, dIn] = shape(s.x), bd = shape(s.dphi)[1]!;
      const t = symPowTable(dIn!, s.deg), p = s.deg, off = compileExpr(s.offset, env), round = rnd(s.dst), acc = s.accumulate;
      return (c) => {
        const X = c.bufs[x]!, G = c.bufs[g]!, D = c.bufs[d]!, o = off(c, 0, 0);
        const grad = new Float64Array(dIn!);
        for (let r = 0; r < rows!; r++) {
          for (let a = 0; a < dIn!; a++) grad[a] = acc ? D[r * dIn! + a]! : 0;
          for (let f = 0; f < bd; f++) {
            const feat = o + f;
            if (feat < 0 || feat >= t.size) continue;
            const gw = G[r * bd + f]! * t.weight[feat]!;
            for (let q = 0; q < p; q++) {
              let prod = gw;
              for (let l = 0; l < p; l++) if (l !== q) prod *= X[r * dIn! + t.index[feat * p + l]!]!;
              grad[t.index[feat * p + q]!]! += prod;
            }
          }
          for (let a = 0; a < dIn!; a++) D[r * dIn! + a] = round(grad[a]!);
        }
      };
    }
    case "for": {
      const slotV = env.varSlots.size;
      env.varSlots.set(s.var, slotV);
      const start = compileExpr(s.start, env), end = compileExpr(s.end, env), step = s.step;
      const body = s.body.map((b) => compileStmt(b, env));
      return (c) => {
        const e = end(c, 0, 0);
        for (let v = start(c, 0, 0); v < e; v += step) {
          c.vars[slotV] = v;
          for (const b of body) b(c);
        }
      };
    }
    case "if": {
      const cond = compileExpr(s.cond, env);
      const body = s.body.map((b) => compileStmt(b, env));
      const orelse = (s.orelse ?? []).map((b) => compileStmt(b, env));
      return (c) => {
        for (const b of cond(c, 0, 0) ? body : orelse) b(c);
      };
    }
  }
}

function evalUniform(e: Expr, kernel: Kernel, params: Float64Array): number {
  const env: Env = { kernel, tensors: {}, dims: new Map(), varSlots: new Map() };
  return compileExpr(e, env)({ pid: new Int32Array(3), vars: new Float64Array(0), bufs: [], params }, 0, 0);
}

/** Evaluate each tensor's dims for the given params. */
/** The dtype of a tensor a tile is stored to (the validator keeps tables out of stores). */
function storable(t: TensorDType): DType {
  if (t === "i32") throw new Error("store to an i32 table (tables are read by fetch only)");
  return t;
}

export function tensorDims(k: Kernel, params: Readonly<Record<string, number>>): Map<string, number[]> {
  const pv = paramVector(k, params);
  return new Map(k.tensors.map((t) => [t.name, t.dims.map((d) => evalUniform(d, k, pv))]));
}

function paramVector(k: Kernel, params: Readonly<Record<string, number>>): Float64Array {
  return Float64Array.from(
    k.params.map((p) => {
      const v = params[p.name];
      if (v === undefined || !Number.isFinite(v)) throw new Error(`${k.name}: param '${p.name}' expected a finite number, received ${v}`);
      if (p.type === "i32" && !Number.isInteger(v)) throw new Error(`${k.name}: param '${p.name}' expected an integer, received ${v}`);
      return v;
    }),
  );
}

/** Run every program of the kernel's grid on the CPU. Outputs are written in place. */
export function interpret(k: Kernel, args: KernelArgs): void {
  assertValid(k);
  const params = paramVector(k, args.params);
  const dims = tensorDims(k, args.params);
  for (const t of k.tensors) {
    const a = args.tensors[t.name];
    const n = dims.get(t.name)!.reduce((x, y) => x * y, 1);
    if (!a) throw new Error(`${k.name}: tensor '${t.name}' missing`);
    if (a.length !== n) throw new Error(`${k.name}: tensor '${t.name}' has ${a.length} elements, expected ${n} for dims [${dims.get(t.name)}]`);
  }
  const env: Env = { kernel: k, tensors: args.tensors, dims, varSlots: new Map() };
  const body = k.body.map((s) => compileStmt(s, env));
  const grid = k.grid.map((g) => evalUniform(g, k, params));
  const bufs = k.buffers.map((b) => new Float32Array(b.type.shape.reduce((x, y) => x * y, 1)));
  const c: Ctx = { pid: new Int32Array(3), vars: new Float64Array(env.varSlots.size), bufs, params };
  for (let z = 0; z < grid[2]!; z++)
    for (let y = 0; y < grid[1]!; y++)
      for (let x = 0; x < grid[0]!; x++) {
        c.pid[0] = x;
        c.pid[1] = y;
        c.pid[2] = z;
        for (const b of bufs) b.fill(NaN);
        for (const s of body) s(c);
      }
}
