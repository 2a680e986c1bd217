// Query state and combine (forward step 4 of SPEC.md's chunked algorithm). For query i of chunk m,
// with q'_i = scale q_i exp(lam_i / p) (the gate from the chunk's start folded into the query),
// phi(q'_i) = exp(c_i) phi(q_i) with c_i = lam_i + p log|scale|, and
//   numS_i = phi(q_i)^T Sin_m   [e]        denS_i = phi(q_i) . Zin_m
// then, on the common scale M_i = max(maxA_i, c_i) (numA, denA carry exp(-maxA_i)), so that neither
// part under- or overflows for any scale whose result is finite:
//   y_i = (numA_i exp(maxA_i - M_i) + numS_i exp(c_i - M_i)) / (denA_i exp(maxA_i - M_i) + denS_i exp(c_i - M_i))
//   lse_i = log(den_i) + M_i        (y_i = 0 and lse_i = -inf when den_i = 0)
// and, for the backward, the state's part of y and of the weights under the final normaliser:
//   yS_i = numS_i exp(c_i - M_i) / den_i  [e]      wS_i = denS_i exp(c_i - M_i) / den_i   (0 when den_i = 0)
// (README "Backward": they give Dy and the normaliser without recomputing phi(q'')^T [S, Z]).
//
// Two ways to form phi(q')^T Sin, chosen by degree:
//  - p = 2, factored (buildFactored): phi_(a,b)(q) = w_ab q_a q_b with the features of one a
//    contiguous in the state (a <= b, lexicographic), so
//        phi(q)^T S = sum_a q_a * (q[a:] @ (w_a,. S_(a, a:)))      and   phi(q') = scale^2 exp(lam) phi(q).
//    The mma's A operand is q itself, exact in its dtype: nothing is expanded, and only the state
//    block is rounded (as a hi + lo pair where stateSplit says so). denS = q^T Zsym q with Zsym the
//    symmetric d x d matrix of Zin, one mma per program. Feature groups a run in blocks of 16 a's,
//    each block using only the q columns from its first a (16-aligned, for ldmatrix), so the mma
//    does 16 * sum_I (W - 16 I) ~ D (1 + 16/d) features' work (W = d rounded up to 16).
//  - p >= 4, expanded (buildExpanded): phi(q) formed block by block right before each mma (the gate
//    and scale, scale^p exp(lam), join the combine's exponent as in the factored form). In
//    f16/bf16, phi(q') and the state block enter the mma as hi + lo pairs (common.ts,
//    splitOperand): the sum phi(q')^T S can cancel far below its terms, and a single rounding of
//    each operand then costs whole percent on such rows (README, "Precision of the state path").
//    (The factored form needs per-prefix tables at p >= 4, C(d + p - 2, p - 1) prefixes of p - 1 indices.)

import { max, min, range, select, traceKernel, type KernelBuilder, type TensorRef, type Tile, type Val } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { chunkGates, computedOperand, safeExpDiff, dataOperand, pairFeature, pairWeight, featureBlocks, mmaSplit, splitOperand, STATE_OPERAND_SCALE, stateOperandDtype, stateSplit, tileBytes, TILE_BUDGET, tileSizes } from "./common.ts";

const doc = "Y = (attention part + phi(q')^T Sin) / (its normaliser), lse = log normaliser, q' = scale q exp(lam/p)";

interface Args {
  readonly b: Val; readonly t: Val; readonly hq: Val; readonly h: Val; readonly n: Val; readonly scale: Val;
  readonly Q: TensorRef; readonly logG: TensorRef; readonly Sin: TensorRef; readonly Zin: TensorRef;
  readonly numA: TensorRef; readonly denA: TensorRef; readonly maxA: TensorRef;
  readonly Y: TensorRef; readonly lse: TensorRef; readonly yS: TensorRef; readonly wS: TensorRef;
}

