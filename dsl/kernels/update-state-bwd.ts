// Update state backward (README "Backward", update state part) for one chunk of one kv head.
// With k'_j = k_j f_j, f_j = exp((G_m - lam_j)/p), U = d(dS_m) [D, e] and u = d(dZ_m) [D]:
//   dv_j = phi(k'_j)^T U,   dk'_j = expandGrad(k'_j, U v_j + u),   dk_j = dk'_j f_j,
//   dG_m += dk_j . k_j / p,  dlam_j -= dk_j . k_j / p       (dk'.k' = dk.k)
// Two forms, chosen per spec:
//  - expanded (buildExpanded, p >= 4 and where the factored one does not fit on chip): rows in
//    blocks of BT, the state's features streamed in blocks of BD, phi(k') formed in shared memory
//    and split hi + lo (stateSplit), dk' by expandGrad.
//  - p = 2, factored (buildFactored; README "The factored form at p = 2"): phi(k'_j) = g_j phi(k_j),
//    g_j = f_j^2, so dk_j = g_j expandGrad(k_j, U v_j + u). With the feature group a (features
//    (a, b), b >= a, contiguous in the state) as Ut_a [W, e], rows b: w_ab U_(a,b) (0 for b < a
//    or b >= d),
//      P_a = K Ut_a          [c, e]      dv_j  = g_j sum_a k_ja P_a[j, :]
//      T_a = V Ut_a^T        [c, W]      dk_jx = g_j (sum_{a <= x} k_ja T_a[j, x]       (scatter)
//                                                     + [x = a] sum_b k_jb T_a[j, b]    (row sum)
//                                                     + (K Zu)_jx)
//    with Zu [W, W] the u part, Zu_ab = u_(min, max) times 2 on the diagonal and sqrt 2 off it
//    (the gradient of k^T Msym k, Msym_ab = u_(a,b) w_ab / (1 + [a != b])). K and V enter the
//    mmas exact in their dtype (bf16 hi + lo pairs for f16, see below); only Ut_a and Zu are
//    rounded. The row sum is taken as sum_e v_je P_a[j, e] (the same sum, T_a = V Ut_a^T and
//    P_a = K Ut_a sharing Ut_a): a row reduce of the accumulator P_a, in registers. dk . k comes from Euler's identity, dk_j . k_j = 2 g_j (sum_a k_ja r_a[j] + k_j Zu k_j / 2),
//    r_a the row sum above, so dk itself never leaves registers before its store.

import { max, min, range, select, traceKernel, type KernelBuilder, type Val } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { chunkGates, computedOperand, dataOperand, featureBlocks, firstFitting, mmaSplit, pairFeature, pairWeight, rowBlocks, splitOperand, stateOperandDtype, stateSplit, TILE_BUDGET, tileSizes, withinBudget, type Operand, type StateSite } from "./common.ts";

const doc = "dKs, dVs, dlamK, dGk: gradient through dS_m = phi(k')^T V, dZ_m = colsum phi(k')";

/** The kernel's arguments, the same in both forms (the plan binds them by name). */
function declare(k: KernelBuilder, spec: Spec) {
  const { d, e, dtype } = spec;
  const D = stateFeatures(spec);
  const b = k.param("b", "i32"), t = k.param("t", "i32"), h = k.param("h", "i32"), n = k.param("n", "i32");
  return {
    b, t, h, n,
    K: k.tensor("K", dtype, [b, t, h, d], "in"),
    V: k.tensor("V", dtype, [b, t, h, e], "in"),
    logG: k.tensor("logG", "f32", [b, t, h], "in"),
    ddS: k.tensor("ddS", "f32", [b, h, n, D, e], "in"),
    ddZ: k.tensor("ddZ", "f32", [b, h, n, D], "in"),
    dKs: k.tensor("dKs", "f32", [b, t, h, d], "out"),
    dVs: k.tensor("dVs", "f32", [b, t, h, e], "out"),
    dlamK: k.tensor("dlamK", "f32", [b, t, h], "out"),
    dGk: k.tensor("dGk", "f32", [b, h, n], "out"),
  };
}

