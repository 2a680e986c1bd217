// Causal p-th power attention, parallel over query blocks (forward step 1 of SPEC.md's chunked
// algorithm, and the whole quadratic form). Query i sees key j when j <= i and both lie in one
// window of `window` tokens (the chunk; a window >= t is the quadratic form). With s_ij = scale
// q_i.k_j and the gates summed between them,
//   w_ij = p log|s_ij| + (lam_i - lam_j)   (visible and s_ij != 0, else -inf),
//   lam_i - lam_j = logG[j+1] + ... + logG[i],
//   maxA_i = max_j w_ij,  numA_i = sum_j exp(w_ij - maxA_i) v_j,  denA_i = sum_j exp(w_ij - maxA_i).
// One program owns B query rows [q0, q0 + B) of one query head (grid: query blocks x heads x
// batch). It scores its diagonal key block first, then the window's earlier key blocks from the
// nearest to the farthest, keeping flash attention's running row max and rescaling its sums.
//
// The gate sums are formed from block-local sums only, so that their rounding does not grow with
// the position (a prefix sum over the whole sequence would lose the small gates of late tokens):
//   lam_i - lam_j = cq_i + ck_j,
//   cq_i = logG[q0] + ... + logG[i]                    (the query block's inclusive cumsum),
//   ck_j = -cq_j                                       (diagonal block: j in the query block),
//   ck_j = (logG[j+1] + ... + logG[k0+B-1]) + G_k0    (earlier block [k0, k0+B)),
//   G_k0 = logG[k0+B] + ... + logG[q0-1]               (the gates between the two blocks),
// G growing by one block's total per step of the walk away from the diagonal.
//
// Off the diagonal (every key before every query row) the gate factor splits, exp(cq_i + ck_j) =
// exp(cq_i) exp(ck_j), both <= 1, so with r_ij = |s_ij| exp(ck_j / p) the weight relative to the
// row's running max M_i (a log-weight) is exp(p log r_ij + cq_i - M_i) = (r_ij g_i)^p, g_i =
// exp((cq_i - M_i) / p): the block's max is a max over r (one logarithm per row), and no score
// needs a logarithm or an exponential. The diagonal block keeps the log-space form (there
// ck_j = -cq_j >= 0, whose exponential could overflow).
//
// Two epilogues: `attention` returns numA, denA, maxA for query_state's combine (the chunked
// path); `attention_y` returns y = numA / denA (Y in the dtype, yF in f32 for the backward) and
// lse = maxA + log denA (the quadratic path, no state at all).

import { max, range, select, traceKernel, type KernelBuilder, type TensorRef, type Val } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { dtypeBytes } from "../dtype.ts";
import { holdsNonFinite, lastFirst, safeExpDiff, TILE_BUDGET, tileSizes, zeroNonFiniteIn } from "./common.ts";

type Epilogue = "parts" | "y";

const DOCS: Record<Epilogue, string> = {
  parts: "numA, denA, maxA: causal p-th power attention inside each window, stabilised by the row max of log-weights",
  y: "Y, lse: causal p-th power attention over the whole sequence (the quadratic form), normalised",
};

interface Io {
  readonly b: Val; readonly t: Val; readonly hq: Val; readonly h: Val; readonly window: Val; readonly scale: Val;
  readonly Q: TensorRef; readonly K: TensorRef; readonly V: TensorRef; readonly logG: TensorRef;
}

function declare(k: KernelBuilder, spec: Spec): Io {
  const { d, e, dtype } = spec;
  const b = k.param("b", "i32"), t = k.param("t", "i32"), hq = k.param("hq", "i32"), h = k.param("h", "i32");
  // the window in tokens, a multiple of the block (the chunk, or >= t for the quadratic form)
  const window = k.param("window", "i32"), scale = k.param("scale", "f32");
  return {
    b, t, hq, h, window, scale,
    Q: k.tensor("Q", dtype, [b, t, hq, d], "in"),
    K: k.tensor("K", dtype, [b, t, h, d], "in"),
    V: k.tensor("V", dtype, [b, t, h, e], "in"),
    logG: k.tensor("logG", "f32", [b, t, h], "in"),
  };
}

