// The degree-2 state as outer products per feature group (README "The factored form at p = 2"),
// the one body of update_state's factored form (forward: dS_m, dZ_m) and query_state_bwd_ds's
// (backward: dSin_m, dZin_m). For the rows r of one chunk, A [c, d] (exact in its dtype), X [c, BE]
// (f32) and per row a weight z_r and a factor s_r (1 when not given), it writes for every a <= b
// (phi_(a,b)(x) = w_ab x_a x_b)
//   S_(a, b) = w_ab sum_r A_rb (s_r A_ra X_r,:) = w_ab (A^T U_a)_b,   U_a = diag(s A_:a) X   [c, BE]
//   Z_(a, b) = w_ab sum_r A_rb (s_r A_ra z_r)   = w_ab (A^T diag(s z) A)_ab
// into rows pairFeature(a, b) of the state tensors (the features of one a are contiguous),
// summed over the sources when there are several (the query heads of a kv head's group):
//   update_state:        A = K, X = V with xScale g, z = g, s = 1    (g_j = exp(G_m - lam_j): phi(k') = g phi(k))
//   query_state_bwd_ds:  A = Q, X = f dY, z = -f Dy, s = f  (f the normalised query factor:
//                        phi(q'') = f^2 phi(q); f^2 alone overflows f32 where |q| |k| < 2e-19)
// A is the mma's A operand as loaded (f16 data under bf16 operands: a bf16 hi + lo pair, exact);
// U_a and s z A are rounded to the operand dtype, as hi + lo pairs where `pair` says so.
//
// The a's run in blocks of 16. Block I uses A's columns [16 I, W) (W = d rounded up to 16: whole
// k-steps, 16-aligned for ldmatrix), so its mmas give rows b in [16 I, W) for each a of the block;
// the store leaves out rows b < a (they belong to the group before) and b >= d. Z is formed only
// where `withZ` holds (the programs of the first column block), one [W - 16 I, 16] mma per block.
//
// Sources: one, a trace-time 1 (straight-line code), or a count known at run time. One group's
// accumulator [W - 16 I, BE] is live at a time (sixteen would not fit in registers), so with several
// sources each a walks all of them and reloads their rows (the chunk's [c, d + e] per head, from L2);
// with a count of 1 at run time X and z are loaded once and A once per block, as with one source.
//
// U_a = X * (x s A_:a) per element, with the block's 16 columns x_r s_r A_r,a formed once per
// load of A (ga, transposed): the mma group that computes U_a in registers (codegen
// fuse-operands) then reads X at its own element (from X's mma fragments when X is a 16-bit data
// tile, as V in update_state) and one ga value per row of its k-step.

import { i32, range, type KernelBuilder, type Scalar, type TensorRef, type Tile, type Val } from "../builder.ts";
import { dtypeBytes, type DType } from "../dtype.ts";
import { computedOperand, mmaSplit, pairFeature, pairWeight, type Operand } from "./common.ts";

export interface PairOuter {
  readonly d: number;
  /** A's tile name (the generated code's), "k" or "q". */
  readonly name: string;
  /** A's dtype in memory, and the dtype of the mma's operands. */
  readonly aDtype: DType;
  readonly operandDtype: DType;
  /** U_a and s z A as hi + lo pairs (stateSplit). */
  readonly pair: boolean;
  /** [c, BE], the rows' right-hand side (for the current source), times xScale(r) when given. */
  readonly X: Tile;
  /** A row factor of X folded into the per-a column (so X can stay a 16-bit data tile). */
  readonly xScale?: (row: Val) => Val;
  /** The row weight of Z, and the factor s on A's values in U_a and in Z's operand (for the current source). */
  readonly z: (row: Val) => Val;
  readonly rowScale?: (row: Val) => Val;
  readonly sources: 1 | Val;
  /** Load source s's X and z (before its A); called once when there is one source at run time. */
  readonly loadRows?: (s: Val) => void;
  /** Load A[:, c0 : c0 + w] of source s into `tile` [c, w], columns past d and rows past t as 0. */
  readonly loadA: (tile: Tile, c0: number, s: Val) => void;
  /** Whether this program writes Z. */
  readonly withZ: Val;
  readonly S: TensorRef; // [..., D, e]
  readonly Z: TensorRef; // [..., D]
  /** The state tensors' leading indices (batch, head, chunk), and this program's first column of S. */
  readonly at: readonly Scalar[];
  readonly col0: Val;
}