/** Expanded form (header). One program per (chunk, kv head, batch). */
function buildExpanded(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("update_state_bwd", sch.numWarps, doc, (k) => {
    const { deg: p, d, e, chunk: c, dtype } = spec;
    const BT = sch.blockT, BD = sch.blockD;
    const { b, t, h, n, K, V, logG, ddS, ddZ, dKs, dVs, dlamK, dGk } = declare(k, spec);

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
  });
}

/** p = 2, factored form (header). One program owns a whole chunk of one kv head (blockT = the
 * chunk: dGk is one sum per chunk); every a takes all W rows b of U from feature (a, 0) on, so rows
 * b < a of a group's tile belong to the groups before and are masked to 0 in Ut_a: the mmas do
 * about 2x the features' work (d W against D), and in return P_a, T_a, dv and dk share one
 * fragment layout and never leave registers. */
function buildFactored(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("update_state_bwd", sch.numWarps, doc, (k) => {
    const { d, e, chunk: c, dtype } = spec;
    if (spec.deg !== 2) throw new Error(`update_state_bwd: the factored form is for deg 2, got ${spec.deg}`);
    if (sch.blockT !== c) throw new Error(`update_state_bwd: the factored form takes whole chunks (blockT ${sch.blockT}, chunk ${c})`);
    const W = Math.ceil(d / 16) * 16; // K's columns, padded to whole k-steps of 16 (0 past d)
    const D = stateFeatures(spec);
    const { b, h, n, K, V, logG, ddS, ddZ, dKs, dVs, dlamK, dGk } = declare(k, spec);
    k.launch(n, b.mul(h)); // (chunk, batch*kv head): chunks on x, CUDA's 2^31 - 1 axis
    const m = k.programId(0), bi = k.programId(1).idiv(h), hk = k.programId(1).mod(h);
    const t0 = m.mul(c), rows = range(t0, c);
    const { lam, G } = chunkGates(k, logG, bi, hk, t0, c); // lam [c], G = lam[c-1]
    const gate = (j: Val): Val => G.sub(lam.at(j)).exp(); // g_j = f_j^2: phi(k'_j) = g_j phi(k_j)

    // Sites (stateSplit): update_state_bwd.U is Ut_a (U's rows of group a, in P_a and T_a);
    // update_state_bwd.v is V in T_a and update_state_bwd.phi is K in P_a, both f16 data as bf16
    // operands (for bf16 and f32 they are exact as they are). Zu is always a pair: one mma per program.
    const sd = stateOperandDtype(dtype); // Ut_a, Zu: bf16 for f16 (U leaves f16's range, README "Backward")
    const exact = sd === dtype; // K, V enter the mmas as they are; for f16 as bf16 pairs (exact as a pair)
    const kPair = stateSplit(spec, "update_state_bwd.phi");
    const kt = k.shared("k", [c, W], dtype); // K [c, W]; rows past t and columns past d read 0
    k.load(kt, K, [bi, rows, hk, range(0, W)]);
    const kAt = (j: Val, x: Val): Val => kt.at(j, x);
    const k0 = exact ? kt : computedOperand(k, "k0", [c, W], sd, true, ({ row, col }) => kt.at(row, col)); // a full pair, for Zu
    /** K as the A operand of P_a: exact, or for f16 a bf16 hi (+ lo, kPair). */
    const kP: Operand = exact || !("hi" in k0) ? k0 : { hi: k0.hi, lo: kPair ? k0.lo : null };
    const vt = dataOperand(k, "v", [c, e], dtype, sd, { spec, site: "update_state_bwd.v" });
    vt.load(V, [bi, rows, hk, range(0, e)]); // [c, e]
    const vAt = (j: Val, x: Val): Val => ("hi" in vt.op ? (vt.op.lo ? vt.op.hi.at(j, x).add(vt.op.lo.at(j, x)) : vt.op.hi.at(j, x)) : vt.op.at(j, x));

    // The u part: dk = K Zu to start with, and s = k Zu k / 2 = u . phi(k), Euler's half of dk . k.
    const dk = k.reg("dk", [c, W], "f32"); // dk / g
    const dv = k.reg("dv", [c, e], "f32"); // dv / g
    const s = k.shared("kdk", [c], "f32"); // dphi(k_j) . phi(k_j) = dk_j . k_j / (2 g_j)
    const zt = k.shared("z", [D], "f32");
    k.load(zt, ddZ, [bi, hk, m, range(0, D)]);
    const zu = computedOperand(k, "zu", [W, W], sd, true, ({ row, col }) => {
      const z = zt.at(pairFeature(d, min(row, col).min(d - 1), max(row, col).min(d - 1)));
      return select(row.lt(d).and(col.lt(d)), select(row.eq(col), z.mul(2), z.mul(Math.SQRT2)), 0);
    });
    const kz = k.shared("kzu", [c, W], "f32");
    mmaSplit(k, kz, k0, zu); // K Zu [c, W]
    k.map(dk, ({ row, col }) => kz.at(row, col));
    k.map(kz, ({ row, col }) => kz.at(row, col).mul(kAt(row, col)).mul(0.5));
    k.reduce(s, kz, "sum", 1); // [c]

    k.fill(dv, 0);
    const uPair = stateSplit(spec, "update_state_bwd.U");
    const r = k.shared("r", [c], "f32"); // r_a = sum_b k_b T_a[:, b]
    // a by a over all W rows b of U (rows b < a, earlier groups, and b >= d masked to 0 in Ut_a), so
    // that T_a [c, W] has dk's shape and tiling and stays in registers, as P_a [c, e] does dv's
    const uRaw = k.shared("u_f32", [W, e], "f32");
    const pA = k.reg("p_a", [c, e], "f32"); // P_a, then P_a * V (row-summed)
    const tA = k.reg("t_a", [c, W], "f32"); // T_a
    k.for(0, d, (a) => {
      // rows b = 0 .. W-1 of group a: features pairFeature(a, b)
      k.load(uRaw, ddS, [bi, hk, m, range(pairFeature(d, a, a).sub(a), W), range(0, e)]);
      const ut = computedOperand(k, "u", [W, e], sd, uPair, ({ row, col }) =>
        select(row.lt(a).or(row.ge(d)), 0, uRaw.at(row, col).mul(pairWeight(a, row)))); // Ut_a [W, e]
      mmaSplit(k, pA, kP, ut); // [c, W] @ [W, e]
      k.map(dv, ({ row, col }) => dv.at(row, col).add(kAt(row, a).mul(pA.at(row, col))));
      k.map(pA, ({ row, col }) => pA.at(row, col).mul(vAt(row, col))); // V as T_a's mma sees it
      k.reduce(r, pA, "sum", 1); // [c] r_a = sum_b k_b T_a[:, b] = sum_e v_e P_a[:, e]
      mmaSplit(k, tA, vt.op, ut, { transB: true }); // [c, e] @ [e, W]
      k.map(dk, ({ row, col }) => {
        const scattered = dk.at(row, col).add(kAt(row, a).mul(tA.at(row, col)));
        return select(col.eq(a), scattered.add(r.at(row)), scattered); // and the row sum into column a
      });
      k.map(s, ({ row }) => s.at(row).add(kAt(row, a).mul(r.at(row))));
    }, { stages: sch.stages });

    k.map(dv, ({ row, col }) => dv.at(row, col).mul(gate(row)));
    k.store(dVs, [bi, rows, hk, range(0, e)], dv);
    k.map(dk, ({ row, col }) => dk.at(row, col).mul(gate(row)));
    k.store(dKs, [bi, rows, hk, range(0, W)], dk); // columns past d skipped
    const dG = k.reg("dG", [1], "f32");
    k.map(s, ({ row }) => s.at(row).mul(gate(row))); // dk . k / p
    k.reduce(dG, s, "sum", 0);
    k.store(dGk, [bi, hk, range(m, 1)], dG);
    k.map(s, ({ row }) => s.at(row).neg());
    k.store(dlamK, [bi, rows, hk], s);
  });
}

