// Query state backward (README "Backward", query state part), two kernels. Both use the query
// with the normaliser folded in by homogeneity: q''_i = q_i * f_i, f_i = scale exp((lam_i - lse_i)/p),
// so that phi(q''_i) = phi(q'_i) / l_i (and f_i = 0 on a weightless row, lse = -inf).
//   query_state_bwd_dq: completes the row totals of attention_bwd_prep with the state part, which
//                       the forward saved (query_state's yS_i = phi(q''_i)^T Sin_m, wS_i = phi(q''_i).Zin_m):
//                         rho_i = PA_i + wS_i,   Dy_i = (DyA_i + dy_i.yS_i) / rho_i,
//                       and from them lseB_i = lse_i + log rho_i (the normaliser under which the
//                       backward's weights sum to 1); Dy_i being known before the feature loop,
//                         dq_i = f_i expandGrad(q''_i, Sin_m dy_i - Dy_i Zin_m) / rho_i
//                       is one expandGrad per feature block (expanded form), or at p = 2 one mma
//                       per feature group against the raw q (factored form, buildDqFactored), and
//                         dlamQ_i = dq'_i . q'_i / p = (dy_i.yS_i - Dy_i wS_i) / rho_i.
//   query_state_bwd_ds: dSin_m = sum_i phi(q''_i) dy_i^T, dZin_m = -sum_i phi(q''_i) Dy_i over the
//                       group's query heads, with q'' from lseB. At p = 2 factored (buildDsFactored,
//                       pair-outer.ts): phi(q'') = f^2 phi(q), so with q exact as the mma's A operand
//                         dSin_(a,b) = w_ab (Q^T U_a)_b,  U_a = diag(f^2 q_:a) dY     dZin_(a,b) = -w_ab (Q^T diag(f^2 Dy) Q)_ab
//                       (update_state's form with K -> Q, g V -> f^2 dY, g -> -f^2 Dy), nothing
//                       expanded; at p >= 4 phi(q'') is expanded block by block (buildDsExpanded).

import { f32, max, min, range, select, traceKernel, type KernelBuilder, type Tile, type Val } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { chunkGates, computedOperand, featureBlocks, firstFitting, dataOperand, mmaSplit, normalisedQueryFactor, pairFeature, pairWeight, rowBlocks, splitOperand, stateOperandDtype, stateSplit, tileBytes, TILE_BUDGET, tileSizes, withinBudget, type StateSite } from "./common.ts";
import { pairOuter, pairOuterBytes } from "./pair-outer.ts";

const candidates = (s: Spec): Schedule[] =>
  tileSizes(s.chunk, 64).flatMap((blockT) => [64, 32].map((blockD) => ({ numWarps: 4, blockD, blockT, stages: 1 })));

const space = (s: Spec): Schedule[] =>
  tileSizes(s.chunk, 128).flatMap((blockT) =>
    [32, 64, 128].flatMap((blockD) => [4, 8].map((numWarps) => ({ numWarps, blockD, blockT, stages: 1 }))),
  );

const dqDoc = "Dy, lseB (the normaliser the backward's weights sum to 1 under), and dQs, dlamQ: the gradient through phi(q')^T [Sin, Zin]";