export function pairOuter(k: KernelBuilder, o: PairOuter): void {
  const { d, X, z, withZ } = o;
  const [c, BE] = [X.rows, X.cols];
  const W = Math.ceil(d / 16) * 16;
  const count = o.sources === 1 ? null : o.sources; // null: one source, traced straight
  if (count === null) o.loadRows?.(i32(0));
  else k.if(count.eq(1), () => o.loadRows?.(i32(0)));

  for (let I = 0; I < W / 16; I++) {
    const c0 = 16 * I, w = W - c0; // this block's a in [c0, c0 + 16); rows b in [c0, W)
    const raw = k.shared(`${o.name}${I}`, [c, w], o.aDtype); // A[:, c0:W]
    const aOp: Operand = o.aDtype === o.operandDtype ? raw : { hi: k.shared(`${o.name}${I}_hi`, [c, w], o.operandDtype), lo: k.shared(`${o.name}${I}_lo`, [c, w], o.operandDtype) };
    const aVal = (row: Val, col: Scalar): Val => (o.rowScale ? raw.at(row, col).mul(o.rowScale(row)) : raw.at(row, col)); // s_r A_r,col
    // the block's 16 columns of A with every row factor, transposed (a row per a: a warp reads one
    // a at the rows of its k-step), so that U_a = X * ga[a - c0, :]^T is one product per element
    const ga = k.shared(`${o.name}g${I}`, [16, c], "f32");
    const loadA = (s: Val): void => {
      o.loadA(raw, c0, s);
      k.map(ga, ({ row, col }) => (o.xScale ? aVal(col, row).mul(o.xScale(col)) : aVal(col, row)));
      if (!("hi" in aOp)) return;
      k.map(aOp.hi, ({ row, col }) => raw.at(row, col));
      k.map(aOp.lo!, ({ row, col }) => raw.at(row, col).sub(aOp.hi.at(row, col))); // exact: f16 in a bf16 pair
    };
    /** Each source once: `body(s, accumulate)`; with several, summed after `zero`. */
    const overSources = (zero: () => void, body: (s: Val, accumulate: boolean) => void): void => {
      if (count === null) return body(i32(0), false);
      zero();
      k.for(0, count, (s) => body(s, true));
    };
    const several = (f: () => void): void => { if (count !== null) k.if(count.gt(1), f); }; // with one at run time, the rows stay loaded

    // Z: zz = A[:, c0:]^T (z A[:, c0:c0+16]) [w, 16], column a - c0 for a (and this block's A, loaded)
    const zz = k.reg(`${o.name}z${o.name}${I}`, [w, 16], "f32");
    overSources(() => k.if(withZ, () => k.fill(zz, 0)), (s, accumulate) => {
      several(() => o.loadRows?.(s));
      loadA(s);
      k.if(withZ, () => {
        const za = computedOperand(k, `z${o.name}${I}`, [c, 16], o.operandDtype, o.pair, ({ row, col }) => aVal(row, col).mul(z(row)));
        mmaSplit(k, zz, aOp, za, { transA: true, accumulate }); // [w, c] @ [c, 16]
      });
    });
    const acc = k.reg(`s${I}`, [w, BE], "f32");
    const zrow = k.reg(`z${I}`, [w], "f32");
    const ownRows = (a: Val) => ({ row }: { row: Val }): Val => row.add(c0).ge(a).and(row.add(c0).lt(d)); // rows b in [a, d)
    k.for(c0, Math.min(c0 + 16, d), (a) => {
      overSources(() => k.fill(acc, 0), (s, accumulate) => {
        several(() => { o.loadRows?.(s); loadA(s); });
        const u = computedOperand(k, `u${I}`, [c, BE], o.operandDtype, o.pair, ({ row, col }) => X.at(row, col).mul(ga.at(a.sub(c0), row))); // U_a
        mmaSplit(k, acc, aOp, u, { transA: true, accumulate }); // [w, c] @ [c, BE]: (A^T U_a)_b for b in [c0, W)
      });
      k.map(acc, ({ row, col }) => acc.at(row, col).mul(pairWeight(a, row.add(c0))));
      const at = pairFeature(d, a, a).sub(a).add(c0); // feature of (a, c0)
      k.store(o.S, [...o.at, range(at, w), range(o.col0, BE)], acc, { where: ownRows(a) });
      k.if(withZ, () => {
        k.map(zrow, ({ row }) => zz.at(row, a.sub(c0)).mul(pairWeight(a, row.add(c0))));
        k.store(o.Z, [...o.at, range(at, w)], zrow, { where: ownRows(a) });
      });
    });
  }
}

/** Shared bytes of pairOuter's own tiles at their peak (block 0, the widest): A (and its pair), U_a's
 * and z A's operands, each row padded by 16 bytes as codegen pads mma operands. */
export function pairOuterBytes(o: { d: number; rows: number; cols: number; aDtype: DType; operandDtype: DType; pair: boolean }): number {
  const W = Math.ceil(o.d / 16) * 16, c = o.rows;
  const row = (n: number, dt: DType): number => (n + 16 / dtypeBytes(dt)) * dtypeBytes(dt);
  const pairs = o.pair && o.operandDtype !== "f32" ? 2 : 1;
  const a = c * row(W, o.aDtype) + (o.aDtype === o.operandDtype ? 0 : 2 * c * row(W, o.operandDtype));
  return a + pairs * c * (row(o.cols, o.operandDtype) + row(16, o.operandDtype)) + 16 * c * 4;
}