/** Fragment registers per thread of an f32 [m, n] accumulator over `warps` (codegen's widest 16 x 32 units). */
const fragRegs = (m: number, n: number, warps: number): number => Math.ceil(((m / 16) * Math.ceil(n / 32)) / warps) * 16;

/** Shared bytes of the factored form at its peak (tileBytes sums every tile, but the phases reuse
 * bytes): the whole program's tiles, plus the largest of the u phase and the blocks of a's (block I
 * with its K[:, 16 I:] operand). */
function factoredPeakBytes(spec: Spec, sch: Schedule): number {
  const { d, e, chunk: c, dtype } = spec;
  const W = Math.ceil(d / 16) * 16, el = dtype === "f32" ? 4 : 2, exact = dtype !== "f16";
  const row = (cols: number): number => (cols + 16 / el) * el; // an mma operand's row, padded by 16 bytes
  const pairs = (site: StateSite): number => (dtype !== "f32" && stateSplit(spec, site) ? 2 : 1);
  const whole = 16 * c + (exact ? c * row(W) : c * W * 2 + c * row(W)) + (exact ? 1 : pairs("update_state_bwd.v")) * c * row(e);
  const uPhase = stateFeatures(spec) * 4 + (dtype === "f32" ? 1 : 2) * W * row(W) + c * W * 4 + (exact ? 0 : c * row(W));
  const block = sch.stages * W * e * 4 + pairs("update_state_bwd.U") * W * row(e);
  const vPhase = exact ? 0 : c * e * 4 + c * row(W); // f16: V's f32 staging beside K's lo
  return whole + Math.max(uPhase, vPhase, block);
}

