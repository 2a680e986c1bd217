// The lowered IR (LIR): the DSL IR (`dsl/ir.ts`) plus the decisions the lowering makes, still plain
// readonly data. Passes (`lower/*.ts`) are functions LKernel -> LKernel; `render-cuda.ts` prints the
// result. What LIR adds to the DSL:
//   - every tile has a home: shared memory (with a row pitch, an offset, pipeline copies) or
//     register fragments in the m16n8 accumulator layout of a warp tiling;
//   - every mma has an implementation (tensor cores, FMA in fragment layout, plain FMA);
//   - loads say whether they may go through cp.async, and async waits are statements;
//   - barriers are statements, so a pass can remove the ones that separate independent work;
//   - pipelined loops bind a stage copy of their streamed tiles per iteration;
//   - a reduce of a frag tile names its cross-warp scratch (see the reduce statement);
//   - an mma group computes mma operands in registers, straight into the fragment layout, from the
//     maps that define them (lower/fuse-operands.ts): those tiles have no bytes anywhere.

import type { DType, TensorDType } from "../dsl/dtype.ts";
import { exprChildren, type BufferDecl, type Expr, type Kernel, type ParamDecl, type Slice, type Stmt, type TensorDecl, type TileType } from "../dsl/ir.ts";

/** How the output of an mma is split over the warps of a block: units of 16 rows x (8 * nt)
 * columns, unit u going to warp u % warps; lane l of a warp owns the m16n8 accumulator elements
 * (prt::frag_row(l, e), prt::frag_col(l, e)) of each 16x8 tile. */
export interface WarpTiling {
  readonly m: number;
  readonly n: number;
  /** 16x8 tiles per unit along n (1, 2 or 4). */
  readonly nt: number;
  readonly warps: number;
}

export const tilingUnits = (t: WarpTiling): number => (t.m / 16) * (t.n / (8 * t.nt));
/** Units a warp owns at most (fragment slots per thread). */
export const tilingSlots = (t: WarpTiling): number => Math.ceil(tilingUnits(t) / t.warps);
/** The partials a reduce of a frag tile combines across warps: the units sharing each row block
 * (axis 1, a row reduce) or each column range (axis 0, a column reduce). */
export const reducePartials = (t: WarpTiling, axis: 0 | 1): number => (axis === 1 ? t.n / (8 * t.nt) : t.m / 16);
export const sameTiling = (a: WarpTiling, b: WarpTiling): boolean => a.m === b.m && a.n === b.n && a.nt === b.nt && a.warps === b.warps;

export type Home = "smem" | "frag" | "inline";

/** The GPU target a lowering is for. sm_80: mma.sync m16n8k16 fed by ldmatrix, cp.async. sm_90a
 * adds wgmma (warpgroup mma, B and optionally A from shared memory through descriptors, in a
 * swizzled layout). Kernels and the passes above the target's choices do not know which it is. */
export type Target = "sm_80" | "sm_90a";
export const TARGETS: readonly Target[] = ["sm_80", "sm_90a"];

/** Bytes of the swizzle pattern of a shared tile (wgmma's 32B, 64B, 128B modes): the tile's 16-bit
 * columns are cut into panels of `swizzle / 2` columns, each stored as rows of `swizzle` bytes, and
 * the 16-byte chunks of row r are permuted by XOR with r's place in its group of 8 rows
 * (render-expr.ts, smemElem; templates/prt_tile.cuh, prt::swz). 0: plain rows of `pitch` elements. */
export type Swizzle = 0 | 32 | 64 | 128;

export interface LBuffer {
  readonly name: string;
  readonly type: TileType;
  /** smem: dynamic shared memory; frag: registers, owned per the warp tiling: a 2-D tile as the
   * m16n8 accumulator elements each thread owns (f32, or f16/bf16 packed two per register, an mma
   * A operand from registers), a 1-D tile as the rows each thread owns (a row vector: two rows
   * per slot, g and g + 8); inline: an mma operand computed per fragment element inside the mma
   * group that consumes it. */
  readonly home: Home;
  /** Elements between consecutive rows in shared memory (= columns unless padded against bank conflicts). */
  readonly pitch: number;
  /** The swizzled layout of a 16-bit tile wgmma reads (see Swizzle); 0 otherwise. */
  readonly swizzle: Swizzle;
  /** Copies of the tile in shared memory (> 1 for tiles a pipelined loop streams into). */
  readonly copies: number;
  /** Byte offset into the block's dynamic shared memory; null until planned. */
  readonly offset: number | null;
  /** The fragment ownership of a frag tile; null for smem. */
  readonly tiling: WarpTiling | null;
}

