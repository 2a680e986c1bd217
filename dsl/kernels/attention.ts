// Attention inside one chunk (forward step 1 of SPEC.md's chunked algorithm). For query i and key
// j of chunk m, with s_ij = scale q_i.k_j and lam the in-chunk cumulative log gate:
//   w_ij = p log|s_ij| + lam_i - lam_j   (j <= i and s_ij != 0, else -inf)
//   maxA_i = max_j w_ij,   numA_i = sum_j exp(w_ij - maxA_i) v_j,   denA_i = sum_j exp(w_ij - maxA_i)
// Flash-attention style: the chunk is cut into blocks of BT rows; each query block streams the
// key blocks at or before it, keeping a running row max and rescaling its sums when it grows.

import { max, range, select, traceKernel } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { chunkGates, firstFitting, safeExpDiff, tileBytes, TILE_BUDGET, tileSizes } from "./common.ts";

const doc = "numA, denA, maxA: causal p-th power attention inside each chunk, stabilised by the row max of log-weights";

function build(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("attention", sch.numWarps, doc, (k) => {
    const { deg: p, d, e, chunk: c, dtype } = spec;
    const BT = sch.blockT;
    if (c % BT !== 0) throw new Error(`attention: blockT ${BT} must divide the chunk ${c}`);
    const b = k.param("b", "i32"), t = k.param("t", "i32"), hq = k.param("hq", "i32"), h = k.param("h", "i32");
    const n = k.param("n", "i32"), scale = k.param("scale", "f32");
    const Q = k.tensor("Q", dtype, [b, t, hq, d], "in");
    const K = k.tensor("K", dtype, [b, t, h, d], "in");
    const V = k.tensor("V", dtype, [b, t, h, e], "in");
    const logG = k.tensor("logG", "f32", [b, t, h], "in");
    const numA = k.tensor("numA", "f32", [b, t, hq, e], "out");
    const denA = k.tensor("denA", "f32", [b, t, hq], "out");
    const maxA = k.tensor("maxA", "f32", [b, t, hq], "out");

    k.launch(n, hq, b); // (chunk, query head, batch)
    const m = k.programId(0), qh = k.programId(1), bi = k.programId(2);
    const hk = qh.idiv(hq.idiv(h)); // the kv head of this query head
    const t0 = m.mul(c);

    const { lam } = chunkGates(k, logG, bi, hk, t0, c); // lam [c]
    const qt = k.shared("q", [BT, d], dtype); // mma operands in the spec's dtype
    const kt = k.shared("k", [BT, d], dtype);
    const vt = k.shared("v", [BT, e], dtype);
    const w = k.reg("w", [BT, BT], "f32"); // scores, then log-weights
    const pt = k.shared("p", [BT, BT], dtype); // exp(w - rowMax) in [0, 1]
    const acc = k.reg("acc", [BT, e], "f32");
    const vFinite = k.shared("v_finite", [BT, e], dtype); // the diagonal block's v, non-finite entries as 0
    const vBad = k.shared("v_bad", [BT, e], "f32"); // its non-finite entries, counted down the rows
    const rowMax = k.reg("row_max", [BT], "f32");
    const rowSum = k.reg("row_sum", [BT], "f32");
    const blockMax = k.reg("block_max", [BT], "f32");
    const blockSum = k.reg("block_sum", [BT], "f32");
    const alpha = k.reg("alpha", [BT], "f32"); // rescale of the old sums: exp(oldMax - newMax)

    k.for(0, c / BT, (qb) => {
      const q0 = qb.mul(BT); // first query row of the block, inside the chunk
      k.if(t0.add(q0).lt(t), () => { // blocks wholly past t have nothing to do
        k.load(qt, Q, [bi, range(t0.add(q0), BT), qh, range(0, d)]); // [BT, d]; rows past t read 0
        k.fill(acc, 0);
        k.fill(rowSum, 0);
        k.fill(rowMax, -Infinity);
        k.for(0, qb.add(1), (kb) => {
          const k0 = kb.mul(BT); // first key row of the block
          k.load(kt, K, [bi, range(t0.add(k0), BT), hk, range(0, d)]); // [BT, d]
          k.load(vt, V, [bi, range(t0.add(k0), BT), hk, range(0, e)]); // [BT, e]
          k.mma(w, qt, kt, { transB: true }); // [BT, BT] = q k^T
          k.map(w, ({ row, col }) => {
            const s = w.at(row, col).mul(scale);
            const live = k0.add(col).le(q0.add(row)).and(s.ne(0)); // causal, and s^p > 0
            return select(live, s.abs().log().mul(p).add(lam.at(q0.add(row))).sub(lam.at(k0.add(col))), -Infinity);
          });
          k.reduce(blockMax, w, "max", 1); // [BT]
          k.map(alpha, ({ row }) => safeExpDiff(rowMax.at(row), max(rowMax.at(row), blockMax.at(row))));
          k.map(rowMax, ({ row }) => max(rowMax.at(row), blockMax.at(row)));
          k.map(pt, ({ row, col }) => safeExpDiff(w.at(row, col), rowMax.at(row))); // [BT, BT], 0 on empty rows
          k.reduce(blockSum, pt, "sum", 1); // sum of the rounded weights, as the mma sees them
          k.map(rowSum, ({ row }) => rowSum.at(row).mul(alpha.at(row)).add(blockSum.at(row)));
          k.map(acc, ({ row, col }) => acc.at(row, col).mul(alpha.at(row)));
          // Blocks below the diagonal: every key precedes every query row, so a non-finite v_j
          // reaches every row, as in the reference.
          k.if(kb.lt(qb), () => k.mma(acc, pt, vt, { accumulate: true })); // [BT, e] += [BT, BT] @ [BT, e]
          // The diagonal block: the mma multiplies the masked weights (0) by v_j too, and 0 * inf
          // would put NaN in the rows before j. So v enters with its non-finite entries as 0, and
          // row i, column c is NaN afterwards when some v_jc, j <= i, was not finite (the
          // reference gives inf or NaN there; README "Non-finite inputs").
          k.if(kb.eq(qb), () => {
            k.map(vBad, ({ row, col }) => select(vt.at(row, col).isFinite(), 0, 1));
            k.cumsum(vBad, vBad, 0); // [BT, e]: non-finite v_jc with j <= row
            k.map(vFinite, ({ row, col }) => select(vt.at(row, col).isFinite(), vt.at(row, col), 0));
            k.mma(acc, pt, vFinite, { accumulate: true });
            k.map(acc, ({ row, col }) => select(vBad.at(row, col).gt(0), NaN, acc.at(row, col)));
          });
        }, { stages: sch.stages });
        k.store(numA, [bi, range(t0.add(q0), BT), qh, range(0, e)], acc);
        k.store(denA, [bi, range(t0.add(q0), BT), qh], rowSum);
        k.store(maxA, [bi, range(t0.add(q0), BT), qh], rowMax);
      });
    });
  });
}

/** Largest blocks first; 4 warps own 16 query rows each at BT = 64. */
function candidates(spec: Spec): Schedule[] {
  return tileSizes(spec.chunk, 64).map((blockT) => ({ numWarps: blockT >= 64 ? 4 : blockT / 16, blockD: 0, blockT, stages: 2 }));
}

export const attention: KernelDef = {
  name: "attention",
  schedule: (s: Spec): Schedule => firstFitting(s, candidates(s), build),
  scheduleSpace: (s: Spec) =>
    tileSizes(s.chunk, 128)
      .flatMap((blockT) => [2, 4, 8].flatMap((numWarps) => [1, 2, 3].map((stages) => ({ numWarps, blockD: 0, blockT, stages }))))
      .filter((sch) => tileBytes(build(s, sch)) <= TILE_BUDGET),
  build,
};