/** query_state_bwd_dq's arguments, the same in both forms (the plan binds them by name). */
function declareDq(k: KernelBuilder, spec: Spec) {
  const { d, e, dtype } = spec;
  const D = stateFeatures(spec);
  const b = k.param("b", "i32"), t = k.param("t", "i32"), hq = k.param("hq", "i32"), h = k.param("h", "i32");
  const n = k.param("n", "i32"), scale = k.param("scale", "f32");
  const nfb = k.param("nfb", "i32"); // expanded: feature blocks to visit (all, or 0 when there is no state); factored: > 0 when there is a state
  return {
    b, t, hq, h, n, scale, nfb,
    Q: k.tensor("Q", dtype, [b, t, hq, d], "in"),
    logG: k.tensor("logG", "f32", [b, t, h], "in"),
    Sin: k.tensor("Sin", "f32", [b, h, n, D, e], "in"),
    Zin: k.tensor("Zin", "f32", [b, h, n, D], "in"),
    dY: k.tensor("dY", dtype, [b, t, hq, e], "in"),
    lse: k.tensor("lse", "f32", [b, t, hq], "in"),
    yS: k.tensor("yS", "f32", [b, t, hq, e], "in"),
    wS: k.tensor("wS", "f32", [b, t, hq], "in"),
    DyA: k.tensor("DyA", "f32", [b, t, hq], "in"),
    PA: k.tensor("PA", "f32", [b, t, hq], "in"),
    Dy: k.tensor("Dy", "f32", [b, t, hq], "out"),
    lseB: k.tensor("lseB", "f32", [b, t, hq], "out"),
    dQs: k.tensor("dQs", "f32", [b, t, hq, d], "out"),
    dlamQ: k.tensor("dlamQ", "f32", [b, t, hq], "out"),
  };
}
type DqArgs = ReturnType<typeof declareDq>;

/** The row totals of rows [t0 + r0, +BT) (header): rho = PA + wS, Dy = (DyA + dy.yS) / rho (stored),
 * and dy.yS in `dyS`. Tiles are the caller's, so that a loop over row blocks reuses them. */
interface DqRows {
  readonly lseI: Tile; readonly dyy: Tile; readonly rho: Tile; readonly dyS: Tile; readonly pS: Tile;
}
function dqRowTiles(k: KernelBuilder, BT: number, e: number) {
  return {
    dyF: k.shared("dy_row", [BT, e], "f32"), // dy in f32, for the row dot with yS
    ySt: k.shared("y_s", [BT, e], "f32"),
    lseI: k.reg("lse_i", [BT], "f32"),
    dyy: k.reg("dy_y", [BT], "f32"), // DyA, then Dy
    rho: k.reg("rho", [BT], "f32"), // PA, then + wS: the weights' total
    dyS: k.reg("dy_s", [BT], "f32"), // dy . yS, then dlamQ
    pS: k.reg("p_s", [BT], "f32"), // wS
  };
}
function dqRowTotals(k: KernelBuilder, a: DqArgs, x: ReturnType<typeof dqRowTiles>, at: { bi: Val; qh: Val; rows: ReturnType<typeof range> }, e: number): DqRows {
  const { bi, qh, rows } = at;
  k.load(x.dyF, a.dY, [bi, rows, qh, range(0, e)]); // [BT, e]
  k.load(x.ySt, a.yS, [bi, rows, qh, range(0, e)]); // [BT, e]
  k.load(x.lseI, a.lse, [bi, rows, qh]); // [BT]
  k.load(x.dyy, a.DyA, [bi, rows, qh]); // [BT]
  k.load(x.rho, a.PA, [bi, rows, qh]); // [BT]
  k.load(x.pS, a.wS, [bi, rows, qh]); // [BT]
  k.map(x.ySt, ({ row, col }) => x.ySt.at(row, col).mul(x.dyF.at(row, col)));
  k.reduce(x.dyS, x.ySt, "sum", 1); // dy . yS [BT]
  k.map(x.rho, ({ row }) => x.rho.at(row).add(x.pS.at(row)));
  k.map(x.dyy, ({ row }) => select(x.rho.at(row).ne(0), x.dyy.at(row).add(x.dyS.at(row)).div(x.rho.at(row)), f32(0)));
  k.store(a.Dy, [bi, rows, qh], x.dyy);
  return x;
}

/** dlamQ = (dy.yS - Dy wS) / rho and lseB = lse + log rho, after dQs. */
function dqRowOutputs(k: KernelBuilder, a: DqArgs, x: DqRows, at: { bi: Val; qh: Val; rows: ReturnType<typeof range> }): void {
  const { bi, qh, rows } = at;
  k.map(x.dyS, ({ row }) => select(x.rho.at(row).ne(0), x.dyS.at(row).sub(x.dyy.at(row).mul(x.pS.at(row))).div(x.rho.at(row)), f32(0)));
  k.store(a.dlamQ, [bi, rows, qh], x.dyS);
  k.map(x.lseI, ({ row }) => x.lseI.at(row).add(x.rho.at(row).log())); // -inf where rho = 0
  k.store(a.lseB, [bi, rows, qh], x.lseI);
}

