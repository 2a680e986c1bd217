// Query state backward (README "Backward", query state part), two kernels. Both use the query
// with the normaliser folded in by homogeneity: q''_i = q_i * f_i, f_i = scale exp((lam_i - lse_i)/p),
// so that phi(q''_i) = phi(q'_i) / l_i (and f_i = 0 on a weightless row, lse = -inf).
//   query_state_bwd_dq: completes the row totals of attention_bwd_prep with the state part, which
//                       the forward saved (query_state's yS_i = phi(q''_i)^T Sin_m, wS_i = phi(q''_i).Zin_m):
//                         rho_i = PA_i + wS_i,   Dy_i = (DyA_i + dy_i.yS_i) / rho_i,
//                       and from them lseB_i = lse_i + log rho_i (the normaliser under which the
//                       backward's weights sum to 1); Dy_i being known before the feature loop,
//                         dq_i = f_i expandGrad(q''_i, Sin_m dy_i - Dy_i Zin_m) / rho_i
//                       is one expandGrad per feature block, and
//                         dlamQ_i = dq'_i . q'_i / p = (dy_i.yS_i - Dy_i wS_i) / rho_i.
//   query_state_bwd_ds: dSin_m = sum_i phi(q''_i) dy_i^T, dZin_m = -sum_i phi(q''_i) Dy_i over the
//                       group's query heads, with q'' from lseB. At p = 2 factored (buildDsFactored,
//                       pair-outer.ts): phi(q'') = f^2 phi(q), so with q exact as the mma's A operand
//                         dSin_(a,b) = w_ab (Q^T U_a)_b,  U_a = diag(f^2 q_:a) dY     dZin_(a,b) = -w_ab (Q^T diag(f^2 Dy) Q)_ab
//                       (update_state's form with K -> Q, g V -> f^2 dY, g -> -f^2 Dy), nothing
//                       expanded; at p >= 4 phi(q'') is expanded block by block (buildDsExpanded).

import { f32, range, select, traceKernel, type KernelBuilder, type Tile, type Val } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { chunkGates, featureBlocks, firstFitting, dataOperand, mmaSplit, normalisedQueryFactor, rowBlocks, splitOperand, stateOperandDtype, stateSplit, tileBytes, TILE_BUDGET, tileSizes, withinBudget } from "./common.ts";
import { pairOuter, pairOuterBytes } from "./pair-outer.ts";

const candidates = (s: Spec): Schedule[] =>
  tileSizes(s.chunk, 64).flatMap((blockT) => [64, 32].map((blockD) => ({ numWarps: 4, blockD, blockT, stages: 1 })));

const space = (s: Spec): Schedule[] =>
  tileSizes(s.chunk, 128).flatMap((blockT) =>
    [32, 64, 128].flatMap((blockD) => [4, 8].map((numWarps) => ({ numWarps, blockD, blockT, stages: 1 }))),
  );

const dqDoc = "Dy, lseB (the normaliser the backward's weights sum to 1 under), and dQs, dlamQ: the gradient through phi(q')^T [Sin, Zin]";