function declare(k: KernelBuilder, spec: Spec): Args {
  const { d, e, dtype } = spec;
  const D = stateFeatures(spec);
  const b = k.param("b", "i32"), t = k.param("t", "i32"), hq = k.param("hq", "i32"), h = k.param("h", "i32");
  const n = k.param("n", "i32"), scale = k.param("scale", "f32");
  return {
    b, t, hq, h, n, scale,
    Q: k.tensor("Q", dtype, [b, t, hq, d], "in"),
    logG: k.tensor("logG", "f32", [b, t, h], "in"),
    Sin: k.tensor("Sin", "f32", [b, h, n, D, e], "in"),
    Zin: k.tensor("Zin", "f32", [b, h, n, D], "in"),
    numA: k.tensor("numA", "f32", [b, t, hq, e], "in"),
    denA: k.tensor("denA", "f32", [b, t, hq], "in"),
    maxA: k.tensor("maxA", "f32", [b, t, hq], "in"),
    Y: k.tensor("Y", dtype, [b, t, hq, e], "out"),
    lse: k.tensor("lse", "f32", [b, t, hq], "out"),
    yS: k.tensor("yS", "f32", [b, t, hq, e], "out"),
    wS: k.tensor("wS", "f32", [b, t, hq], "out"),
  };
}

/** The combine for rows [t0 + r0, +BT): numS [BT, e] and denS [BT] are the state's parts up to the
 * factor exp(stateLog(r)) (times numScale, denScale); the common scale is M_r = max(maxA_r,
 * stateLog(r)), so that neither part under- or overflows whatever the scale (the f32 tiles are
 * overwritten). */
function combine(
  k: KernelBuilder, a: Args, at: { bi: Val; qh: Val; rows: ReturnType<typeof range> }, e: number,
  numS: Tile, denS: Tile, stateLog: (r: Val) => Val, scales: { num: number; den: number },
): void {
  const BT = numS.rows;
  const num = k.reg("num", [BT, e], "f32"); // numA, then y
  const den = k.reg("den", [BT], "f32");
  const denAt = k.reg("den_a", [BT], "f32");
  const maxAt = k.reg("max_a", [BT], "f32");
  const lseT = k.reg("lse_t", [BT], "f32");
  const { bi, qh, rows } = at;
  k.load(num, a.numA, [bi, rows, qh, range(0, e)]); // [BT, e]
  k.load(denAt, a.denA, [bi, rows, qh]); // [BT]
  k.load(maxAt, a.maxA, [bi, rows, qh]); // [BT]
  const M = (r: Val): Val => max(maxAt.at(r), stateLog(r)); // the common scale (maxA = -inf on rows with no attention weight)
  const wA = (r: Val): Val => safeExpDiff(maxAt.at(r), M(r)); // attention part to the common scale (0 when M = -inf)
  const wS = (r: Val): Val => safeExpDiff(stateLog(r), M(r)); // the state's
  k.map(denAt, ({ row }) => denAt.at(row).mul(wA(row))); // attention's weight on the common scale
  k.map(denS, ({ row }) => denS.at(row).mul(wS(row)).mul(scales.den)); // the state's
  k.map(den, ({ row }) => denAt.at(row).add(denS.at(row)));
  const part = (x: Val, r: Val): Val => select(den.at(r).ne(0), x.div(den.at(r)), 0); // != 0, not > 0: NaN in any input stays NaN
  k.map(numS, ({ row, col }) => part(numS.at(row, col).mul(wS(row)).mul(scales.num), row)); // yS
  k.map(num, ({ row, col }) => part(num.at(row, col).mul(wA(row)), row).add(numS.at(row, col)));
  // A non-finite y is NaN, whichever part (and so whichever chunk size) carried the non-finite
  // input: the state's sums mix +inf and -inf where the attention's would not (README "Non-finite inputs").
  k.map(num, ({ row, col }) => select(num.at(row, col).isFinite(), num.at(row, col), NaN));
  k.map(denS, ({ row }) => part(denS.at(row), row)); // wS
  k.store(a.yS, [bi, rows, qh, range(0, e)], numS);
  k.store(a.wS, [bi, rows, qh], denS);
  k.map(lseT, ({ row }) => select(den.at(row).ne(0), den.at(row).log().add(M(row)), -Infinity));
  k.store(a.Y, [bi, rows, qh, range(0, e)], num); // rounded to the dtype by the store
  k.store(a.lse, [bi, rows, qh], lseT);
}

