// Pieces of kernel code that several retention kernels share. Each is a trace-time helper: it
// emits DSL statements into the kernel being built, so its math stays in the DSL.

import { f32, i32, range, select, type KernelBuilder, type MapIndex, type TableRef, type TensorRef, type Tile, type Val } from "../builder.ts";
import { dtypeBytes, type DType } from "../dtype.ts";
import type { Kernel } from "../ir.ts";
import { clearBuiltKernels } from "../plan-types.ts";
import type { Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";

/** Load the log gates of one chunk and their in-chunk cumulative sum.
 * lam [c] = logG[t0] + ... + logG[t0+i] (positions past t read 0: a gate of 1);
 * G = lam[c-1], the whole chunk's log gate, as a scalar expression. */
export function chunkGates(k: KernelBuilder, logG: TensorRef, bi: Val, hi: Val, t0: Val, c: number): { lam: Tile; G: Val } {
  const g = k.reg("g", [c], "f32");
  const lam = k.reg("lam", [c], "f32");
  k.load(g, logG, [bi, range(t0, c), hi]);
  k.cumsum(lam, g, 0);
  return { lam, G: lam.at(c - 1) };
}

/** How many blocks of `bd` features cover D, and D rounded up to a whole block. */
export function featureBlocks(spec: Spec, bd: number): { count: number; padded: number } {
  const D = stateFeatures(spec);
  const count = Math.ceil(D / bd);
  return { count, padded: count * bd };
}

/** The first row of the query block a program of a causal walk owns, the last block first: program
 * x of ceil(t / B) takes block ceil(t / B) - 1 - x. The GPU starts programs in the order of x, and
 * the last query blocks walk the most key blocks, so the longest programs start first and the
 * short ones fill the tail (flash attention's causal order). */
export function lastFirst(k: KernelBuilder, t: Val, B: number): Val {
  return t.add(B - 1).idiv(B).sub(1).sub(k.programId(0)).mul(B);
}

/** Whether tile `t` holds a non-finite value: a block vote, for the condition of `k.if`. */
export const holdsNonFinite = (k: KernelBuilder, t: Tile): Val => k.any(t, ({ row, col }) => t.at(row, col).isFinite().not());

/** Tile `t` with its non-finite entries as 0, in place. */
export const zeroNonFiniteIn = (k: KernelBuilder, t: Tile): void => k.map(t, ({ row, col }) => select(t.at(row, col).isFinite(), t.at(row, col), 0));

/** exp(x) that is 0 where x is -inf minus -inf (a row with no weight at all), instead of NaN. */
export function safeExpDiff(x: Val, m: Val): Val {
  return select(m.eq(f32(-Infinity)), f32(0), x.sub(m).exp());
}

/** Bytes of every tile a kernel declares (shared and registers together): the budget a schedule must fit. */
export function tileBytes(k: Kernel): number {
  return k.buffers.reduce((sum, b) => sum + b.type.shape.reduce((x, y) => x * y, 1) * dtypeBytes(b.type.dtype), 0);
}

/** Tile bytes per program that a default schedule must stay under (an H200 SM has 228 KB of shared memory). */
export const TILE_BUDGET = 160 * 1024;

/** The first candidate whose kernel fits `TILE_BUDGET` (candidates go from largest to smallest tiles); the last one otherwise. */
export function firstFitting(spec: Spec, candidates: readonly Schedule[], build: (s: Spec, sch: Schedule) => Kernel): Schedule {
  return candidates.find((sch) => tileBytes(build(spec, sch)) <= TILE_BUDGET) ?? candidates[candidates.length - 1]!;
}

/** Powers of two from `hi` down to 16 (tile edges that suit the m16n8k16 mma), at most `cap`. */
export function tileSizes(hi: number, cap: number = hi): number[] {
  const out: number[] = [];
  for (let s = Math.min(hi, cap); s >= 16; s /= 2) out.push(s);
  return out;
}

/** Blocks of `bt` rows of the chunk starting at t0 that hold positions < t (the rest are all padding):
 * min(c / bt, ceil((t - t0) / bt)), for loop bounds that skip the tail of the last chunk. */
export function rowBlocks(t: Val, t0: Val, c: number, bt: number): Val {
  return t.sub(t0).add(bt - 1).idiv(bt).min(c / bt);
}

/** scale * exp((lam - lse) / p): the factor that makes q'' = q * it satisfy phi(q'') = phi(q') / l
 * (q' = scale q exp(lam/p), l = exp(lse)); 0 for a row with no weight (lse = -inf). */
export function normalisedQueryFactor(scale: Val, lam: Val, lse: Val, p: number): Val {
  return select(lse.eq(f32(-Infinity)), f32(0), scale.mul(lam.sub(lse).div(p).exp()));
}

/** What a state block (f32 in memory) is divided by when rounded to an mma operand of each dtype:
 * f16 tops out at 65504 and an ungated state grows with t (inputs of size 10 at p = 4 reach 1e6
 * within 300 tokens), so f16 operands hold S / 256; f32 and bf16 have the range of f32. A power of
 * two, so the scaling itself is exact; the consumer multiplies its mma result back
 * (`splitOperand(...).split(1 / sigma)`, then the result times sigma). */
export const STATE_OPERAND_SCALE: Readonly<Record<DType, number>> = { f32: 1, bf16: 1, f16: 256 };

/** The places where a product with the recurrent state takes an f16/bf16 mma operand that may be
 * carried as a hi + lo pair (`splitOperand`, `dataOperand`), named `kernel.operand`. */
export const STATE_SITES = [
  "update_state.phi", // forward: phi(k') in phi(k')^T V
  "update_state.v", // forward: V there (f16 data as a bf16 operand at p >= 4, updateStateOperandDtype)
  "query_state.phi", // forward: phi(q') in phi(q')^T Sin
  "query_state.S", // forward: the Sin block
  "query_state_bwd_dq.S", // backward: Sin in dy Sin^T (it feeds Dy and dq); factored (p = 2): St_a in T_a = dy St_a^T
  "query_state_bwd_dq.dy", // backward: dy there (f16 data as a bf16 operand; exact as a pair)
  "query_state_bwd_ds.phi", // backward: phi(q'') in phi(q'')^T dy (dSin); at p = 2 (factored, q exact) U_a = (f dy)(f q_:a) and -(f Dy)(f q)
  "query_state_bwd_ds.dy", // backward: dy there (as above; p >= 4 only, the factored form has no dy operand)
  "update_state_bwd.phi", // backward: phi(k') in phi(k') U (dv); factored (p = 2): K in P_a = K Ut_a (f16 data as a bf16 operand)
  "update_state_bwd.U", // backward: U = d(dS) in phi(k') U and v U^T; factored: Ut_a in P_a and T_a = V Ut_a^T
  "update_state_bwd.v", // backward: v in v U^T, factored: V in T_a (f16 data as a bf16 operand)
] as const;
export type StateSite = (typeof STATE_SITES)[number];

/** Sites that take a single rounding of their operand to the dtype (one mma instead of two or
 * three), per degree and dtype; every other f16/bf16 site is split. Chosen by measurement
 * (`bench/precision.ts`, table in README "Precision of the state path"): a site is listed only where
 * the worst error seen with it single stays within about a third of SPEC.md's tolerance. */
const SINGLE_ROUNDING: Readonly<Record<string, readonly StateSite[]>> = {
  // bf16, p = 2: the backward's Sin in dq and both operands of update_state_bwd. Single roundings
  // of phi(q'') in dSin or of phi(q') in the forward moved dlogG to 4-5e-3 each, and with them the
  // gradients reached 6.2-6.8e-3 (a third of the tolerance); phi(k') in the forward (through Sin:
  // 8.5e-3 in dQ at d = 64) and S in query_state (7.0e-3 in dQ) stay split too.
  p2_bf16: ["query_state_bwd_dq.S", "update_state_bwd.phi", "update_state_bwd.U"],
  // f16, p = 2 (held to 3e-3; its state operands in the backward are bf16): dy in dq and phi(k')
  // in dv (together: dQ 1.3e-3, dV 1.8e-3, the rest as with every split). Single
  // f16 phi(k') in the forward gave Y 1.0e-3, a third of the tolerance exactly: it stays split, as
  // do the sites that moved dlogG (2-4e-3) or Y (1e-3 and more).
  p2_f16: ["query_state_bwd_dq.dy", "update_state_bwd.phi"],
  // p = 4: single roundings broke the margin (bf16: 6.8e-3 to 5e-2 at the forward's sites, 6.4e-3
  // to 1.3e-2 at the backward's; f16 likewise), so everything stays split. The one f16 site under
  // its margin, dy in dq (dQ 1.7e-3 of 2e-3, one draw), was too close to take unverified.
};

let policyOverride: ((spec: Spec, site: StateSite) => boolean) | null = null;

/** Whether `site` carries its operand as a hi + lo pair for `spec` (always false in f32, where the
 * operand is the f32 tile itself). */
export function stateSplit(spec: Spec, site: StateSite): boolean {
  if (spec.dtype === "f32") return false;
  if (policyOverride) return policyOverride(spec, site);
  return !(SINGLE_ROUNDING[`p${spec.deg}_${spec.dtype}`] ?? []).includes(site);
}

/** For measurements only (bench/precision.ts): replace the table (null restores it). Kernels are
 * traced once per (kernel, spec, schedule) (`plan-types.ts`, `stepKernel`), so that cache is cleared. */
export function overrideStateSplit(policy: ((spec: Spec, site: StateSite) => boolean) | null): void {
  policyOverride = policy;
  clearBuiltKernels();
}

/** Where an operand sits, for the split policy; without one an operand is always split. */
export interface StateOperandSite {
  readonly spec: Spec;
  readonly site: StateSite;
}

/** An mma operand of a low-precision dtype carried as two tiles, hi = round(x) and lo = round(x - hi),
 * so that a product of two such operands (`mmaSplit`: hi.hi + lo.hi + hi.lo) is accurate to about
 * the square of the dtype's rounding error. The state path needs it where phi(q')^T S and its
 * gradients sum terms of both signs whose total can be far smaller than the terms (a query nearly
 * orthogonal to the recent keys at p = 4), and single roundings of phi and S in f16/bf16 leave
 * errors of that row's order. Where `stateSplit` says so the operand is one tile, hi = round(x),
 * lo = null. In f32 the source tile is the operand itself. */
export interface SplitOperand {
  /** The f32 source: write it, then call `split`. */
  readonly x: Tile;
  readonly hi: Tile;
  readonly lo: Tile | null;
  /** hi, lo of x * factor (factor a power of two: exact). */
  split(factor?: number): void;
}

export function splitOperand(k: KernelBuilder, name: string, shape: readonly [number, number], dtype: DType, where?: StateOperandSite): SplitOperand {
  const x = k.shared(`${name}_f32`, shape, "f32");
  if (dtype === "f32")
    return { x, hi: x, lo: null, split: (factor = 1) => void (factor !== 1 && k.map(x, ({ row, col }) => x.at(row, col).mul(factor))) };
  const pair = where === undefined || stateSplit(where.spec, where.site);
  const hi = k.shared(`${name}_hi`, shape, dtype);
  const lo = pair ? k.shared(`${name}_lo`, shape, dtype) : null;
  return {
    x,
    hi,
    lo,
    split: (factor = 1) => {
      k.map(hi, ({ row, col }) => x.at(row, col).mul(factor));
      if (lo) k.map(lo, ({ row, col }) => x.at(row, col).mul(factor).sub(hi.at(row, col))); // exact in f32, then rounded
    },
  };
}

/** dst (+)= op(a) @ op(b) from split operands (a plain tile counts as exact): up to three mmas,
 * hi.hi + lo.hi + hi.lo (the lo.lo term is below the rounding). */
/** An mma operand: one tile, or a hi + lo pair (lo null where one rounding is kept). */
export type Operand = Tile | { readonly hi: Tile; readonly lo: Tile | null };

export function mmaSplit(
  k: KernelBuilder,
  dst: Tile,
  a: Operand,
  b: Operand,
  opts: { transA?: boolean; transB?: boolean; accumulate?: boolean } = {},
): void {
  const [aHi, aLo] = "hi" in a ? [a.hi, a.lo] : [a, null];
  const [bHi, bLo] = "hi" in b ? [b.hi, b.lo] : [b, null];
  const t = { transA: opts.transA ?? false, transB: opts.transB ?? false };
  k.mma(dst, aHi, bHi, { ...t, accumulate: opts.accumulate ?? false });
  if (aLo) k.mma(dst, aLo, bHi, { ...t, accumulate: true });
  if (bLo) k.mma(dst, aHi, bLo, { ...t, accumulate: true });
}

/** An mma operand of `dtype` computed element-wise from other tiles (no f32 staging tile): hi = round(x), and
 * with `pair`, lo = round(x - hi), as splitOperand; in f32 the one tile. */
export function computedOperand(k: KernelBuilder, name: string, shape: readonly [number, number], dtype: DType, pair: boolean, x: (ix: MapIndex) => Val): Operand {
  const hi = k.shared(`${name}_hi`, shape, dtype);
  k.map(hi, x);
  if (dtype === "f32" || !pair) return hi;
  const lo = k.shared(`${name}_lo`, shape, dtype);
  k.map(lo, (ix) => x(ix).sub(hi.at(ix.row, ix.col)));
  return { hi, lo };
}

/** Feature index of (a, b), a <= b, in the degree-2 state: a d - a (a - 1) / 2 + b - a. */
export const pairFeature = (d: number, a: Val, b: Val): Val => a.mul(d).sub(a.mul(a.sub(1)).idiv(2)).add(b).sub(a);

/** w_ab of phi at p = 2 for feature (a, b), a <= b: 1 on the diagonal, sqrt 2 above it. */
export const pairWeight = (a: Val, b: Val): Val => select(b.eq(a), 1, Math.SQRT2);

/** The schedules of `space` whose kernel fits `TILE_BUDGET`: the ones an autotuner may try. */
export function withinBudget(spec: Spec, space: readonly Schedule[], build: (s: Spec, sch: Schedule) => Kernel): Schedule[] {
  return space.filter((sch) => tileBytes(build(spec, sch)) <= TILE_BUDGET);
}

/** The dtype of the backward's state-side mma operands: the spec's, except bf16 for f16. Those
 * operands span far more than f16's exponent range (phi(q'') = phi(q')/l: at p = 4 with inputs x10,
 * 99% of it lies below f16's smallest normal; the state's gradient likewise), while bf16 has f32's
 * range, and as a hi + lo pair it carries 16 bits, more than f16's 11. */
export function stateOperandDtype(dtype: DType): DType {
  return dtype === "f16" ? "bf16" : dtype;
}

/** The dtype of update_state's mma operands (phi(k') and V): the spec's, except bf16 for f16 at
 * p >= 4, where phi(k') leaves f16's range for inputs x10 (|k| = 35: 35^4 = 1.5e6 > 65504, an inf
 * hi and a NaN lo; bench/precision.ts, normal inputs x10). At p = 2 that needs |k| > 215, and f16
 * operands are more precise. */
export function updateStateOperandDtype(spec: Spec): DType {
  return spec.deg >= 4 ? stateOperandDtype(spec.dtype) : spec.dtype;
}

/** A tile of `dtype` data as an mma operand of dtype `to`: the plain tile when they agree, else an
 * f32 copy split into a hi + lo pair of `to` (f16 data is exact as a bf16 pair), or rounded once to
 * `to` where `stateSplit` says so. */
export interface DataOperand {
  readonly op: Tile | SplitOperand;
  load(src: TensorRef, index: Parameters<KernelBuilder["load"]>[2]): void;
}

export function dataOperand(k: KernelBuilder, name: string, shape: readonly [number, number], dtype: DType, to: DType, where?: StateOperandSite): DataOperand {
  if (to === dtype) {
    const t = k.shared(name, shape, dtype);
    return { op: t, load: (src, index) => k.load(t, src, index) };
  }
  const s = splitOperand(k, name, shape, to, where);
  return {
    op: s,
    load: (src, index) => {
      k.load(s.x, src, index);
      s.split();
    },
  };
}

/** The sizes of a scan over chunks (discounted_cumsum[_bwd]): dense, b sequences of n chunks each;
 * `varlen`, ns packed sequences whose chunks lie back to back in [1, h, n] (b = 1), sequence s on
 * chunks [seqChunk[s], seqChunk[s + 1]) (README "Variable-length sequences"). Declares the params
 * (b, t, h, n; ns and the table when varlen) in that order. */
export function scanSizes(k: KernelBuilder, varlen: boolean): { b: Val; t: Val; h: Val; n: Val; ns: Val; seqChunk: TableRef | null } {
  const b = varlen ? i32(1) : k.param("b", "i32");
  const t = k.param("t", "i32"), h = k.param("h", "i32"), n = k.param("n", "i32");
  const ns = varlen ? k.param("ns", "i32") : b; // sequences: one state each
  return { b, t, h, n, ns, seqChunk: varlen ? k.table("seqChunk", ns.add(1)) : null };
}

/** A scan's launch, (feature block, sequence x head), and what a program walks: its sequence si
 * (the index of the per-sequence states), kv head hi, the batch index bi of the chunk-indexed
 * tensors, and its chunks [first, end). */
export function scanProgram(k: KernelBuilder, z: ReturnType<typeof scanSizes>, featureBlockCount: number): { fb: Val; si: Val; hi: Val; bi: Val; first: Val; end: Val } {
  k.launch(featureBlockCount, z.ns.mul(z.h));
  const fb = k.programId(0), si = k.programId(1).idiv(z.h), hi = k.programId(1).mod(z.h);
  const [first, end] = z.seqChunk ? [z.seqChunk.at(si), z.seqChunk.at(si.add(1))] : [i32(0), z.n];
  return { fb, si, hi, bi: z.seqChunk ? i32(0) : si, first, end };
}
