// Decoding (kernels/README.md, "Decode" and "State layout and decoding"). The cache holds the `len`
// tokens since the last fold and is chunk m of the chunked algorithm; the state S, Z is Sin_m.
//   decode:       y for the cache's newest `tn` rows = attention inside the cache (step 1) and the
//                 state part (step 4), fused and combined on a common scale.
//   cache_append: copies the new tokens' k, v, logG into cache rows len0 .. len0+tn-1. The cache is
//                 f32 (holding values of the dtype) so that the fold can run with f32 operands.
//   state_copy:   S, Z = Sfinal, Zfinal after a fold (update_state + discounted_cumsum on one chunk).
// The plan (../plan-decode.ts) composes them. A call may be split into segments around a fold, so
// the kernels read the segment's tokens from row q0 of the call's buffers (tq rows in all).

import { f32, i32, max, min, range, select, traceKernel, type Val } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { chunkGates, featureBlocks, firstFitting, safeExpDiff, tileBytes, TILE_BUDGET, tileSizes } from "./common.ts";

/** Query rows of one decode program: tn (usually 1) padded to one mma tile, the padding masked. */
export const DECODE_QUERY_ROWS = 16;

const decodeDoc = "y of the cache's newest tn rows: in-cache attention (online over key blocks) + phi(q')^T S / phi(q').Z, one scale";