/** p = 2, factored form (header). One program owns BT rows of one chunk of one query head. */
function buildFactored(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("query_state", sch.numWarps, doc, (k) => {
    const { d, e, chunk: c, dtype } = spec;
    if (spec.deg !== 2) throw new Error(`query_state: the factored form is for deg 2, got ${spec.deg}`);
    const BT = sch.blockT;
    if (c % BT !== 0) throw new Error(`query_state: blockT ${BT} must divide the chunk ${c}`);
    const W = Math.ceil(d / 16) * 16; // q's columns, padded to whole k-steps of 16 (0 past d)
    const a = declare(k, spec);
    const blocks = c / BT;
    k.launch(a.n.mul(blocks), a.hq, a.b); // (chunk * row block, query head, batch)
    const m = k.programId(0).idiv(blocks), r0 = k.programId(0).mod(blocks).mul(BT);
    const qh = k.programId(1), bi = k.programId(2);
    const hk = qh.idiv(a.hq.idiv(a.h)); // the kv head of this query head
    const t0 = m.mul(c);
    const { lam } = chunkGates(k, a.logG, bi, hk, t0, c); // lam [c]
    const sd = stateOperandDtype(dtype); // bf16 for f16: the state's range (as the backward)
    const sigma = STATE_OPERAND_SCALE[sd];
    const pair = stateSplit(spec, "query_state.S");
    const numS = k.reg("num_s", [BT, e], "f32"); // sum_a q_a (q[a:] @ S_a) / sigma
    const part = k.reg("num_a", [BT, e], "f32"); // q[a:] @ S_a for one a
    const denS = k.reg("den_s", [BT], "f32");
    const rows = range(t0.add(r0), BT);

    k.if(t0.add(r0).lt(a.t), () => { // blocks wholly past t have nothing to do
      k.fill(numS, 0);
      for (let I = 0; I < W / 16; I++) {
        const c0 = 16 * I, w = W - c0; // this block's a in [c0, c0 + 16); columns b in [c0, W)
        const q = dataOperand(k, `q${I}`, [BT, w], dtype, sd); // q[:, c0:W], exact (a bf16 pair for f16)
        q.load(a.Q, [bi, rows, qh, range(c0, w)]); // rows past t and columns past d read 0
        const qAt = (r: Val, col: Val): Val => ("hi" in q.op ? q.op.x : q.op).at(r, col);
        if (I === 0) {
          // denS = q^T Zsym q: Zsym[a, b] = Z_(min, max) w_ab / (2 if a != b), so that the double sum
          // over a, b gives sum_f phi_f(q) Z_f.
          const D = stateFeatures(spec);
          const zt = k.shared("z", [D], "f32");
          k.load(zt, a.Zin, [bi, hk, m, range(0, D)]);
          const zsym = computedOperand(k, "zsym", [W, W], sd, pair, ({ row, col }) => {
            const lo = min(row, col).min(d - 1), hi = max(row, col).min(d - 1);
            const z = zt.at(pairFeature(d, lo, hi)).div(sigma);
            return select(row.lt(d).and(col.lt(d)), select(row.eq(col), z, z.mul(Math.SQRT1_2)), 0);
          });
          const qz = k.reg("qz", [BT, W], "f32"); // q @ Zsym / sigma
          mmaSplit(k, qz, q.op, zsym);
          k.map(qz, ({ row, col }) => qz.at(row, col).mul(qAt(row, col)));
          k.reduce(denS, qz, "sum", 1); // [BT]
        }
        const sRaw = k.shared(`s${I}_f32`, [w, e], "f32"); // rows b in [c0, W) of group a, as stored
        k.for(c0, Math.min(c0 + 16, d), (ai) => {
          // rows b = c0 .. W-1 of group a: features pairFeature(a, b); rows b < a (other groups) and b >= d are masked
          k.load(sRaw, a.Sin, [bi, hk, m, range(pairFeature(d, ai, ai).sub(ai).add(c0), w), range(0, e)]);
          const s = computedOperand(k, `s${I}`, [w, e], sd, pair, ({ row, col }) => { // w_ab S_(a, b) / sigma
            const bb = row.add(c0), x = sRaw.at(row, col).div(sigma);
            return select(bb.lt(ai).or(bb.ge(d)), 0, x.mul(pairWeight(ai, bb)));
          });
          mmaSplit(k, part, q.op, s); // [BT, e] = q[:, c0:] @ S_a
          k.map(numS, ({ row, col }) => numS.at(row, col).add(qAt(row, ai.sub(c0)).mul(part.at(row, col))));
        }, { stages: sch.stages });
      }
      // phi(q') = scale^2 exp(lam) phi(q), in the log domain; numS and denS are / sigma
      combine(k, a, { bi, qh, rows }, e, numS, denS, (r) => lam.at(r0.add(r)).add(a.scale.abs().log().mul(2)), { num: sigma, den: sigma });
    });
  });
}