export type MmaImpl =
  /** mma.sync m16n8k16 (f16/bf16 operands from shared memory via ldmatrix, or A from a packed
   * frag tile), fp32 accumulators. */
  | { readonly kind: "tc"; readonly tiling: WarpTiling }
  /** wgmma m64nNk16 (sm_90a): each warpgroup owns 64 consecutive rows per slot and all n columns
   * (a row-block tiling, rules.rowBlockTiling), B from shared memory through a descriptor, A from
   * shared memory or from a packed frag tile; the accumulator fragments are the m16n8 layout. */
  | {
      readonly kind: "wgmma";
      readonly tiling: WarpTiling;
      /** The statement issues and commits but does not wait: a later wgmmaWait does
       * (lower/defer-wgmma-waits.ts). Only for a frag accumulator. */
      readonly deferred?: boolean;
    }
  /** fp32 FMA loops computing exactly the elements each thread owns in the tiling (f32 operands). */
  | { readonly kind: "fmaFrag"; readonly tiling: WarpTiling }
  /** fp32 FMA, one output element per thread-step (any shape). */
  | { readonly kind: "fma" };

export type LMap = Extract<Stmt, { kind: "map" }>;

export interface LMma {
  readonly kind: "mma";
  readonly dst: string;
  readonly a: string;
  readonly b: string;
  readonly transA: boolean;
  readonly transB: boolean;
  readonly accumulate: boolean;
  readonly impl: MmaImpl | null;
}

export type LStmt =
  | Exclude<Stmt, { kind: "for" } | { kind: "if" } | { kind: "mma" } | { kind: "load" } | { kind: "reduce" }>
  | {
      readonly kind: "reduce";
      readonly dst: string;
      readonly src: string;
      readonly fn: "sum" | "max";
      readonly axis: 0 | 1;
      /** A reduce of a frag tile runs in registers: each thread combines the elements of its rows
       * (axis 1) or columns (axis 0), then the lanes sharing them by shuffles (the 4 lanes of a
       * quad hold one row of a 16x8 tile, the 8 quads one column pair); when several units of the
       * tiling share rows (n / (8 nt) > 1) or columns (m / 16 > 1), each unit's partials go to this
       * shared f32 [partials, rows or columns] scratch and, after one barrier, are combined in unit
       * order (fixed, so sums are deterministic). null: smem source, or nothing to combine. */
      readonly scratch: string | null;
    }
  | {
      readonly kind: "load";
      readonly dst: string;
      readonly tensor: string;
      readonly slices: readonly Slice[];
      /** scalar: guarded element copy; async: cp.async 16 B chunks when aligned at run time (else scalar). */
      readonly mode: "scalar" | "async";
      /** For pipelined loads: the stage copy of dst to fill (null: the copy bound now). */
      readonly stage: Expr | null;
    }
  | LMma
  /** Tensor-core mmas into one accumulator (same tiling, k and operand side of the computed tiles)
   * whose operands on one side are computed in registers: per k-step each warp evaluates the
   * `operands` maps (in order; a later one may read an earlier one at its own element) at exactly
   * the fragment elements it feeds to the mmas, rounds them to the operand dtype and packs them into
   * mma registers. The maps' destinations are `inline` tiles used nowhere else. In the DSL's terms
   * it is the maps followed by the mmas (toDsl). */
  | { readonly kind: "mmaGroup"; readonly operands: readonly LMap[]; readonly mmas: readonly LMma[] }
  /** cp.async.commit_group: close the group of async copies this thread issued. */
  | { readonly kind: "asyncCommit" }
  /** cp.async.wait_group: wait until at most `pending` groups are in flight. */
  | { readonly kind: "asyncWait"; readonly pending: number }
  /** wgmma.wait_group 0: the deferred wgmmas before it are complete, their accumulators
   * (`tiles`, frag tiles) readable (lower/defer-wgmma-waits.ts). */
  | { readonly kind: "wgmmaWait"; readonly tiles: readonly string[] }
  /** __syncthreads(). */
  | { readonly kind: "barrier" }
  /** Point a multi-copy tile at copy `stage` (mod its copies) for the statements that follow. */
  | { readonly kind: "bindStage"; readonly buf: string; readonly stage: Expr }
  | {
      readonly kind: "for";
      readonly var: string;
      readonly start: Expr;
      readonly end: Expr;
      readonly step: number;
      readonly stages: number;
      readonly body: readonly LStmt[];
    }
  /** orelse: the statements when cond does not hold (none: nothing). */
  | { readonly kind: "if"; readonly cond: Expr; readonly body: readonly LStmt[]; readonly orelse?: readonly LStmt[] };