function build(spec: Spec, sch: Schedule, epilogue: Epilogue): Kernel {
  const name = epilogue === "parts" ? "attention" : "attention_y";
  return traceKernel(name, sch.numWarps, DOCS[epilogue], (k) => {
    const { deg: p, e, dtype } = spec;
    const B = sch.blockT;
    const io = declare(k, spec);
    const tq = (name: string, dt: "f32" | typeof dtype, vec: boolean): TensorRef =>
      k.tensor(name, dt, vec ? [io.b, io.t, io.hq, e] : [io.b, io.t, io.hq], "out");
    const out = epilogue === "parts"
      ? { kind: "parts" as const, numA: tq("numA", "f32", true), denA: tq("denA", "f32", false), maxA: tq("maxA", "f32", false) }
      : { kind: "y" as const, Y: tq("Y", dtype, true), yF: tq("yF", "f32", true), lse: tq("lse", "f32", false) };

    k.launch(io.t.add(B - 1).idiv(B), io.hq, io.b); // (query block, query head, batch)
    const q0 = lastFirst(k, io.t, B), qh = k.programId(1), bi = k.programId(2);
    const hk = qh.idiv(io.hq.idiv(io.h)); // the kv head of this query head
    const earlier = q0.sub(q0.idiv(io.window).mul(io.window)).idiv(B); // key blocks of the window before q0

    const qt = k.shared("q", [B, spec.d], dtype); // mma operands in the spec's dtype
    const kt = k.shared("k", [B, spec.d], dtype);
    const vt = k.shared("v", [B, e], dtype);
    const gq = k.reg("gq", [B], "f32"); // the query block's gates
    const cq = k.reg("cq", [B], "f32"); // their inclusive cumsum
    const gk = k.reg("gk", [B], "f32"); // a key block's gates
    const sk = k.reg("sk", [B], "f32"); // their suffix sums
    const ck = k.reg("ck", [B], "f32"); // the key side of lam_i - lam_j (the diagonal block's)
    const gap = k.reg("gap", [1], "f32"); // G: the gates between the key block's end and q0
    const w = k.reg("w", [B, B], "f32"); // scores, then log-weights
    const pt = k.reg("p", [B, B], dtype); // exp(w - rowMax) in [0, 1], the mma operand
    const acc = k.reg("acc", [B, e], "f32");
    const vBad = k.shared("v_bad", [B, e], "bf16"); // its non-finite entries counted down the rows (<= B: exact in bf16)
    const rowMax = k.reg("row_max", [B], "f32");
    const rowSum = k.reg("row_sum", [B], "f32");
    const blockMax = k.reg("block_max", [B], "f32");
    const blockSum = k.reg("block_sum", [B], "f32");
    const alpha = k.reg("alpha", [B], "f32"); // rescale of the old sums: exp(oldMax - newMax)
    const shift = k.reg("shift", [B], "f32"); // the row max, 0 while it is -inf
    const fk = k.reg("fk", [B], "f32"); // a key block's column factors |scale| exp(ck_j / p)
    const rowFactor = k.reg("row_factor", [B], "f32"); // g_i = exp((cq_i - shift_i) / p)

    k.load(qt, io.Q, [bi, range(q0, B), qh, range(0, spec.d)]); // [B, d]; rows past t read 0
    k.load(gq, io.logG, [bi, range(q0, B), hk]); // [B]; past t: 0, a gate of 1
    k.cumsum(cq, gq, 0);
    k.fill(acc, 0);
    k.fill(rowSum, 0);
    k.fill(rowMax, -Infinity);
    k.fill(gap, 0);

    /** Score key block [k0, k0 + B) and fold it into the running sums. */
    const keyBlock = (k0: Val, diagonal: boolean): void => {
      k.load(kt, io.K, [bi, range(k0, B), hk, range(0, spec.d)]); // [B, d]
      k.load(vt, io.V, [bi, range(k0, B), hk, range(0, e)]); // [B, e]
      if (!diagonal) k.load(gk, io.logG, [bi, range(k0, B), hk]); // [B]
      // the scores first: on sm_90a the key side of the gate sums runs while the tensor cores
      // compute them (the lowering's wgmma waits where w is first used)
      k.mma(w, qt, kt, { transB: true }); // [B, B] = q k^T
      if (diagonal) k.map(ck, ({ row }) => cq.at(row).neg());
      else {
        k.cumsum(sk, gk, 0, { reverse: true }); // sk[j] = logG[k0+j] + ... + logG[k0+B-1]
        // |scale| f_j, f_j = exp(ck_j / p) in [0, 1], ck_j = (sk_j - logG[k0+j]) + G (header): the
        // scale rides on the column factor, one multiply per key instead of one per score
        k.map(fk, ({ row }) => sk.at(row).sub(gk.at(row)).add(gap.at(0)).div(p).exp().mul(io.scale.abs()));
      }
      if (diagonal) {
        // log-weights; log|s| = -inf where s = 0 (no weight), so only the causal mask needs a select
        const logWeight = (row: Val, col: Val): Val => w.at(row, col).mul(io.scale).abs().log().mul(p).add(cq.at(row)).add(ck.at(col));
        k.map(w, ({ row, col }) => select(col.le(row), logWeight(row, col), -Infinity));
        k.reduce(blockMax, w, "max", 1); // [B]
      } else {
        // Off the diagonal the gate factor of (i, j) splits into a row's and a column's, each <= 1
        // (cq_i <= 0, ck_j <= 0), so the weight is exp(cq_i) r_ij^p with r_ij = |s_ij| exp(ck_j / p):
        // the row max is taken over r in linear space and each weight is (r_ij g_i)^p, no logarithm
        // or exponential per score (header). A key whose gate product to the block is below
        // exp(-87 p) gets r = 0, where the log-space form would keep its relative weight: it
        // matters only on a row whose every nearer weight is as small.
        k.map(w, ({ row, col }) => w.at(row, col).abs().mul(fk.at(col))); // r_ij = |q_i.k_j| |scale| f_j
        k.reduce(blockMax, w, "max", 1); // [B]: max_j r_ij, then as a log-weight
        k.map(blockMax, ({ row }) => blockMax.at(row).log().mul(p).add(cq.at(row)));
      }
      k.map(alpha, ({ row }) => safeExpDiff(rowMax.at(row), max(rowMax.at(row), blockMax.at(row))));
      k.map(rowMax, ({ row }) => max(rowMax.at(row), blockMax.at(row)));
      // the shift of each row: its max, or 0 on a row with no weight yet (all w = -inf: exp gives 0)
      k.map(shift, ({ row }) => select(rowMax.at(row).eq(-Infinity), 0, rowMax.at(row)));
      if (diagonal) k.map(pt, ({ row, col }) => w.at(row, col).sub(shift.at(row)).exp()); // [B, B] in [0, 1]
      else {
        k.map(rowFactor, ({ row }) => cq.at(row).sub(shift.at(row)).div(p).exp()); // g_i = exp((cq_i - shift_i) / p)
        k.map(pt, ({ row, col }) => w.at(row, col).mul(rowFactor.at(row)).pow(p)); // (r_ij g_i)^p in [0, 1]
      }
      // The sum of the rounded weights, as the mma sees them: y is a convex combination of the v_j.
      // (Summing the f32 weights saves an instruction a score, but the backward, which takes
      // dy . y as sum_j P_ij dP_ij, then lost a factor 2 of its margin at p = 4: 8.5e-3 against
      // 3.5e-3 of the 2e-2 tolerance, test/backward.test.ts, 2026-12-07.)
      k.reduce(blockSum, pt, "sum", 1);
      k.map(rowSum, ({ row }) => rowSum.at(row).mul(alpha.at(row)).add(blockSum.at(row)));
      k.map(acc, ({ row, col }) => acc.at(row, col).mul(alpha.at(row)));
      if (!diagonal) {
        // every key precedes every query row, so a non-finite v_j reaches every row, as in the reference
        k.mma(acc, pt, vt, { accumulate: true }); // [B, e] += [B, B] @ [B, e]
        k.map(gap, ({ row }) => gap.at(row).add(sk.at(0))); // a [1] tile: row is 0
        return;
      }
      // The diagonal block: the mma multiplies the masked weights (0) by v_j too, and 0 * inf would
      // put NaN in the rows before j. So when the block holds a non-finite v (the block votes;
      // rare), row i, column c of the sums becomes NaN when some v_jc, j <= i, is not finite (the
      // reference gives inf or NaN there; README "Non-finite inputs"; NaN stays NaN through every
      // sum after), and v enters the mma with its non-finite entries as 0. Otherwise v enters as it
      // is: the column count costs more than the rest of the block (Nsight Compute, 2026-12-07).
      k.if(holdsNonFinite(k, vt), () => {
        k.map(vBad, ({ row, col }) => select(vt.at(row, col).isFinite(), 0, 1));
        k.cumsum(vBad, vBad, 0); // [B, e]: non-finite v_jc with j <= row
        k.map(acc, ({ row, col }) => select(vBad.at(row, col).gt(0), NaN, acc.at(row, col)));
        zeroNonFiniteIn(k, vt);
      });
      k.mma(acc, pt, vt, { accumulate: true });
    };

    keyBlock(q0, true);
    k.for(0, earlier, (i) => keyBlock(q0.sub(i.add(1).mul(B)), false), { stages: sch.stages });

    const rows = range(q0, B);
    if (out.kind === "parts") {
      k.store(out.numA, [bi, rows, qh, range(0, e)], acc);
      k.store(out.denA, [bi, rows, qh], rowSum);
      k.store(out.maxA, [bi, rows, qh], rowMax);
      return;
    }
    // y = num / den (0 where den = 0: no weight at all), and a non-finite y is NaN (README
    // "Non-finite inputs": the same answer the chunked path gives)
    const lse = k.reg("lse_t", [B], "f32");
    k.map(acc, ({ row, col }) => {
      const y = select(rowSum.at(row).ne(0), acc.at(row, col).div(rowSum.at(row)), 0); // != 0: NaN stays NaN
      return select(y.isFinite(), y, NaN);
    });
    k.map(lse, ({ row }) => select(rowSum.at(row).ne(0), rowSum.at(row).log().add(rowMax.at(row)), -Infinity));
    k.store(out.Y, [bi, rows, qh, range(0, e)], acc); // rounded to the dtype by the store
    k.store(out.yF, [bi, rows, qh, range(0, e)], acc); // y in f32, for the backward's dy . y (attention_bwd_prep_y)
    k.store(out.lse, [bi, rows, qh], lse);
  });
}