/** p >= 4, expanded form (header). One program owns one chunk of one query head; it walks the
 * chunk in blocks of BT rows and, for each, the state in blocks of BD features. */
function buildExpanded(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("query_state", sch.numWarps, doc, (k) => {
    const { deg: p, d, e, chunk: c, dtype } = spec;
    const BT = sch.blockT, BD = sch.blockD;
    if (c % BT !== 0) throw new Error(`query_state: blockT ${BT} must divide the chunk ${c}`);
    const a = declare(k, spec);
    k.launch(a.n, a.hq, a.b); // (chunk, query head, batch)
    const m = k.programId(0), qh = k.programId(1), bi = k.programId(2);
    const hk = qh.idiv(a.hq.idiv(a.h)); // the kv head of this query head
    const t0 = m.mul(c);

    const { lam } = chunkGates(k, a.logG, bi, hk, t0, c); // lam [c]
    const qs = k.shared("q", [BT, d], "f32"); // q: phi(q') = scale^p exp(lam) phi(q), a row factor applied after the sum
    // bf16 pairs for an f16 spec (stateOperandDtype): phi(q') under strong gates falls below f16's
    // normal range, and the backward reads yS, wS to well below the dtype's rounding (README "Backward").
    const sd = stateOperandDtype(dtype);
    const phi = splitOperand(k, "phi", [BT, BD], sd, { spec, site: "query_state.phi" }); // phi(q'), hi + lo (stateSplit)
    const sb = splitOperand(k, "s", [BD, e], sd, { spec, site: "query_state.S" }); // a block of Sin_m / sigma, hi + lo (stateSplit)
    const sigma = STATE_OPERAND_SCALE[sd];
    const zb = k.reg("z", [BD], "f32");
    const numS = k.reg("num_s", [BT, e], "f32");
    const denBlock = k.reg("den_block", [BT], "f32");
    const denS = k.reg("den_s", [BT], "f32");

    k.for(0, c / BT, (rb) => {
      const r0 = rb.mul(BT); // first row of the block, inside the chunk
      k.if(t0.add(r0).lt(a.t), () => { // blocks wholly past t have nothing to do
        const rows = range(t0.add(r0), BT);
        k.load(qs, a.Q, [bi, rows, qh, range(0, d)]); // [BT, d]; rows past t read 0
        k.fill(numS, 0);
        k.fill(denS, 0);
        k.for(0, featureBlocks(spec, BD).count, (fb) => {
          const f0 = fb.mul(BD);
          k.expand(phi.x, qs, p, f0); // [BT, BD] features f0 .. f0+BD-1 (0 past D)
          phi.split();
          k.load(sb.x, a.Sin, [bi, hk, m, range(f0, BD), range(0, e)]); // [BD, e]
          sb.split(1 / sigma);
          k.load(zb, a.Zin, [bi, hk, m, range(f0, BD)]); // [BD]
          mmaSplit(k, numS, phi, sb, { accumulate: true }); // [BT, e] += [BT, BD] @ [BD, e], numS / sigma
          k.map(phi.x, ({ row, col }) => phi.x.at(row, col).mul(zb.at(col))); // phi_f(q') Z_f, in f32
          k.reduce(denBlock, phi.x, "sum", 1); // [BT]
          k.map(denS, ({ row }) => denS.at(row).add(denBlock.at(row)));
        }, { stages: sch.stages });
        // phi(q') = scale^p exp(lam) phi(q), in the log domain; numS is kept / sigma
        combine(k, a, { bi, qh, rows }, e, numS, denS, (r) => lam.at(r0.add(r)).add(a.scale.abs().log().mul(p)), { num: sigma, den: 1 });
      });
    });
  });
}