function buildDecode(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("decode", sch.numWarps, decodeDoc, (k) => {
    const { deg: p, d, e, chunk: c, dtype } = spec;
    const D = stateFeatures(spec);
    const BQ = DECODE_QUERY_ROWS, BK = sch.blockT, BD = sch.blockD;
    if (c % BK !== 0) throw new Error(`decode: blockT ${BK} must divide the chunk ${c}`);
    const b = k.param("b", "i32"), tq = k.param("tq", "i32"), hq = k.param("hq", "i32"), h = k.param("h", "i32");
    const q0 = k.param("q0", "i32"); // the segment's first query in Q and Y
    const tn = k.param("tn", "i32"); // queries of the segment: the cache's newest tn rows
    const len = k.param("len", "i32"); // cache rows in use, the segment's included (tn <= len <= c)
    const scale = k.param("scale", "f32");
    const Q = k.tensor("Q", dtype, [b, tq, hq, d], "in");
    const Kc = k.tensor("Kc", "f32", [b, c, h, d], "in"); // values of the dtype, kept in f32 for the fold
    const Vc = k.tensor("Vc", "f32", [b, c, h, e], "in");
    const Gc = k.tensor("Gc", "f32", [b, c, h], "in");
    const S = k.tensor("S", "f32", [b, h, D, e], "in");
    const Z = k.tensor("Z", "f32", [b, h, D], "in");
    const Y = k.tensor("Y", dtype, [b, tq, hq, e], "out");

    // (query head, batch, query block): the g query heads of a kv head are neighbours, so they share S in L2.
    k.launch(hq, b, tn.add(BQ - 1).idiv(BQ));
    const qh = k.programId(0), bi = k.programId(1), qb = k.programId(2);
    const hk = qh.idiv(hq.idiv(h)); // the kv head of this query head
    const r0 = qb.mul(BQ); // the block's first query, within the segment
    const i0 = len.sub(tn).add(r0); // its cache position
    const rowOk = (row: Val): Val => r0.add(row).lt(tn); // rows past the segment are padding

    const { lam } = chunkGates(k, Gc, bi, hk, i32(0), c); // lam [c], the in-cache log gate
    const lamQ = k.reg("lam_q", [BQ], "f32"); // lam_i of the query rows (clamped on padding rows)
    k.map(lamQ, ({ row }) => lam.at(min(i0.add(row), c - 1)));
    const qt = k.shared("q", [BQ, d], dtype);
    k.load(qt, Q, [bi, range(q0.add(r0), BQ), qh, range(0, d)]); // [BQ, d]; rows past tq read 0

    // State part: numS = phi(q)^T S, denS = phi(q).Z; phi(q') = exp(c_i) phi(q) for q' = scale q
    // exp(lam_i / p), c_i = lam_i + p log|scale|, applied in the combine's exponent (as query_state
    // does: no scale whose result is finite under- or overflows). In f32: decoding is bound by
    // reading S (f32 in memory) whatever the operand type, and phi(q).S cancels heavily at p = 4,
    // where bf16 operands here gave 2e-2 (README, "State layout").
    const qs = k.shared("q_state", [BQ, d], "f32");
    k.map(qs, ({ row, col }) => select(rowOk(row), qt.at(row, col), 0));
    const stateLog = (row: Val): Val => lamQ.at(row).add(scale.abs().log().mul(p)); // c_i
    const phi = k.shared("phi", [BQ, BD], "f32");
    const sb = k.shared("s", [BD, e], "f32");
    const zb = k.reg("z", [BD], "f32");
    const numS = k.reg("num_s", [BQ, e], "f32");
    const denParts = k.reg("den_parts", [BQ, BD], "f32"); // per-feature terms of phi(q').Z, summed at the end
    const denS = k.reg("den_s", [BQ], "f32");
    k.fill(numS, 0);
    k.fill(denParts, 0);
    k.for(0, featureBlocks(spec, BD).count, (fb) => {
      const f0 = fb.mul(BD);
      k.expand(phi, qs, p, f0); // [BQ, BD] features f0 .. f0+BD-1 (0 past D)
      k.load(sb, S, [bi, hk, range(f0, BD), range(0, e)]); // [BD, e]; features past D read 0
      k.load(zb, Z, [bi, hk, range(f0, BD)]); // [BD]
      k.mma(numS, phi, sb, { accumulate: true }); // [BQ, e] += [BQ, BD] @ [BD, e]
      k.map(denParts, ({ row, col }) => denParts.at(row, col).add(phi.at(row, col).mul(zb.at(col))));
    }, { stages: sch.stages });
    k.reduce(denS, denParts, "sum", 1); // [BQ]

    // Attention part, online over the cache's key blocks (flash attention's running max):
    // w_ij = p log|s_ij| + lam_i - lam_j for j <= i; numA, denA carry exp(-mRun_i).
    const kt = k.shared("k", [BK, d], dtype);
    const vt = k.shared("v", [BK, e], dtype);
    const qk = k.reg("qk", [BQ, BK], "f32");
    const w = k.reg("w", [BQ, BK], "f32");
    const mBlk = k.reg("m_blk", [BQ], "f32");
    const mNew = k.reg("m_new", [BQ], "f32");
    const mRun = k.reg("m_run", [BQ], "f32");
    const pt = k.shared("p", [BQ, BK], dtype); // exp(w - mNew) in [0, 1], rounded for the second mma
    const pSum = k.reg("p_sum", [BQ], "f32");
    const numA = k.reg("num_a", [BQ, e], "f32");
    const denA = k.reg("den_a", [BQ], "f32");
    const vBad = k.shared("v_bad", [BK, e], "f32"); // non-finite v in the key block, counted down its rows
    const vSeen = k.reg("v_seen", [BQ, e], "f32"); // 1 where a key j <= i had a non-finite v_jc
    k.fill(vSeen, 0);
    k.fill(mRun, -Infinity);
    k.fill(numA, 0);
    k.fill(denA, 0);
    const rescale = (row: Val): Val => safeExpDiff(mRun.at(row), mNew.at(row)); // exp(mRun - mNew), 0 while both are -inf
    k.for(0, len.add(BK - 1).idiv(BK), (kb) => {
      const j0 = kb.mul(BK);
      k.load(kt, Kc, [bi, range(j0, BK), hk, range(0, d)]); // [BK, d], exact in the dtype
      k.load(vt, Vc, [bi, range(j0, BK), hk, range(0, e)]); // [BK, e]
      // A non-finite v_j must reach the queries i >= j only (the masked weights are 0, and 0 * inf
      // = NaN): it enters the mma as 0, and the rows it reaches are NaN in the end (vSeen).
      k.map(vBad, ({ row, col }) => select(j0.add(row).lt(len).and(vt.at(row, col).isFinite().not()), 1, 0));
      k.cumsum(vBad, vBad, 0); // [BK, e]: non-finite v_jc of this block with j <= j0 + row
      k.map(vSeen, ({ row, col }) => {
        const last = i0.add(row).sub(j0); // the query's position in this block of keys
        return select(last.ge(0).and(vBad.at(min(last, BK - 1), col).gt(0)), 1, vSeen.at(row, col));
      });
      k.map(vt, ({ row, col }) => select(j0.add(row).lt(len).and(vt.at(row, col).isFinite()), vt.at(row, col), 0)); // rows past len are stale: 0 * stale must not be NaN
      k.mma(qk, qt, kt, { transB: true }); // [BQ, BK] = [BQ, d] @ [d, BK]
      k.map(w, ({ row, col }) =>
        select(
          rowOk(row).and(j0.add(col).le(i0.add(row))),
          qk.at(row, col).mul(scale).abs().log().mul(p).add(lamQ.at(row)).sub(lam.at(j0.add(col))),
          -Infinity,
        ),
      );
      k.reduce(mBlk, w, "max", 1);
      k.map(mNew, ({ row }) => max(mRun.at(row), mBlk.at(row)));
      k.map(pt, ({ row, col }) => safeExpDiff(w.at(row, col), mNew.at(row)));
      k.reduce(pSum, pt, "sum", 1); // of the rounded weights, as the mma sees them
      k.map(numA, ({ row, col }) => numA.at(row, col).mul(rescale(row)));
      k.map(denA, ({ row }) => denA.at(row).mul(rescale(row)).add(pSum.at(row)));
      k.mma(numA, pt, vt, { accumulate: true }); // [BQ, e] += [BQ, BK] @ [BK, e]
      k.map(mRun, ({ row }) => mNew.at(row));
    }, { stages: sch.stages });

    // Combine on the common scale M_i = max(mA_i, c_i), then divide.
    const M = (row: Val): Val => max(mRun.at(row), stateLog(row));
    const fa = (row: Val): Val => safeExpDiff(mRun.at(row), M(row)); // 0 on rows with no attention weight
    const fs = (row: Val): Val => safeExpDiff(stateLog(row), M(row));
    const den = denA, num = numA; // in place: den_i, num_i on the common scale
    k.map(den, ({ row }) => denA.at(row).mul(fa(row)).add(denS.at(row).mul(fs(row))));
    k.map(num, ({ row, col }) => numA.at(row, col).mul(fa(row)).add(numS.at(row, col).mul(fs(row))));
    // Store the segment's rows only: Y's next rows may belong to a later segment of the same call.
    const yRow = k.reg("y_row", [e], "f32");
    k.for(0, min(tn.sub(r0), BQ), (r) => {
      k.map(yRow, ({ row }) => select(den.at(r).ne(0), num.at(r, row).div(den.at(r)), f32(0))); // 0 when every weight is 0 (NaN stays NaN)
      // non-finite is NaN, as in the forward (README "Non-finite inputs")
      k.map(yRow, ({ row }) => select(vSeen.at(r, row).gt(0).or(yRow.at(row).isFinite().not()), NaN, yRow.at(row)));
      k.store(Y, [bi, q0.add(r0).add(r), qh, range(0, e)], yRow); // rounded to the dtype by the store
    });
  });
}