/** Largest blocks first; a warp owns 16 query rows. The chunked path's blocks divide the chunk. */
function candidates(cap: number): Schedule[] {
  return tileSizes(cap, 128).map((blockT) => ({ numWarps: blockT / 16, blockD: 0, blockT, stages: 2 }));
}

/** Shared-memory bytes of a schedule: the shared tiles, the streamed k, v and gates once per stage,
 * each row of a 2-D tile with sm_80's 16 bytes of padding (lower/pad-shared.ts). The `reg` tiles
 * (scores, weights, the accumulator, row statistics) are registers in the lowering
 * (place-fragments), 4 B / 16 per thread and element at 16 rows a warp: B = 128, d = e = 64 takes
 * 128 of them per thread. */
function sharedBytes(s: Spec, sch: Schedule, epilogue: Epilogue): number {
  const k = build(s, sch, epilogue);
  const B = sch.blockT, row = (cols: number, bytes: number): number => cols * bytes + 16;
  const shared = k.buffers.filter((b) => b.type.space === "shared")
    .reduce((sum, b) => sum + (b.type.shape.length === 2 ? b.type.shape[0]! * row(b.type.shape[1]!, dtypeBytes(b.type.dtype)) : b.type.shape[0]! * dtypeBytes(b.type.dtype)), 0);
  // f32 mmas run on FMA, which take no operand from registers: the weights p stay a shared tile
  const weights = s.dtype === "f32" ? B * row(B, 4) : 0;
  return shared + weights + (sch.stages - 1) * B * (row(s.d, dtypeBytes(s.dtype)) + row(s.e, dtypeBytes(s.dtype)) + 4); // + an f32 gate a row
}