/** Expanded form (any p). One program per (chunk, query head, batch), rows in blocks of BT, the
 * state in `nfb` blocks of BD features: dq = f expandGrad(q'', Sin dy - Dy Zin) / rho. */
function buildDqExpanded(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("query_state_bwd_dq", sch.numWarps, dqDoc, (k) => {
    const { deg: p, d, e, chunk: c, dtype } = spec;
    const BT = sch.blockT, BD = sch.blockD;
    const a = declareDq(k, spec);
    k.launch(a.n, a.hq, a.b); // (chunk, query head, batch)
    const m = k.programId(0), qh = k.programId(1), bi = k.programId(2);
    const hk = qh.idiv(a.hq.idiv(a.h)), t0 = m.mul(c);
    const { lam } = chunkGates(k, a.logG, bi, hk, t0, c); // lam [c]

    const qt = k.shared("q", [BT, d], dtype);
    const sd = stateOperandDtype(dtype); // the state-side mma operands' dtype
    const dyt = dataOperand(k, "dy", [BT, e], dtype, sd, { spec, site: "query_state_bwd_dq.dy" });
    const x = dqRowTiles(k, BT, e);
    const qn = k.shared("q_norm", [BT, d], "f32"); // q''
    const sb = splitOperand(k, "S", [BD, e], sd, { spec, site: "query_state_bwd_dq.S" }); // Sin dy: hi + lo (README "Precision", stateSplit)
    const zb = k.reg("Z_blk", [BD], "f32");
    const sdy = k.reg("S_dy", [BT, BD], "f32"); // Sin dy, then - Dy Zin: dphi(q'') rho
    const gS = k.reg("grad_s", [BT, d], "f32"); // sum expandGrad(q'', Sin dy - Dy Zin), then dq

    k.for(0, rowBlocks(a.t, t0, c, BT), (rb) => {
      const r0 = rb.mul(BT), at = { bi, qh, rows: range(t0.add(r0), BT) };
      const f = (row: Val): Val => normalisedQueryFactor(a.scale, lam.at(r0.add(row)), x.lseI.at(row), p);
      k.load(qt, a.Q, [bi, at.rows, qh, range(0, d)]); // [BT, d]; rows past t read 0
      dyt.load(a.dY, [bi, at.rows, qh, range(0, e)]); // [BT, e]
      const r = dqRowTotals(k, a, x, at, e);
      k.map(qn, ({ row, col }) => qt.at(row, col).mul(f(row)));
      k.fill(gS, 0);
      k.for(0, a.nfb, (fb) => {
        const f0 = fb.mul(BD);
        k.load(sb.x, a.Sin, [bi, hk, m, range(f0, BD), range(0, e)]); // [BD, e]; past D read 0
        k.load(zb, a.Zin, [bi, hk, m, range(f0, BD)]); // [BD]
        sb.split();
        mmaSplit(k, sdy, dyt.op, sb, { transB: true }); // [BT, e] @ [e, BD]
        k.map(sdy, ({ row, col }) => sdy.at(row, col).sub(r.dyy.at(row).mul(zb.at(col))));
        k.expandGrad(gS, qn, sdy, p, f0, { accumulate: true }); // [BT, d]
      }, { stages: sch.stages });
      k.map(gS, ({ row, col }) => select(r.rho.at(row).ne(0), gS.at(row, col).mul(f(row)).div(r.rho.at(row)), f32(0))); // dq
      k.store(a.dQs, [bi, at.rows, qh, range(0, d)], gS);
      dqRowOutputs(k, a, r, at);
    });
  });
}