/** Largest tiles first: key blocks up to 64 rows, feature blocks of 64, 32, 16. */
function decodeCandidates(spec: Spec): Schedule[] {
  return tileSizes(spec.chunk, 64).flatMap((blockT) => [64, 32, 16].map((blockD) => ({ numWarps: 4, blockD, blockT, stages: 2 })));
}

export const decode: KernelDef = {
  name: "decode",
  schedule: (s: Spec): Schedule => firstFitting(s, decodeCandidates(s), buildDecode),
  scheduleSpace: (s: Spec) =>
    tileSizes(s.chunk, 128)
      .flatMap((blockT) => [16, 32, 64, 128].flatMap((blockD) => [4, 8].flatMap((numWarps) => [1, 2].map((stages) => ({ numWarps, blockD, blockT, stages })))))
      .filter((sch) => tileBytes(buildDecode(s, sch)) <= TILE_BUDGET),
  build: buildDecode,
};

const appendDoc = "Kc, Vc, Gc rows len0 .. len0+tn-1 = K, V, logG rows q0 .. q0+tn-1 (one token of one kv head per program)";

function buildCacheAppend(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("cache_append", sch.numWarps, appendDoc, (k) => {
    const { d, e, chunk: c, dtype } = spec;
    const b = k.param("b", "i32"), tq = k.param("tq", "i32"), h = k.param("h", "i32");
    const q0 = k.param("q0", "i32"), tn = k.param("tn", "i32"), len0 = k.param("len0", "i32");
    const K = k.tensor("K", dtype, [b, tq, h, d], "in");
    const V = k.tensor("V", dtype, [b, tq, h, e], "in");
    const logG = k.tensor("logG", "f32", [b, tq, h], "in");
    const Kc = k.tensor("Kc", "f32", [b, c, h, d], "out");
    const Vc = k.tensor("Vc", "f32", [b, c, h, e], "out");
    const Gc = k.tensor("Gc", "f32", [b, c, h], "out");

    k.launch(tn, h, b); // (token, kv head, batch)
    const ti = k.programId(0), hk = k.programId(1), bi = k.programId(2);
    const src = q0.add(ti), dst = len0.add(ti);
    const kt = k.reg("k", [d], dtype);
    const vt = k.reg("v", [e], dtype);
    const gt = k.reg("g", [1], "f32");
    k.load(kt, K, [bi, src, hk, range(0, d)]); // [d]
    k.store(Kc, [bi, dst, hk, range(0, d)], kt);
    k.load(vt, V, [bi, src, hk, range(0, e)]); // [e]
    k.store(Vc, [bi, dst, hk, range(0, e)], vt);
    k.load(gt, logG, [bi, src, range(hk, 1)]); // [1]
    k.store(Gc, [bi, dst, range(hk, 1)], gt);
  });
}