export const queryStateBwdDq: KernelDef = {
  name: "query_state_bwd_dq",
  schedule: (s) => firstFitting(s, candidates(s), queryStateBwdDq.build),
  scheduleSpace: (s) => withinBudget(s, space(s), queryStateBwdDq.build),
  build: (spec, sch) =>
    traceKernel(queryStateBwdDq.name, sch.numWarps, dqDoc, (k) => {
      const { deg: p, d, e, chunk: c, dtype } = spec;
      const D = stateFeatures(spec);
      const BT = sch.blockT, BD = sch.blockD;
      const b = k.param("b", "i32"), t = k.param("t", "i32"), hq = k.param("hq", "i32"), h = k.param("h", "i32");
      const n = k.param("n", "i32"), scale = k.param("scale", "f32");
      const nfb = k.param("nfb", "i32"); // feature blocks to visit: all of them, or 0 when there is no state
      const Q = k.tensor("Q", dtype, [b, t, hq, d], "in");
      const logG = k.tensor("logG", "f32", [b, t, h], "in");
      const Sin = k.tensor("Sin", "f32", [b, h, n, D, e], "in");
      const Zin = k.tensor("Zin", "f32", [b, h, n, D], "in");
      const dY = k.tensor("dY", dtype, [b, t, hq, e], "in");
      const lse = k.tensor("lse", "f32", [b, t, hq], "in");
      const yS = k.tensor("yS", "f32", [b, t, hq, e], "in");
      const wS = k.tensor("wS", "f32", [b, t, hq], "in");
      const DyA = k.tensor("DyA", "f32", [b, t, hq], "in");
      const PA = k.tensor("PA", "f32", [b, t, hq], "in");
      const Dy = k.tensor("Dy", "f32", [b, t, hq], "out");
      const lseB = k.tensor("lseB", "f32", [b, t, hq], "out");
      const dQs = k.tensor("dQs", "f32", [b, t, hq, d], "out");
      const dlamQ = k.tensor("dlamQ", "f32", [b, t, hq], "out");

      k.launch(n, hq, b); // (chunk, query head, batch)
      const m = k.programId(0), qh = k.programId(1), bi = k.programId(2);
      const hk = qh.idiv(hq.idiv(h)), t0 = m.mul(c);
      const { lam } = chunkGates(k, logG, bi, hk, t0, c); // lam [c]

      const qt = k.shared("q", [BT, d], dtype);
      const sd = stateOperandDtype(dtype); // the state-side mma operands' dtype
      const dyt = dataOperand(k, "dy", [BT, e], dtype, sd, { spec, site: "query_state_bwd_dq.dy" });
      const dyF = k.shared("dy_row", [BT, e], "f32"); // dy in f32, for the row dot with yS
      const ySt = k.shared("y_s", [BT, e], "f32");
      const lseI = k.reg("lse_i", [BT], "f32");
      const dyy = k.reg("dy_y", [BT], "f32"); // DyA, then Dy
      const rho = k.reg("rho", [BT], "f32"); // PA, then + wS: the weights' total
      const dyS = k.reg("dy_s", [BT], "f32"); // dy . yS, then dlamQ
      const pS = k.reg("p_s", [BT], "f32"); // wS
      const qn = k.shared("q_norm", [BT, d], "f32"); // q''
      const sb = splitOperand(k, "S", [BD, e], sd, { spec, site: "query_state_bwd_dq.S" }); // Sin dy: hi + lo (README "Precision", stateSplit)
      const zb = k.reg("Z_blk", [BD], "f32");
      const sdy = k.reg("S_dy", [BT, BD], "f32"); // Sin dy, then - Dy Zin: dphi(q'') rho
      const gS = k.reg("grad_s", [BT, d], "f32"); // sum expandGrad(q'', Sin dy - Dy Zin), then dq

      k.for(0, rowBlocks(t, t0, c, BT), (rb) => {
        const r0 = rb.mul(BT), rows = range(t0.add(r0), BT);
        const f = (row: Val): Val => normalisedQueryFactor(scale, lam.at(r0.add(row)), lseI.at(row), p);
        k.load(qt, Q, [bi, rows, qh, range(0, d)]); // [BT, d]; rows past t read 0
        dyt.load(dY, [bi, rows, qh, range(0, e)]); // [BT, e]
        k.load(dyF, dY, [bi, rows, qh, range(0, e)]); // [BT, e]
        k.load(ySt, yS, [bi, rows, qh, range(0, e)]); // [BT, e]
        k.load(lseI, lse, [bi, rows, qh]); // [BT]
        k.load(dyy, DyA, [bi, rows, qh]); // [BT]
        k.load(rho, PA, [bi, rows, qh]); // [BT]
        k.load(pS, wS, [bi, rows, qh]); // [BT]
        k.map(ySt, ({ row, col }) => ySt.at(row, col).mul(dyF.at(row, col)));
        k.reduce(dyS, ySt, "sum", 1); // dy . yS [BT]
        k.map(rho, ({ row }) => rho.at(row).add(pS.at(row)));
        const live = (row: Val): Val => rho.at(row).ne(0); // (not > 0: a NaN total must give NaN gradients, not 0)
        k.map(dyy, ({ row }) => select(live(row), dyy.at(row).add(dyS.at(row)).div(rho.at(row)), f32(0)));
        k.store(Dy, [bi, rows, qh], dyy);
        k.map(qn, ({ row, col }) => qt.at(row, col).mul(f(row)));
        k.fill(gS, 0);
        k.for(0, nfb, (fb) => {
          const f0 = fb.mul(BD);
          k.load(sb.x, Sin, [bi, hk, m, range(f0, BD), range(0, e)]); // [BD, e]; past D read 0
          k.load(zb, Zin, [bi, hk, m, range(f0, BD)]); // [BD]
          sb.split();
          mmaSplit(k, sdy, dyt.op, sb, { transB: true }); // [BT, e] @ [e, BD]
          k.map(sdy, ({ row, col }) => sdy.at(row, col).sub(dyy.at(row).mul(zb.at(col))));
          k.expandGrad(gS, qn, sdy, p, f0, { accumulate: true }); // [BT, d]
        }, { stages: sch.stages });
        k.map(gS, ({ row, col }) => select(live(row), gS.at(row, col).mul(f(row)).div(rho.at(row)), f32(0))); // dq
        k.store(dQs, [bi, rows, qh, range(0, d)], gS);
        k.map(dyS, ({ row }) => select(live(row), dyS.at(row).sub(dyy.at(row).mul(pS.at(row))).div(rho.at(row)), f32(0)));
        k.store(dlamQ, [bi, rows, qh], dyS);
        k.map(lseI, ({ row }) => lseI.at(row).add(rho.at(row).log())); // -inf where rho = 0
        k.store(lseB, [bi, rows, qh], lseI);
      });
    }),
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