/** p = 2, factored form (README "The factored form at p = 2"). One program per (block of BT rows,
 * chunk, query head, batch). expandGrad is homogeneous of degree 1 at p = 2, so
 * dq = f^2 expandGrad(q, dphi) / rho with dphi = Sin dy - Dy Zin, and with St_a [W, e], rows b:
 * w_ab Sin_(a,b) (0 for b < a or b >= d),
 *   T_a = dy St_a^T [BT, W]       dq_x = f^2 / rho (sum_{a <= x} q_a T_a[:, x] + [x = a] sum_b q_b T_a[:, b] - Dy (q Zs)_x)
 * Zs [W, W] the symmetric Zin (2 z_aa on the diagonal, sqrt 2 z_(a,b) off it). dy enters the mma
 * exact in its dtype (for f16 a bf16 operand, site query_state_bwd_dq.dy); St_a is rounded (site
 * query_state_bwd_dq.S); Zs is always a pair (one mma per program), against q exact. */
function buildDqFactored(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("query_state_bwd_dq", sch.numWarps, dqDoc, (k) => {
    const { d, e, chunk: c, dtype } = spec;
    if (spec.deg !== 2) throw new Error(`query_state_bwd_dq: the factored form is for deg 2, got ${spec.deg}`);
    const BT = sch.blockT;
    if (c % BT !== 0) throw new Error(`query_state_bwd_dq: blockT ${BT} must divide the chunk ${c}`);
    const W = Math.ceil(d / 16) * 16; // q's columns, padded to whole k-steps of 16 (0 past d)
    const D = stateFeatures(spec);
    const a = declareDq(k, spec);
    const blocks = c / BT;
    k.launch(a.n.mul(blocks), a.hq, a.b); // (chunk * row block, query head, batch): chunks on x, CUDA's 2^31 - 1 axis
    const m = k.programId(0).idiv(blocks), r0 = k.programId(0).mod(blocks).mul(BT), qh = k.programId(1), bi = k.programId(2);
    const hk = qh.idiv(a.hq.idiv(a.h)), t0 = m.mul(c);
    const at = { bi, qh, rows: range(t0.add(r0), BT) };

    k.if(t0.add(r0).lt(a.t), () => { // blocks wholly past t have nothing to do
      const { lam } = chunkGates(k, a.logG, bi, hk, t0, c); // lam [c]
      const sd = stateOperandDtype(dtype); // St_a, Zs: bf16 for f16 (README "Backward")
      const dyt = dataOperand(k, "dy", [BT, e], dtype, sd, { spec, site: "query_state_bwd_dq.dy" });
      dyt.load(a.dY, [bi, at.rows, qh, range(0, e)]); // [BT, e]
      const qt = k.shared("q", [BT, W], dtype); // rows past t and columns past d read 0
      k.load(qt, a.Q, [bi, at.rows, qh, range(0, W)]);
      const r = dqRowTotals(k, a, dqRowTiles(k, BT, e), at, e);
      const gS = k.reg("grad_s", [BT, W], "f32"); // expandGrad(q, Sin dy - Dy Zin), then dq
      k.fill(gS, 0);
      k.if(a.nfb.gt(0), () => {
        // - Dy q Zs: the Zin part
        const zt = k.shared("z", [D], "f32");
        k.load(zt, a.Zin, [bi, hk, m, range(0, D)]);
        const zs = computedOperand(k, "zs", [W, W], sd, true, ({ row, col }) => {
          const z = zt.at(pairFeature(d, min(row, col).min(d - 1), max(row, col).min(d - 1)));
          return select(row.lt(d).and(col.lt(d)), select(row.eq(col), z.mul(2), z.mul(Math.SQRT2)), 0);
        });
        const qop = sd === dtype ? qt : computedOperand(k, "q_pair", [BT, W], sd, true, ({ row, col }) => qt.at(row, col)); // f16: exact as a bf16 pair
        const qz = k.shared("qzs", [BT, W], "f32");
        mmaSplit(k, qz, qop, zs); // q Zs [BT, W]
        k.map(gS, ({ row, col }) => qz.at(row, col).mul(r.dyy.at(row)).neg());
        // the Sin part, a by a, over all W columns b (T_a's columns b < a are 0: St_a's rows are
        // masked there), so that T_a has gS's shape and tiling and stays in registers (a T_a of
        // the group's W - c0 columns only would be read at shifted columns: through shared memory)
        const pair = stateSplit(spec, "query_state_bwd_dq.S");
        const rs = k.shared("r", [BT], "f32"); // r_a = sum_b q_b T_a[:, b]
        const sRaw = k.shared("s_f32", [W, e], "f32"); // rows b in [0, W) of group a, as stored
        const tA = k.reg("t_a", [BT, W], "f32"); // T_a, then T_a * q (row-summed)
        k.for(0, d, (ai) => {
          // rows b = 0 .. W-1 of group a: features pairFeature(a, b); rows b < a (earlier groups) and b >= d are masked
          k.load(sRaw, a.Sin, [bi, hk, m, range(pairFeature(d, ai, ai).sub(ai), W), range(0, e)]);
          const st = computedOperand(k, "s", [W, e], sd, pair, ({ row, col }) =>
            select(row.lt(ai).or(row.ge(d)), 0, sRaw.at(row, col).mul(pairWeight(ai, row)))); // St_a [W, e]
          mmaSplit(k, tA, dyt.op, st, { transB: true }); // [BT, e] @ [e, W]
          k.map(gS, ({ row, col }) => gS.at(row, col).add(qt.at(row, ai).mul(tA.at(row, col))));
          k.map(tA, ({ row, col }) => tA.at(row, col).mul(qt.at(row, col)));
          k.reduce(rs, tA, "sum", 1); // [BT]
          k.map(gS, ({ row, col }) => select(col.eq(ai), gS.at(row, col).add(rs.at(row)), gS.at(row, col)));
        }, { stages: sch.stages });
      });
      const f = (row: Val): Val => normalisedQueryFactor(a.scale, lam.at(r0.add(row)), r.lseI.at(row), 2);
      k.map(gS, ({ row, col }) => select(r.rho.at(row).ne(0), gS.at(row, col).mul(f(row).mul(f(row))).div(r.rho.at(row)), f32(0))); // dq
      k.store(a.dQs, [bi, at.rows, qh, range(0, W)], gS); // columns past d skipped
      dqRowOutputs(k, a, r, at);
    });
  });
}