export const cacheAppend: KernelDef = {
  name: "cache_append",
  schedule: (): Schedule => ({ numWarps: 1, blockD: 1, blockT: 1, stages: 1 }),
  scheduleSpace: () => [{ numWarps: 1, blockD: 1, blockT: 1, stages: 1 }],
  build: buildCacheAppend,
};

const copyDoc = "S, Z = Sfinal, Zfinal (the state after a fold), one block of features per program";

function buildStateCopy(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("state_copy", sch.numWarps, copyDoc, (k) => {
    const { e } = spec;
    const D = stateFeatures(spec);
    const BD = sch.blockD;
    const b = k.param("b", "i32"), h = k.param("h", "i32");
    const Sfinal = k.tensor("Sfinal", "f32", [b, h, D, e], "in");
    const Zfinal = k.tensor("Zfinal", "f32", [b, h, D], "in");
    const S = k.tensor("S", "f32", [b, h, D, e], "out");
    const Z = k.tensor("Z", "f32", [b, h, D], "out");

    k.launch(featureBlocks(spec, BD).count, b.mul(h)); // (feature block, batch*kv head)
    const fb = k.programId(0), bi = k.programId(1).idiv(h), hk = k.programId(1).mod(h);
    const feats = range(fb.mul(BD), BD);
    const st = k.reg("s", [BD, e], "f32");
    const zt = k.reg("z", [BD], "f32");
    k.load(st, Sfinal, [bi, hk, feats, range(0, e)]); // [BD, e]; features past D read 0, stores skip them
    k.store(S, [bi, hk, feats, range(0, e)], st);
    k.load(zt, Zfinal, [bi, hk, feats]); // [BD]
    k.store(Z, [bi, hk, feats], zt);
  });
}

export const stateCopy: KernelDef = {
  name: "state_copy",
  schedule: (): Schedule => ({ numWarps: 4, blockD: 64, blockT: 1, stages: 1 }),
  scheduleSpace: () => [32, 64, 128].map((blockD) => ({ numWarps: 4, blockD, blockT: 1, stages: 1 })),
  build: buildStateCopy,
};