const fitsFactored = (s: Spec, sch: Schedule): boolean => {
  const W = Math.ceil(s.d / 16) * 16;
  return factoredPeakBytes(s, sch) <= TILE_BUDGET && 2 * fragRegs(s.chunk, s.e, sch.numWarps) + 2 * fragRegs(s.chunk, W, sch.numWarps) <= 160;
};

/** p = 2: whole chunks, 8 warps from 8192 outputs, the next group's rows of U prefetched where they
 * fit; 16 warps too, for the sweep: four [c, W] accumulators over 8 warps take 207 registers per
 * thread at d = 64, c = 128 (one block per SM), over 16 warps ptxas fits them in 128 (16 warps per SM). */
const factoredCandidates = (s: Spec): Schedule[] => {
  const big = s.chunk * Math.max(s.e, Math.ceil(s.d / 16) * 16) >= 8192;
  return (big ? [8, 4, 16] : [4, 8]).flatMap((numWarps) => [2, 1].map((stages) => ({ numWarps, blockD: 0, blockT: s.chunk, stages })));
};

/** The factored form where it applies (p = 2) and some whole-chunk schedule fits; else the expanded one. */
const factored = (s: Spec): boolean => s.deg === 2 && factoredCandidates(s).some((sch) => fitsFactored(s, sch));
const build = (s: Spec, sch: Schedule): Kernel => (factored(s) ? buildFactored : buildExpanded)(s, sch);

const expandedCandidates = (s: Spec): Schedule[] =>
  tileSizes(s.chunk, 64).flatMap((blockT) => [64, 32].map((blockD) => ({ numWarps: 4, blockD, blockT, stages: 1 })));

export const updateStateBwd: KernelDef = {
  name: "update_state_bwd",
  schedule: (s) => (factored(s) ? factoredCandidates(s).find((sch) => fitsFactored(s, sch))! : firstFitting(s, expandedCandidates(s), build)),
  scheduleSpace: (s) =>
    factored(s)
      ? factoredCandidates(s).filter((sch) => fitsFactored(s, sch))
      : withinBudget(s, tileSizes(s.chunk, 128).flatMap((blockT) => [32, 64, 128].flatMap((blockD) => [4, 8].map((numWarps) => ({ numWarps, blockD, blockT, stages: 1 })))), build),
  build,
};