export interface LKernel {
  readonly name: string;
  readonly doc: string;
  readonly target: Target;
  readonly params: readonly ParamDecl[];
  readonly tensors: readonly TensorDecl[];
  readonly buffers: readonly LBuffer[];
  readonly grid: readonly [Expr, Expr, Expr];
  readonly numWarps: number;
  readonly body: readonly LStmt[];
  /** Dynamic shared memory bytes per block; null until planned. */
  readonly smemBytes: number | null;
}

export const threadsOf = (k: { numWarps: number }): number => 32 * k.numWarps;

/** The LIR of a DSL kernel before any decision: every tile in shared memory, unpadded. */
export function fromDsl(k: Kernel, target: Target = "sm_80"): LKernel {
  const buf = (b: BufferDecl): LBuffer => ({
    name: b.name,
    type: b.type,
    home: "smem",
    pitch: b.type.shape[1] ?? b.type.shape[0]!,
    swizzle: 0,
    copies: 1,
    offset: null,
    tiling: null,
  });
  const stmt = (s: Stmt): LStmt => {
    switch (s.kind) {
      case "load":
        return { ...s, mode: "scalar", stage: null };
      case "mma":
        return { ...s, impl: null };
      case "reduce":
        return { ...s, scratch: null };
      case "for":
        return { ...s, body: s.body.map(stmt) };
      case "if": {
        const { orelse, ...rest } = s;
        return { ...rest, body: s.body.map(stmt), ...(orelse ? { orelse: orelse.map(stmt) } : {}) };
      }
      default:
        return s;
    }
  };
  return {
    name: k.name,
    doc: k.doc,
    target,
    params: k.params,
    tensors: k.tensors,
    buffers: k.buffers.map(buf),
    grid: k.grid,
    numWarps: k.numWarps,
    body: k.body.map(stmt),
    smemBytes: null,
  };
}

// ---- helpers every pass uses -------------------------------------------------------------------

export function bufferOf(k: LKernel, name: string): LBuffer {
  const b = k.buffers.find((x) => x.name === name);
  if (!b) throw new Error(`${k.name}: no tile named '${name}'`);
  return b;
}

/** A loop or branch with `list` applied to each of its statement lists (body, and a branch's
 * orelse); any other statement as it is. */
export function withBodies(s: LStmt, list: (body: readonly LStmt[]) => LStmt[]): LStmt {
  if (s.kind === "for") return { ...s, body: list(s.body) };
  if (s.kind === "if") return { ...s, body: list(s.body), ...(s.orelse ? { orelse: list(s.orelse) } : {}) };
  return s;
}

/** The statement lists nested in a loop or branch (a branch: body, then orelse). */
export const bodiesOf = (s: LStmt): readonly (readonly LStmt[])[] =>
  s.kind === "for" ? [s.body] : s.kind === "if" ? (s.orelse ? [s.body, s.orelse] : [s.body]) : [];

/** Rebuild a statement list bottom-up: `f` sees each statement after its children were mapped and
 * returns its replacement(s). */
export function mapStmts(body: readonly LStmt[], f: (s: LStmt) => LStmt | readonly LStmt[]): LStmt[] {
  const out: LStmt[] = [];
  for (const s of body) {
    const inner: LStmt = withBodies(s, (b) => mapStmts(b, f));
    const r = f(inner);
    if (Array.isArray(r)) out.push(...(r as readonly LStmt[]));
    else out.push(r as LStmt);
  }
  return out;
}

/** Visit every statement (pre-order), with the loops enclosing it. */
export function walkStmts(body: readonly LStmt[], f: (s: LStmt, loops: readonly LStmt[]) => void, loops: readonly LStmt[] = []): void {
  for (const s of body) {
    f(s, loops);
    for (const b of bodiesOf(s)) walkStmts(b, f, [...loops, s]);
  }
}

/** Tiles read by an expression. */
export function exprReads(e: Expr, out: Set<string> = new Set()): Set<string> {
  if (e.op === "read") out.add(e.buf);
  for (const c of exprChildren(e)) exprReads(c, out);
  return out;
}

/** Every read node of an expression (to check how a tile is indexed). */
export function readNodes(e: Expr, out: Extract<Expr, { op: "read" }>[] = []): Extract<Expr, { op: "read" }>[] {
  if (e.op === "read") out.push(e);
  for (const c of exprChildren(e)) readNodes(c, out);
  return out;
}