/** Shared bytes of the factored dq at its peak (its phases reuse bytes): the whole program's
 * tiles plus the largest of the row totals, the Zin part and the blocks of a's. */
function dqFactoredPeakBytes(spec: Spec, sch: Schedule): number {
  const { d, e, chunk: c, dtype } = spec;
  const W = Math.ceil(d / 16) * 16, BT = sch.blockT, el = dtype === "f32" ? 4 : 2, exact = dtype !== "f16";
  const row = (cols: number): number => (cols + 16 / el) * el; // an mma operand's row, padded by 16 bytes
  const pairs = (site: StateSite): number => (dtype !== "f32" && stateSplit(spec, site) ? 2 : 1);
  const dy = exact ? BT * row(e) : BT * e * 4 + pairs("query_state_bwd_dq.dy") * BT * row(e);
  const whole = 4 * c + 9 * BT * 4 + dy + BT * row(W);
  const rows = 2 * BT * e * 4;
  const zPhase = stateFeatures(spec) * 4 + (dtype === "f32" ? 1 : 2) * W * row(W) + BT * W * 4 + (exact ? 0 : 2 * BT * row(W));
  const block = sch.stages * W * e * 4 + pairs("query_state_bwd_dq.S") * W * row(e);
  return whole + Math.max(rows, zPhase, block);
}

/** p = 2: row blocks of the whole chunk down to 16 (at most 128), 4 warps up to 8192 outputs per
 * accumulator (its two [BT, W] accumulators then take 128 registers per thread; 8 warps were
 * slower at every block size in the 2026-12-03 sweep), the next a's rows of Sin prefetched where
 * they fit. */
const dqFactoredSpace = (s: Spec): Schedule[] =>
  tileSizes(s.chunk, 128).flatMap((blockT) => [2, 1].flatMap((stages) => [4, 8].map((numWarps) => ({ numWarps, blockD: 0, blockT, stages }))));
