// Attention backward (README "Backward", attention part) for one chunk of one kv head and its g
// query heads. With P_ij = exp(w_ij - lse_i), w_ij = p log|s_ij| + lam_i - lam_j (j <= i),
//   W_ij = P_ij (dy_i.v_j - Dy_i),   ds'_ij = p W_ij / (q_i.k_j)  (= scale * ds_ij: scale cancels)
//   dq_i = sum_j ds'_ij k_j   dk_j = sum_i ds'_ij q_i   dv_j = sum_i P_ij dy_i
//   dlam_i += sum_j W_ij      dlam_j -= sum_i W_ij      (summed over the group's query heads)
// The chunk is cut into blocks of BT rows. For each block: pass A takes it as queries (dq and the
// row sums of W, keys streamed), pass B as keys (dk, dv and the column sums, queries streamed).
// Each (query block, key block) pair is thus scored twice, the price of having no atomics.
// attention_bwd_prep (below) runs first: the attention parts of Dy_i = dy_i . y_i and of the
// weights' total, in f32; query_state_bwd_dq completes them into the Dy and lse this kernel reads
// (README "Precision": the stored Y and the forward's lse are too coarse where dP_ij - Dy_i cancels).

import { f32, range, select, traceKernel, type Tile, type Val } from "../builder.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { chunkGates, firstFitting, rowBlocks, tileSizes, withinBudget } from "./common.ts";

const doc = "dQa, dKa, dVa, dlamA: the intra-chunk attention's gradients (flash-attention backward)";

/** Whether the (i, j) element of a (query block i0, key block j0) pair carries weight: on or below
 * the diagonal, on a row with some weight (lse > -inf). Products of the pairs that do not are
 * selected to 0, never multiplied by 0: a non-finite q_i, k_j or v_j must not reach them
 * (0 * inf = NaN; README "Non-finite inputs"). */
function attentionLive(lse: Tile, i0: Val, j0: Val, row: Val, col: Val): Val {
  return i0.add(row).ge(j0.add(col)).and(lse.at(row).ne(f32(-Infinity)));
}

/** P_ij = exp(p log|scale dot_ij| + lam[i0+i] - lam[j0+j] - lse_i) for the (i, j) element of a
 * (query block i0, key block j0) pair; 0 where the pair is not live. */
function attentionWeight(t: { dot: Tile; lam: Tile; lse: Tile }, scale: Val, p: number, i0: Val, j0: Val, row: Val, col: Val): Val {
  const w = t.dot.at(row, col).mul(scale).abs().log().mul(p).add(t.lam.at(i0.add(row))).sub(t.lam.at(j0.add(col)));
  return select(attentionLive(t.lse, i0, j0, row, col), w.sub(t.lse.at(row)).exp(), f32(0));
}

const candidates = (s: Spec): Schedule[] =>
  tileSizes(s.chunk, 64).map((blockT) => ({ numWarps: blockT >= 64 ? 8 : 4, blockD: 64, blockT, stages: 1 }));