const build = (spec: Spec, sch: Schedule): Kernel => (spec.deg === 2 ? buildFactored : buildExpanded)(spec, sch);

/** Shared bytes the factored form needs at its peak (its phases reuse each other's bytes, which
 * tileBytes, a sum over every tile, does not see): the denominator's phase or the first group's. */
function factoredPeakBytes(spec: Spec, sch: Schedule): number {
  const W = Math.ceil(spec.d / 16) * 16, BT = sch.blockT, el = spec.dtype === "f32" ? 4 : 2;
  const pairs = spec.dtype === "f32" ? 1 : 2, q = BT * W * (spec.dtype === "f16" ? 2 * 2 + 4 : el);
  const den = q + stateFeatures(spec) * 4 + pairs * W * (W + 8) * el + BT * W * 4;
  const group = q + sch.stages * W * spec.e * 4 + pairs * W * (spec.e + 8) * el;
  return Math.max(den, group);
}

/** p = 2: whole chunks of rows up to 128 (8 warps from 8192 outputs), prefetching the next group's state
 * block where it fits.
 * p >= 4: largest tiles first, whole chunk rows up to 64, feature blocks of 64 then 32. */
function candidates(spec: Spec): Schedule[] {
  if (spec.deg === 2)
    return tileSizes(spec.chunk, 128).flatMap((blockT) => [2, 1].map((stages) => ({ numWarps: blockT * spec.e >= 8192 ? 8 : 4, blockD: 0, blockT, stages })));
  return tileSizes(spec.chunk, 64).flatMap((blockT) => [64, 32, 16].map((blockD) => ({ numWarps: 4, blockD, blockT, stages: 2 })));
}

const fits = (s: Spec, sch: Schedule): boolean =>
  s.deg === 2 ? factoredPeakBytes(s, sch) <= TILE_BUDGET : tileBytes(build(s, sch)) <= TILE_BUDGET;

export const queryState: KernelDef = {
  name: "query_state",
  schedule: (s: Spec): Schedule => candidates(s).find((sch) => fits(s, sch)) ?? candidates(s).at(-1)!,
  scheduleSpace: (s: Spec) =>
    (s.deg === 2
      ? tileSizes(s.chunk, 128).flatMap((blockT) => [4, 8].flatMap((numWarps) => [1, 2].map((stages) => ({ numWarps, blockD: 0, blockT, stages }))))
      : tileSizes(s.chunk, 128).flatMap((blockT) => [16, 32, 64, 128].flatMap((blockD) => [4, 8].map((numWarps) => ({ numWarps, blockD, blockT, stages: 2 })))))
      .filter((sch) => fits(s, sch)),
  build,
};