const dqFactoredFits = (s: Spec, sch: Schedule): boolean => dqFactoredPeakBytes(s, sch) <= TILE_BUDGET;
const dqFactoredDefault = (s: Spec): Schedule | undefined =>
  tileSizes(s.chunk, 128)
    .flatMap((blockT) => [2, 1].map((stages) => ({ numWarps: blockT * Math.ceil(s.d / 16) * 16 > 8192 ? 8 : 4, blockD: 0, blockT, stages })))
    .find((sch) => dqFactoredFits(s, sch));

/** The factored form at p = 2 where some schedule fits; else the expanded one. */
const dqFactored = (s: Spec): boolean => s.deg === 2 && dqFactoredDefault(s) !== undefined;
const buildDq = (s: Spec, sch: Schedule): Kernel => (dqFactored(s) ? buildDqFactored : buildDqExpanded)(s, sch);

/** query_state_bwd_dq's `nfb` for a plan with a state: the expanded form's feature blocks, or 1 for the factored form. */
export function dqStateBlocks(spec: Spec, sch: Schedule): number {
  return dqFactored(spec) ? 1 : featureBlocks(spec, sch.blockD).count;
}

export const queryStateBwdDq: KernelDef = {
  name: "query_state_bwd_dq",
  schedule: (s) => (dqFactored(s) ? dqFactoredDefault(s)! : firstFitting(s, candidates(s), buildDq)),
  scheduleSpace: (s) => (dqFactored(s) ? dqFactoredSpace(s).filter((sch) => dqFactoredFits(s, sch)) : withinBudget(s, space(s), buildDq)),
  build: buildDq,
};

const dsDoc = "dSin, dZin: the state's gradient from the queries of one chunk, summed over the group's query heads";

/** query_state_bwd_ds's arguments, the same in both forms (plan-backward binds them by name). */
function declareDs(k: KernelBuilder, spec: Spec) {
  const { d, e, dtype } = spec;
  const D = stateFeatures(spec);
  const b = k.param("b", "i32"), t = k.param("t", "i32"), hq = k.param("hq", "i32"), h = k.param("h", "i32");
  const n = k.param("n", "i32"), scale = k.param("scale", "f32");
  return {
    b, t, hq, h, n, scale,
    Q: k.tensor("Q", dtype, [b, t, hq, d], "in"),
    logG: k.tensor("logG", "f32", [b, t, h], "in"),
    dY: k.tensor("dY", dtype, [b, t, hq, e], "in"),
    lse: k.tensor("lse", "f32", [b, t, hq], "in"), // lseB
    Dy: k.tensor("Dy", "f32", [b, t, hq], "in"),
    dSin: k.tensor("dSin", "f32", [b, h, n, D, e], "out"),
    dZin: k.tensor("dZin", "f32", [b, h, n, D], "out"),
  };
}

/** p >= 4 (and where the factored form does not fit): phi(q'') expanded block by block. One program
 * owns one block of BD features of one chunk and walks the group's heads and the chunk's rows. */