export const attentionBwd: KernelDef = {
  name: "attention_bwd",
  schedule: (s) => firstFitting(s, candidates(s), attentionBwd.build),
  scheduleSpace: (s) =>
    withinBudget(s, tileSizes(s.chunk, 128).flatMap((blockT) => [4, 8].flatMap((numWarps) => [1, 2].map((stages) => ({ numWarps, blockD: 64, blockT, stages })))), attentionBwd.build),
  build: (spec, sch) =>
    traceKernel(attentionBwd.name, sch.numWarps, doc, (k) => {
      const { deg: p, d, e, chunk: c, dtype } = spec;
      const BT = sch.blockT;
      const b = k.param("b", "i32"), t = k.param("t", "i32"), hq = k.param("hq", "i32"), h = k.param("h", "i32");
      const n = k.param("n", "i32"), scale = k.param("scale", "f32");
      const Q = k.tensor("Q", dtype, [b, t, hq, d], "in");
      const K = k.tensor("K", dtype, [b, t, h, d], "in");
      const V = k.tensor("V", dtype, [b, t, h, e], "in");
      const logG = k.tensor("logG", "f32", [b, t, h], "in");
      const dY = k.tensor("dY", dtype, [b, t, hq, e], "in");
      const lse = k.tensor("lse", "f32", [b, t, hq], "in"); // lseB of query_state_bwd_dq
      const Dy = k.tensor("Dy", "f32", [b, t, hq], "in"); // dy_i . y_i
      const dQa = k.tensor("dQa", "f32", [b, t, hq, d], "out");
      const dKa = k.tensor("dKa", "f32", [b, t, h, d], "out");
      const dVa = k.tensor("dVa", "f32", [b, t, h, e], "out");
      const dlamA = k.tensor("dlamA", "f32", [b, t, h], "out");

      k.launch(n, h, b); // (chunk, kv head, batch)
      const m = k.programId(0), hk = k.programId(1), bi = k.programId(2);
      const g = hq.idiv(h), t0 = m.mul(c);
      const { lam } = chunkGates(k, logG, bi, hk, t0, c); // lam [c]
      const nb = rowBlocks(t, t0, c, BT); // blocks holding positions < t

      const qt = k.shared("q", [BT, d], dtype); // query block rows i0..i0+BT
      const dyt = k.shared("dy", [BT, e], dtype);
      const lseI = k.reg("lse_i", [BT], "f32");
      const DyI = k.reg("Dy_i", [BT], "f32");
      const kt = k.shared("k", [BT, d], dtype); // key block rows j0..j0+BT
      const vt = k.shared("v", [BT, e], dtype);
      const dot = k.reg("dot", [BT, BT], "f32"); // q_i . k_j
      const W = k.reg("W", [BT, BT], "f32"); // dP, then W
      const P = k.shared("P", [BT, BT], dtype); // mma operand of dv
      const ds = k.shared("ds", [BT, BT], dtype); // mma operand of dq, dk
      const accD = k.reg("acc_d", [BT, d], "f32"); // dq (pass A), dk (pass B)
      const accE = k.reg("acc_e", [BT, e], "f32"); // dv (pass B)
      const wsum = k.reg("wsum", [BT], "f32");
      const dlam = k.reg("dlam", [BT], "f32"); // minus the column sums, then + the row sums
      const dlamRow = k.reg("dlam_row", [BT], "f32");

      const loadQuery = (qh: Val, i0: Val): void => {
        const rows = range(t0.add(i0), BT);
        k.load(qt, Q, [bi, rows, qh, range(0, d)]); // [BT, d]; rows past t read 0
        k.load(dyt, dY, [bi, rows, qh, range(0, e)]); // [BT, e]
        k.load(lseI, lse, [bi, rows, qh]); // [BT]
        k.load(DyI, Dy, [bi, rows, qh]); // [BT]
      };
      const loadKey = (j0: Val): void => {
        k.load(kt, K, [bi, range(t0.add(j0), BT), hk, range(0, d)]); // [BT, d]
        k.load(vt, V, [bi, range(t0.add(j0), BT), hk, range(0, e)]); // [BT, e]
      };
      const weight = (i0: Val, j0: Val, row: Val, col: Val): Val => attentionWeight({ dot, lam, lse: lseI }, scale, p, i0, j0, row, col);
      const live = (i0: Val, j0: Val, row: Val, col: Val): Val => attentionLive(lseI, i0, j0, row, col);
      // Score one (query block i0, key block j0) pair: dot, W, ds (and P when asked).
      const score = (i0: Val, j0: Val, withP: boolean): void => {
        k.mma(dot, qt, kt, { transB: true }); // [BT, d] @ [d, BT]
        k.mma(W, dyt, vt, { transB: true }); // dP = [BT, e] @ [e, BT]
        k.map(W, ({ row, col }) => select(live(i0, j0, row, col), weight(i0, j0, row, col).mul(W.at(row, col).sub(DyI.at(row))), f32(0)));
        k.map(ds, ({ row, col }) => select(live(i0, j0, row, col).and(dot.at(row, col).ne(0)), W.at(row, col).mul(p).div(dot.at(row, col)), f32(0)));
        if (withP) k.map(P, ({ row, col }) => weight(i0, j0, row, col));
      };
      // ds K and ds^T Q on a diagonal pair: the masked ds are 0, but the mma would still multiply
      // them by a non-finite k_j (j > i) or q_i (i < j). So there the operand's non-finite entries
      // enter as 0; the live pairs of such a row or column carry NaN in ds already (its lse or dot).
      const finite = (dst: Tile, src: Tile): void => k.map(dst, ({ row, col }) => select(src.at(row, col).isFinite(), src.at(row, col), 0));
      const kFinite = k.shared("k_finite", [BT, d], dtype);
      const qFinite = k.shared("q_finite", [BT, d], dtype);

      k.for(0, nb, (blk) => {
        const r0 = blk.mul(BT);
        // Pass A: block blk as queries, keys from the chunk's start to the diagonal.
        k.fill(dlamRow, 0);
        k.for(0, g, (hh) => {
          const qh = hk.mul(g).add(hh);
          loadQuery(qh, r0);
          k.fill(accD, 0);
          k.for(0, blk.add(1), (jb) => {
            loadKey(jb.mul(BT));
            score(r0, jb.mul(BT), false);
            k.if(jb.lt(blk), () => k.mma(accD, ds, kt, { accumulate: true })); // dq += [BT, BT] @ [BT, d]
            k.if(jb.eq(blk), () => {
              finite(kFinite, kt);
              k.mma(accD, ds, kFinite, { accumulate: true });
            });
            k.reduce(wsum, W, "sum", 1); // [BT] row sums
            k.map(dlamRow, ({ row }) => dlamRow.at(row).add(wsum.at(row)));
          }, { stages: sch.stages });
          k.store(dQa, [bi, range(t0.add(r0), BT), qh, range(0, d)], accD);
        });
        // Pass B: block blk as keys, queries from the diagonal to the chunk's (valid) end.
        loadKey(r0);
        k.fill(accD, 0);
        k.fill(accE, 0);
        k.fill(dlam, 0);
        k.for(0, g, (hh) => {
          const qh = hk.mul(g).add(hh);
          k.for(blk, nb, (ib) => {
            loadQuery(qh, ib.mul(BT));
            score(ib.mul(BT), r0, true);
            k.mma(accE, P, dyt, { transA: true, accumulate: true }); // dv += [BT, BT]^T @ [BT, e]
            k.if(ib.gt(blk), () => k.mma(accD, ds, qt, { transA: true, accumulate: true })); // dk += [BT, BT]^T @ [BT, d]
            k.if(ib.eq(blk), () => {
              finite(qFinite, qt);
              k.mma(accD, ds, qFinite, { transA: true, accumulate: true });
            });
            k.reduce(wsum, W, "sum", 0); // [BT] column sums
            k.map(dlam, ({ row }) => dlam.at(row).sub(wsum.at(row)));
          }, { stages: sch.stages });
        });
        const rows = range(t0.add(r0), BT);
        k.store(dKa, [bi, rows, hk, range(0, d)], accD);
        k.store(dVa, [bi, rows, hk, range(0, e)], accE);
        k.map(dlam, ({ row }) => dlam.at(row).add(dlamRow.at(row)));
        k.store(dlamA, [bi, rows, hk], dlam);
      });
    }),
};