function slicesReads(ss: readonly Slice[], out: Set<string>): void {
  for (const s of ss) exprReads(s.kind === "at" ? s.at : s.start, out);
}

/** The tiles a (non-compound) statement reads and writes; for/if report their header's reads only. */
/** The shared-memory bytes [start, end) a tile occupies, all its copies; null for a tile outside
 * shared memory or not yet planned. */
export function smemRegion(k: LKernel, name: string): readonly [number, number] | null {
  const b = bufferOf(k, name);
  if (b.home !== "smem" || b.offset === null) return null;
  return [b.offset, b.offset + b.copies * smemTileBytes(b)];
}

/** Whether two regions (smemRegion) share a byte. */
export const regionsOverlap = (a: readonly [number, number] | null, b: readonly [number, number] | null): boolean =>
  a !== null && b !== null && a[0] < b[1] && b[0] < a[1];

export function stmtAccess(s: LStmt): { reads: Set<string>; writes: Set<string> } {
  const reads = new Set<string>(), writes = new Set<string>();
  switch (s.kind) {
    case "load":
      slicesReads(s.slices, reads);
      if (s.stage) exprReads(s.stage, reads);
      writes.add(s.dst);
      break;
    case "store":
      slicesReads(s.slices, reads);
      reads.add(s.src);
      break;
    case "map":
      exprReads(s.expr, reads);
      writes.add(s.dst);
      break;
    case "reduce":
      reads.add(s.src);
      writes.add(s.dst);
      if (s.scratch !== null) {
        reads.add(s.scratch);
        writes.add(s.scratch);
      }
      break;
    case "scan":
      reads.add(s.src);
      writes.add(s.dst);
      break;
    case "mma":
      reads.add(s.a);
      reads.add(s.b);
      if (s.accumulate) reads.add(s.dst);
      writes.add(s.dst);
      break;
    case "mmaGroup": {
      // the computed tiles live and die inside the statement: neither read nor written outside it
      const inner = new Set(s.operands.map((m) => m.dst));
      for (const m of s.operands) for (const r of exprReads(m.expr)) if (!inner.has(r)) reads.add(r);
      for (const m of s.mmas) {
        for (const x of [m.a, m.b]) if (!inner.has(x)) reads.add(x);
        if (m.accumulate) reads.add(m.dst);
        writes.add(m.dst);
      }
      break;
    }
    case "expand":
      exprReads(s.offset, reads);
      reads.add(s.src);
      writes.add(s.dst);
      break;
    case "expandGrad":
      exprReads(s.offset, reads);
      reads.add(s.x);
      reads.add(s.dphi);
      if (s.accumulate) reads.add(s.dst);
      writes.add(s.dst);
      break;
    case "for":
      exprReads(s.start, reads);
      exprReads(s.end, reads);
      break;
    case "if":
      exprReads(s.cond, reads);
      break;
    case "bindStage":
      exprReads(s.stage, reads);
      break;
    case "asyncCommit":
    case "asyncWait":
    case "wgmmaWait":
    case "barrier":
      break;
  }
  return { reads, writes };
}

/** The frag tiles a map reads (at [row, col], the validator checks): a map into a shared tile that
 * reads some runs over their fragment elements (every thread writes the elements it owns). */
export function mapFragReads(k: LKernel, s: Extract<LStmt, { kind: "map" }>): string[] {
  return [...exprReads(s.expr)].filter((n) => bufferOf(k, n).home === "frag");
}

/** Element type names in CUDA C++. */
export function cType(t: TensorDType): string {
  return t === "f32" ? "float" : t === "i32" ? "int" : t === "f16" ? "__half" : "__nv_bfloat16";
}

/** A frag tile of one dimension: the rows of its tiling each thread owns. */
export const isRowVector = (b: LBuffer): boolean => b.home === "frag" && b.type.shape.length === 1;
/** A frag tile of f16/bf16 elements, two per 32-bit register (element pairs 0-1 and 2-3 of each 16x8 tile). */
export const isPackedFrag = (b: LBuffer): boolean => b.home === "frag" && b.type.shape.length === 2 && b.type.dtype !== "f32";

/** Bytes of one copy of a shared tile (rows x pitch). */
export function smemTileBytes(b: LBuffer): number {
  const rows = b.type.shape.length === 2 ? b.type.shape[0]! : 1;
  return rows * b.pitch * (b.type.dtype === "f32" ? 4 : 2);
}