function buildDsExpanded(spec: Spec, sch: Schedule): Kernel {
  return traceKernel(queryStateBwdDs.name, sch.numWarps, dsDoc, (k) => {
    const { deg: p, d, e, chunk: c, dtype } = spec;
    const BT = sch.blockT, BD = sch.blockD;
    const { b, t, hq, h, n, scale, Q, logG, dY, lse, Dy, dSin, dZin } = declareDs(k, spec);

    const nfb = featureBlocks(spec, BD).count;
    k.launch(n.mul(nfb), b.mul(h)); // (chunk * feature block, batch*kv head): chunks on x, CUDA's 2^31 - 1 axis, feature blocks fastest
    const fb = k.programId(0).mod(nfb), m = k.programId(0).idiv(nfb), bi = k.programId(1).idiv(h), hk = k.programId(1).mod(h);
    const g = hq.idiv(h), t0 = m.mul(c);
    const { lam } = chunkGates(k, logG, bi, hk, t0, c); // lam [c]

    const qt = k.shared("q", [BT, d], dtype);
    const sd = stateOperandDtype(dtype); // the state-side mma operands' dtype
    const dyt = dataOperand(k, "dy", [BT, e], dtype, sd, { spec, site: "query_state_bwd_ds.dy" });
    const lseI = k.reg("lse_i", [BT], "f32");
    const DyI = k.reg("Dy_i", [BT], "f32");
    const qn = k.shared("q_norm", [BT, d], "f32"); // q''
    const phi = splitOperand(k, "phi", [BT, BD], sd, { spec, site: "query_state_bwd_ds.phi" }); // phi(q'') (then -phi(q'') Dy), hi + lo (README "Precision", stateSplit)
    const phiF = phi.x;
    const accS = k.reg("acc_s", [BD, e], "f32");
    const accZ = k.reg("acc_z", [BD], "f32");
    const zsum = k.reg("z_sum", [BD], "f32");

    k.fill(accS, 0);
    k.fill(accZ, 0);
    k.for(0, g, (hh) => {
      const qh = hk.mul(g).add(hh);
      k.for(0, rowBlocks(t, t0, c, BT), (rb) => {
        const r0 = rb.mul(BT), rows = range(t0.add(r0), BT);
        k.load(qt, Q, [bi, rows, qh, range(0, d)]); // [BT, d]; rows past t read 0
        dyt.load(dY, [bi, rows, qh, range(0, e)]); // [BT, e]
        k.load(lseI, lse, [bi, rows, qh]); // [BT]
        k.load(DyI, Dy, [bi, rows, qh]); // [BT]
        k.map(qn, ({ row, col }) => qt.at(row, col).mul(normalisedQueryFactor(scale, lam.at(r0.add(row)), lseI.at(row), p)));
        k.expand(phiF, qn, p, fb.mul(BD)); // [BT, BD]
        phi.split();
        mmaSplit(k, accS, phi, dyt.op, { transA: true, accumulate: true }); // [BD, BT] @ [BT, e]
        k.map(phiF, ({ row, col }) => phiF.at(row, col).mul(DyI.at(row)).neg());
        k.reduce(zsum, phiF, "sum", 0); // [BD]
        k.map(accZ, ({ row }) => accZ.at(row).add(zsum.at(row)));
      }, { stages: sch.stages });
    });
    k.store(dSin, [bi, hk, m, range(fb.mul(BD), BD), range(0, e)], accS);
    k.store(dZin, [bi, hk, m, range(fb.mul(BD), BD)], accZ);
  });
}

/** p = 2, factored (header): pairOuter with A = q, X = f dy, z = -f Dy, s = f, the group's query heads
 * as its sources. One program owns one chunk and BE = blockD columns of dy. */