const prepDoc = "DyA = rowsum(P * dP), PA = rowsum(P) over the chunk's keys (the attention parts of dy . y and of 1), in f32";

export const attentionBwdPrep: KernelDef = {
  name: "attention_bwd_prep",
  schedule: (s) => firstFitting(s, candidates(s), attentionBwdPrep.build),
  scheduleSpace: (s) =>
    withinBudget(s, tileSizes(s.chunk, 128).flatMap((blockT) => [4, 8].map((numWarps) => ({ numWarps, blockD: 64, blockT, stages: 1 }))), attentionBwdPrep.build),
  build: (spec, sch) =>
    traceKernel(attentionBwdPrep.name, sch.numWarps, prepDoc, (k) => {
      const { deg: p, d, e, chunk: c, dtype } = spec;
      const BT = sch.blockT;
      const b = k.param("b", "i32"), t = k.param("t", "i32"), hq = k.param("hq", "i32"), h = k.param("h", "i32");
      const n = k.param("n", "i32"), scale = k.param("scale", "f32");
      const Q = k.tensor("Q", dtype, [b, t, hq, d], "in");
      const K = k.tensor("K", dtype, [b, t, h, d], "in");
      const V = k.tensor("V", dtype, [b, t, h, e], "in");
      const logG = k.tensor("logG", "f32", [b, t, h], "in");
      const dY = k.tensor("dY", dtype, [b, t, hq, e], "in");
      const lse = k.tensor("lse", "f32", [b, t, hq], "in");
      const DyA = k.tensor("DyA", "f32", [b, t, hq], "out");
      const PA = k.tensor("PA", "f32", [b, t, hq], "out");

      k.launch(n, hq, b); // (chunk, query head, batch)
      const m = k.programId(0), qh = k.programId(1), bi = k.programId(2);
      const hk = qh.idiv(hq.idiv(h)), t0 = m.mul(c);
      const { lam } = chunkGates(k, logG, bi, hk, t0, c); // lam [c]

      const qt = k.shared("q", [BT, d], dtype);
      const dyt = k.shared("dy", [BT, e], dtype);
      const lseI = k.reg("lse_i", [BT], "f32");
      const kt = k.shared("k", [BT, d], dtype);
      const vt = k.shared("v", [BT, e], dtype);
      const dot = k.reg("dot", [BT, BT], "f32");
      const pw = k.reg("p", [BT, BT], "f32"); // P
      const pdp = k.reg("p_dp", [BT, BT], "f32"); // dP, then P * dP
      const part = k.reg("part", [BT], "f32");
      const accDy = k.reg("acc_dy", [BT], "f32");
      const accP = k.reg("acc_p", [BT], "f32");

      k.for(0, rowBlocks(t, t0, c, BT), (ib) => {
        const i0 = ib.mul(BT), rows = range(t0.add(i0), BT);
        k.load(qt, Q, [bi, rows, qh, range(0, d)]); // [BT, d]; rows past t read 0
        k.load(dyt, dY, [bi, rows, qh, range(0, e)]); // [BT, e]
        k.load(lseI, lse, [bi, rows, qh]); // [BT]
        k.fill(accDy, 0);
        k.fill(accP, 0);
        k.for(0, ib.add(1), (jb) => {
          const j0 = jb.mul(BT);
          k.load(kt, K, [bi, range(t0.add(j0), BT), hk, range(0, d)]); // [BT, d]
          k.load(vt, V, [bi, range(t0.add(j0), BT), hk, range(0, e)]); // [BT, e]
          k.mma(dot, qt, kt, { transB: true }); // [BT, d] @ [d, BT]
          k.mma(pdp, dyt, vt, { transB: true }); // dP = [BT, e] @ [e, BT]
          k.map(pw, ({ row, col }) => attentionWeight({ dot, lam, lse: lseI }, scale, p, i0, j0, row, col));
          k.map(pdp, ({ row, col }) => select(attentionLive(lseI, i0, j0, row, col), pw.at(row, col).mul(pdp.at(row, col)), f32(0))); // not 0 * dP: v_j may be inf
          k.reduce(part, pdp, "sum", 1); // [BT]
          k.map(accDy, ({ row }) => accDy.at(row).add(part.at(row)));
          k.reduce(part, pw, "sum", 1); // [BT]
          k.map(accP, ({ row }) => accP.at(row).add(part.at(row)));
        }, { stages: sch.stages });
        k.store(DyA, [bi, rows, qh], accDy);
        k.store(PA, [bi, rows, qh], accP);
      });
    }),
};