/** Shared memory of an SM that blocks share (H100 and H200: 228 KB, less 1 KB reserved per block). */
const SM_SHARED_BYTES = 226 * 1024;

/** The sweep: blocks and warps, pipeline stages, and for blocks of 4 warps or more two (4 warps: or three) blocks an SM
 * (minBlocks 2: at one block of 8 warps an SM, 185 registers a thread, Nsight Compute saw
 * attention_y latency-bound on the H100, 2026-12-07). */
function space(cap: number, s: Spec, epilogue: Epilogue): Schedule[] {
  return tileSizes(cap, 128)
    .flatMap((blockT) => [2, 4, 8].filter((w) => 16 * w <= blockT).flatMap((numWarps) => [1, 2, 3].flatMap((stages) =>
      (numWarps === 4 ? [1, 2, 3] : numWarps > 4 ? [1, 2] : [1]).map((minBlocks) => ({ numWarps, blockD: 0, blockT, stages, ...(minBlocks > 1 ? { minBlocks } : {}) })))))
    .filter((sch) => sharedBytes(s, sch, epilogue) <= ((sch.minBlocks ?? 1) > 1 ? SM_SHARED_BYTES / sch.minBlocks! : TILE_BUDGET));
}

const fitting = (s: Spec, list: readonly Schedule[], epilogue: Epilogue): Schedule =>
  list.find((sch) => sharedBytes(s, sch, epilogue) <= TILE_BUDGET) ?? list[list.length - 1]!;

/** The chunked path's attention: windows of one chunk (blocks divide it). */
export const attention: KernelDef = {
  name: "attention",
  schedule: (s) => fitting(s, candidates(s.chunk), "parts"),
  scheduleSpace: (s) => space(s.chunk, s, "parts"),
  build: (s, sch) => build(s, sch, "parts"),
};

/** The quadratic path: one window over the whole sequence; nothing here depends on the chunk. */
export const attentionY: KernelDef = {
  name: "attention_y",
  chunkFree: true,
  schedule: (s) => fitting(s, candidates(128), "y"),
  scheduleSpace: (s) => space(128, s, "y"),
  build: (s, sch) => build(s, sch, "y"),
};
