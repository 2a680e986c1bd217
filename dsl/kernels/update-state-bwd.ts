// Update state backward (README "Backward", update state part) for one chunk of one kv head.
// With k'_j = k_j f_j, f_j = exp((G_m - lam_j)/p), U = d(dS_m) [D, e] and u = d(dZ_m) [D]:
//   dv_j = phi(k'_j)^T U,   dk'_j = expandGrad(k'_j, U v_j + u),   dk_j = dk'_j f_j,
//   dG_m += dk_j . k_j / p,  dlam_j -= dk_j . k_j / p       (dk'.k' = dk.k)
// Rows in blocks of BT, the state's features streamed in blocks of BD.

import { range, traceKernel, type Val } from "../builder.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { chunkGates, featureBlocks, firstFitting, dataOperand, mmaSplit, rowBlocks, splitOperand, stateOperandDtype, tileSizes, withinBudget } from "./common.ts";

const doc = "dKs, dVs, dlamK, dGk: gradient through dS_m = phi(k')^T V, dZ_m = colsum phi(k')";

const candidates = (s: Spec): Schedule[] =>
  tileSizes(s.chunk, 64).flatMap((blockT) => [64, 32].map((blockD) => ({ numWarps: 4, blockD, blockT, stages: 1 })));

export const updateStateBwd: KernelDef = {
  name: "update_state_bwd",
  schedule: (s) => firstFitting(s, candidates(s), updateStateBwd.build),
  scheduleSpace: (s) =>
    withinBudget(
      s,
      tileSizes(s.chunk, 128).flatMap((blockT) => [32, 64, 128].flatMap((blockD) => [4, 8].map((numWarps) => ({ numWarps, blockD, blockT, stages: 1 })))),
      updateStateBwd.build,
    ),
  build: (spec, sch) =>
    traceKernel(updateStateBwd.name, sch.numWarps, doc, (k) => {
      const { deg: p, d, e, chunk: c, dtype } = spec;
      const D = stateFeatures(spec);
      const BT = sch.blockT, BD = sch.blockD;
      const b = k.param("b", "i32"), t = k.param("t", "i32"), h = k.param("h", "i32"), n = k.param("n", "i32");
      const K = k.tensor("K", dtype, [b, t, h, d], "in");
      const V = k.tensor("V", dtype, [b, t, h, e], "in");
      const logG = k.tensor("logG", "f32", [b, t, h], "in");
      const ddS = k.tensor("ddS", "f32", [b, h, n, D, e], "in");
      const ddZ = k.tensor("ddZ", "f32", [b, h, n, D], "in");
      const dKs = k.tensor("dKs", "f32", [b, t, h, d], "out");
      const dVs = k.tensor("dVs", "f32", [b, t, h, e], "out");
      const dlamK = k.tensor("dlamK", "f32", [b, t, h], "out");
      const dGk = k.tensor("dGk", "f32", [b, h, n], "out");

      k.launch(n, h, b); // (chunk, kv head, batch)
      const m = k.programId(0), hk = k.programId(1), bi = k.programId(2);
      const t0 = m.mul(c);
      const { lam, G } = chunkGates(k, logG, bi, hk, t0, c); // lam [c], G = lam[c-1]

      const kt = k.shared("k", [BT, d], dtype);
      const sd = stateOperandDtype(dtype); // the state-side mma operands' dtype
      const vt = dataOperand(k, "v", [BT, e], dtype, sd, { spec, site: "update_state_bwd.v" });
      const kd = k.shared("k_disc", [BT, d], "f32"); // k'
      // phi(k') and U enter the mmas as hi + lo pairs (README "Precision").
      const phi = splitOperand(k, "phi", [BT, BD], sd, { spec, site: "update_state_bwd.phi" }); // phi(k')
      const ub = splitOperand(k, "U", [BD, e], sd, { spec, site: "update_state_bwd.U" });
      const uz = k.reg("u_blk", [BD], "f32");
      const dphi = k.reg("dphi", [BT, BD], "f32");
      const accV = k.reg("acc_v", [BT, e], "f32");
      const accK = k.reg("acc_k", [BT, d], "f32"); // dk', then dk, then dk * k
      const dot = k.reg("dot", [BT], "f32");
      const dG = k.reg("dG", [1], "f32");
      const dGblk = k.reg("dG_blk", [1], "f32");

      k.fill(dG, 0);
      k.for(0, rowBlocks(t, t0, c, BT), (rb) => {
        const r0 = rb.mul(BT), rows = range(t0.add(r0), BT);
        const f = (row: Val): Val => G.sub(lam.at(r0.add(row))).div(p).exp();
        k.load(kt, K, [bi, rows, hk, range(0, d)]); // [BT, d]; rows past t read 0
        vt.load(V, [bi, rows, hk, range(0, e)]); // [BT, e]
        k.map(kd, ({ row, col }) => kt.at(row, col).mul(f(row)));
        k.fill(accV, 0);
        k.fill(accK, 0);
        k.for(0, featureBlocks(spec, BD).count, (fb) => {
          k.load(ub.x, ddS, [bi, hk, m, range(fb.mul(BD), BD), range(0, e)]); // [BD, e]; past D read 0
          k.load(uz, ddZ, [bi, hk, m, range(fb.mul(BD), BD)]); // [BD]
          k.expand(phi.x, kd, p, fb.mul(BD)); // [BT, BD]
          phi.split();
          ub.split();
          mmaSplit(k, accV, phi, ub, { accumulate: true }); // dv += [BT, BD] @ [BD, e]
          mmaSplit(k, dphi, vt.op, ub, { transB: true }); // [BT, e] @ [e, BD]
          k.map(dphi, ({ row, col }) => dphi.at(row, col).add(uz.at(col)));
          k.expandGrad(accK, kd, dphi, p, fb.mul(BD), { accumulate: true }); // [BT, d]
        }, { stages: sch.stages });
        k.store(dVs, [bi, rows, hk, range(0, e)], accV);
        k.map(accK, ({ row, col }) => accK.at(row, col).mul(f(row))); // dk
        k.store(dKs, [bi, rows, hk, range(0, d)], accK);
        k.map(accK, ({ row, col }) => accK.at(row, col).mul(kt.at(row, col))); // dk * k
        k.reduce(dot, accK, "sum", 1);
        k.map(dot, ({ row }) => dot.at(row).div(p));
        k.reduce(dGblk, dot, "sum", 0); // [1]
        k.map(dG, ({ row }) => dG.at(row).add(dGblk.at(row)));
        k.map(dot, ({ row }) => dot.at(row).neg());
        k.store(dlamK, [bi, rows, hk], dot);
      });
      k.store(dGk, [bi, hk, range(m, 1)], dG);
    }),
};