function buildDsFactored(spec: Spec, sch: Schedule): Kernel {
  return traceKernel(queryStateBwdDs.name, sch.numWarps, dsDoc, (k) => {
    const { d, e, chunk: c, dtype } = spec;
    if (spec.deg !== 2) throw new Error(`query_state_bwd_ds: the factored form is for deg 2, got ${spec.deg}`);
    const BE = sch.blockD;
    if (e % BE !== 0) throw new Error(`query_state_bwd_ds: blockD ${BE} (columns of dy per program) must divide e ${e}`);
    const { b, hq, h, n, scale, Q, logG, dY, lse, Dy, dSin, dZin } = declareDs(k, spec);

    const neb = e / BE;
    k.launch(n.mul(neb), b.mul(h)); // (chunk * column block of dy, batch*kv head): chunks on x, CUDA's 2^31 - 1 axis
    const eb = k.programId(0).mod(neb), e0 = eb.mul(BE), m = k.programId(0).idiv(neb), bi = k.programId(1).idiv(h), hk = k.programId(1).mod(h);
    const g = hq.idiv(h), t0 = m.mul(c), rows = range(t0, c);
    const { lam } = chunkGates(k, logG, bi, hk, t0, c); // lam [c]
    // Q is exact as the mma's A operand in its dtype, except f16: U_a = f^2 dy q_a carries
    // 1 / l_i (far outside f16's range), so the operands are bf16 (stateOperandDtype) and Q a bf16 pair.
    const sd = stateOperandDtype(dtype);
    const fdy = k.shared("fdy", [c, BE], "f32"); // f_i dy_i, of one query head
    const f = k.reg("f", [c], "f32"); // lseB, then f_i
    const zr = k.reg("z_row", [c], "f32"); // Dy, then -f_i Dy_i
    pairOuter(k, {
      d, name: "q", aDtype: dtype, operandDtype: sd,
      pair: stateSplit(spec, "query_state_bwd_ds.phi"), // (at p = 2 the site is f^2 dy q_:a and -f^2 Dy q: rounded products)
      X: fdy, z: (r) => zr.at(r), rowScale: (r) => f.at(r), sources: g, // U_a = (f dy) (f q_a): f^2 may overflow
      loadRows: (hh) => {
        const qh = hk.mul(g).add(hh);
        k.load(f, lse, [bi, rows, qh]); // [c]; rows past t read 0 (their q and dy are 0)
        k.map(f, ({ row }) => normalisedQueryFactor(scale, lam.at(row), f.at(row), 2));
        k.load(zr, Dy, [bi, rows, qh]); // [c]
        k.map(zr, ({ row }) => zr.at(row).mul(f.at(row)).neg());
        k.load(fdy, dY, [bi, rows, qh, range(e0, BE)]); // [c, BE]
        k.map(fdy, ({ row, col }) => fdy.at(row, col).mul(f.at(row)));
      },
      loadA: (qI, c0, hh) => k.load(qI, Q, [bi, rows, hk.mul(g).add(hh), range(c0, qI.cols)]), // q[:, c0:W]; columns past d read 0
      withZ: eb.eq(0), S: dSin, Z: dZin, at: [bi, hk, m], col0: e0,
    });
  });
}

/** The factored form at p = 2 where it fits with its narrowest column block; else the expanded one. */
const dsFactored = (spec: Spec): boolean => spec.deg === 2 && dsFactoredPeakBytes(spec, { numWarps: 4, blockD: Math.min(8, spec.e), blockT: spec.chunk, stages: 1 }) <= TILE_BUDGET;
const buildDs = (spec: Spec, sch: Schedule): Kernel => (dsFactored(spec) ? buildDsFactored : buildDsExpanded)(spec, sch);

/** Shared bytes of the factored form at its peak: pairOuter's tiles, f^2 dy, the gates and the row factors. */
function dsFactoredPeakBytes(spec: Spec, sch: Schedule): number {
  const c = spec.chunk, sd = stateOperandDtype(spec.dtype);
  return pairOuterBytes({ d: spec.d, rows: c, cols: sch.blockD, aDtype: spec.dtype, operandDtype: sd, pair: stateSplit(spec, "query_state_bwd_ds.phi") }) + c * sch.blockD * 4 + 4 * c * 4;
}

/** Factored: a whole chunk per program, all of dy's columns while they fit (halving blockD), 8 warps
 * from 64 x 64 outputs (as update_state). Expanded: as query_state_bwd_dq. */
function dsCandidates(spec: Spec): Schedule[] {
  if (!dsFactored(spec)) return candidates(spec);
  const out: Schedule[] = [];
  for (let be = spec.e; be >= Math.min(8, spec.e) && spec.e % be === 0; be /= 2) out.push({ numWarps: Math.ceil(spec.d / 16) * 16 * be >= 4096 ? 8 : 4, blockD: be, blockT: spec.chunk, stages: 1 });
  return out;
}

const dsFits = (s: Spec, sch: Schedule): boolean => (dsFactored(s) ? dsFactoredPeakBytes(s, sch) <= TILE_BUDGET : tileBytes(buildDs(s, sch)) <= TILE_BUDGET);

export const queryStateBwdDs: KernelDef = {
  name: "query_state_bwd_ds",
  schedule: (s) => dsCandidates(s).find((sch) => dsFits(s, sch)) ?? dsCandidates(s).at(-1)!,
  scheduleSpace: (s) =>
    (dsFactored(s) ? dsCandidates(s).flatMap((sch) => [{ ...sch, numWarps: 4 }, { ...sch, numWarps: 8 }]) : space(s)).filter((sch) => dsFits(s, sch)),
  build: buildDs,
};
