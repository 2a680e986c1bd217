// Attention backward (README "Backward", attention part), parallel over blocks of B rows, without
// atomics. Query i sees key j when j <= i and both lie in one window of `window` tokens (the chunk;
// a window >= t is the quadratic form), as in the forward (attention.ts). With
//   P_ij = exp(w_ij - lse_i),  w_ij = p log|s_ij| + (lam_i - lam_j),  s_ij = scale q_i.k_j,
//   dP_ij = dy_i.v_j,  W_ij = P_ij (dP_ij - Dy_i),  ds'_ij = p W_ij / (q_i.k_j)  (= scale ds_ij),
// (P_ij = W_ij = ds'_ij = 0 where the pair is not visible or the row has no weight, lse_i = -inf)
// the gradients are
//   dq_i = sum_j ds'_ij k_j,   dk_j = sum_i ds'_ij q_i,   dv_j = sum_i P_ij dy_i,
//   dlam_i = sum_j W_ij - sum_m W_mi   (row sums minus column sums, over the group's query heads).
// A prep per path, and dq and dkv with two epilogues each (the chunked path's parts; `_y`, the
// quadratic path's final outputs, as attention / attention_y):
//   attention_bwd_prep      per (query block, query head, batch): DyA_i = sum_j P_ij dP_ij and
//                           PA_i = sum_j P_ij under the forward's lse (query_state_bwd_dq
//                           completes them with the state's part into Dy and lseB);
//   attention_bwd_prep_y    with no state, Dy_i = dy_i . y_i from the forward's y in f32, and the
//                           later kernels read the forward's lse (prepYBuild).
//   attention_bwd_dq[_y]    per (query block, query head, batch), under lseB (_y: lse) and Dy: dq and the row
//                           sums of W; key blocks: the diagonal one, then the window's earlier ones
//                           from the nearest (the forward's walk).
//   attention_bwd_dkv[_y]   per (key block, kv head, batch), looping over the group's query heads:
//                           dk, dv, and dlam = the group's row sums of W (from attention_bwd_dq) minus
//                           the column sums; query blocks: the diagonal one, then the window's later
//                           ones from the nearest. Its scores are transposed ([keys, queries]), so
//                           P^T and ds^T are the A operands of dv and dk.
// Each (query block, key block) pair is scored twice (dq, dk), the price of having no atomics.
//
// The gate sums are formed from block-local sums only, as in the forward, so that their rounding
// does not grow with the position: lam_i - lam_j = cq_i + ck_j, with cq the query block's inclusive
// cumsum, ck_j = -cq_j on the diagonal block, and on an off-diagonal pair ck_j = (logG[j+1] + ... +
// logG[k0+B-1]) + G, G the gates between the key block's end and the query block's start. The walk
// over key blocks (prep, dq) grows G by each key block's total, the walk over query blocks (dkv) by
// each query block's; the two sum the same block totals in mirrored orders, so the two scorings of a
// pair agree to the f32 rounding of G (bit for bit on the interpreter while G holds at most two
// block totals, a + b = b + a: pairs at most three blocks apart).
//
// Off the diagonal block (every key before every query) the gate factor splits, as in the forward
// (attention.ts): exp(cq_i + ck_j) = exp(cq_i) exp(ck_j), ck_j <= 0 there. With the key's factor
// f_j = exp(ck_j / p) in [0, 1], the query's g_i = exp((cq_i - lse_i) / p) and u_ij = s_ij f_j g_i,
//   P_ij = u_ij^p,   ds'_ij = p W_ij / (q_i.k_j) = (dP_ij - Dy_i) u_ij^(p-1) f_j h_i,   h_i = p scale g_i
// (p even: |s|^p = s^p; and u_ij / (q_i.k_j) = scale f_j g_i), so no score needs a logarithm, an
// exponential or a division (the multi-function unit's work, these kernels' bound): one exponential
// per key and block, and one per query and block in dkv, per query block in prep and dq (their
// normaliser holds over the walk). Where q_i.k_j = 0, u = 0 gives P = 0 and ds' = 0, as the
// log-space form's select does (but NaN where dP_ij - Dy_i is not finite, as in the reference). On
// a row with no weight (lse_i = -inf) g_i = 0 (its exponential would be inf) and dP_ij - Dy_i is
// selected to 0. The diagonal block keeps the log-space form (there ck_j = -cq_j >= 0, whose
// exponential could overflow).
// The limit, as in the forward: a key whose gate product to the block is below exp(-87 p) gets
// f_j = 0, so P = W = ds' = 0, where the log-space form would keep its weight relative to the row's
// normaliser: it matters only on a row whose every nearer weight is as small. (g_i <= (sum over
// the row's own block of |s_ij|^p)^(-1/p) overflows only where all those |s_ij|, s_ii included,
// are below about 1e-38, at the bottom of f32's range.)
//
// Non-finite inputs (README "Non-finite inputs"): the products of the pairs that carry no weight are
// selected to 0, never multiplied by 0; on a diagonal block, where the mma still multiplies the
// masked (zero) ds by k_j (j > i) or q_i (i < j), K and Q enter it with their non-finite entries
// as 0 (the live pairs of such a row or column carry NaN in ds already, from their dot): after the
// scores, a block that votes that its tile holds a non-finite value (rare) zeroes them in place.
//
// Tensors: Q [b,t,hq,d], K [b,t,h,d], V [b,t,h,e], dY [b,t,hq,e] (dtype); logG, lse, lseB, Dy, DyA,
// PA, rowW [b,t,hq] and dlamA [b,t,h] f32; yF [b,t,hq,e] f32 (prep_y); dQa [b,t,hq,d], dKa [b,t,h,d], dVa [b,t,h,e] f32 (parts)
// or dQ, dK, dV in the dtype (_y).

import { f32, range, select, traceKernel, type KernelBuilder, type TensorRef, type Tile, type Val } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { holdsNonFinite, lastFirst, tileBytes, TILE_BUDGET, tileSizes, zeroNonFiniteIn } from "./common.ts";

type Epilogue = "parts" | "y";

interface Io {
  readonly b: Val; readonly t: Val; readonly hq: Val; readonly h: Val; readonly window: Val; readonly scale: Val;
  readonly Q: TensorRef; readonly K: TensorRef; readonly V: TensorRef; readonly logG: TensorRef; readonly dY: TensorRef;
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
    dY: k.tensor("dY", dtype, [b, t, hq, e], "in"),
  };
}

const rowsOf = (k: KernelBuilder, io: Io, name: string, heads: Val, role: "in" | "out"): TensorRef => k.tensor(name, "f32", [io.b, io.t, heads], role);

/** One pair's terms, read from the tiles at the pair's element: the raw dot q_i.k_j, the gate
 * sums cq_i and ck_j, the row's lse_i, and on a diagonal block whether the pair is causal (null
 * off the diagonal, where every pair is). */
interface Pair {
  readonly dot: Val; readonly cq: Val; readonly ck: Val; readonly lse: Val; readonly visible: Val | null;
}

/** The pair carries weight: visible, on a row with some weight (lse > -inf). */
function live(x: Pair): Val {
  const weighted = x.lse.ne(f32(-Infinity));
  return x.visible ? x.visible.and(weighted) : weighted;
}

/** P_ij, 0 where the pair is not live. The same expression in every kernel, so that the two
 * scorings of a pair (dq's and dk's) and prep's agree bit for bit wherever their gate sums do. */
function weight(x: Pair, scale: Val, p: number): Val {
  const w = x.dot.mul(scale).abs().log().mul(p).add(x.cq).add(x.ck);
  return select(live(x), w.sub(x.lse).exp(), f32(0));
}

/** W_ij = P_ij (dP_ij - Dy_i), selected to 0 where not live (a non-finite v_j must not reach it). */
const wTerm = (x: Pair, scale: Val, p: number, dP: Val, Dy: Val): Val => select(live(x), weight(x, scale, p).mul(dP.sub(Dy)), f32(0));

/** ds'_ij = p W_ij / (q_i.k_j), 0 where not live or the dot is 0. */
const dsTerm = (x: Pair, p: number, W: Val): Val => select(live(x).and(x.dot.ne(0)), W.mul(p).div(x.dot), f32(0));

/** Off the diagonal block (header): the key's factor f_j = exp(ck_j / p), in [0, 1] there. */
const keyFactor = (ck: Val, p: number): Val => ck.div(p).exp();

/** Off the diagonal block: the query's factor g_i = exp((cq_i - lse_i) / p), 0 on a row with no
 * weight (lse_i = -inf, where the exponential would be inf). */
const queryFactor = (cq: Val, lse: Val, p: number): Val => select(lse.ne(f32(-Infinity)), cq.sub(lse).div(p).exp(), f32(0));

/** Off the diagonal block: u_ij = s_ij f_j g_i, so that P_ij = u_ij^p. The same expression in every
 * kernel (dkv's tile transposed), so that the scorings of a pair agree bit for bit, as `weight`. */
const scaledScore = (dot: Val, scale: Val, f: Val, g: Val): Val => dot.mul(scale).mul(f).mul(g);

/** Off the diagonal block: dP_ij - Dy_i, 0 on a row with no weight (a non-finite v_j must not reach W or ds' there). */
const dpTerm = (dP: Val, Dy: Val, lse: Val): Val => select(lse.ne(f32(-Infinity)), dP.sub(Dy), f32(0));

/** `t` with its non-finite entries as 0, in place, when the block votes that it holds one (the
 * diagonal block's K or Q once its scores are taken, see the header): the common case costs one
 * vote, no copy. */
const zeroNonFinite = (k: KernelBuilder, t: Tile): void => k.if(holdsNonFinite(k, t), () => zeroNonFiniteIn(k, t));

/** The walk of a query block [q0, q0 + B) over its key blocks: the diagonal one, then the window's
 * earlier ones from the nearest to the farthest (the forward's order). `start` is called once the
 * query block's gate cumsum is in cq, before the walk (the row factors that hold over it); `visit`
 * with the key block's start once its gate sums are in the tiles: lam_i - lam_j = cq[i] + ck[j]. */
function walkKeys(
  k: KernelBuilder, io: Io, B: number, at: { bi: Val; hk: Val; q0: Val }, stages: number,
  start: (cq: Tile) => void, visit: (k0: Val, diagonal: boolean, g: { cq: Tile; ck: Tile }) => void,
): void {
  const { bi, hk, q0 } = at;
  const gq = k.reg("gq", [B], "f32"); // the query block's gates
  const cq = k.reg("cq", [B], "f32"); // their inclusive cumsum
  const gk = k.reg("gk", [B], "f32"); // a key block's gates
  const sk = k.reg("sk", [B], "f32"); // their suffix sums
  const ck = k.reg("ck", [B], "f32"); // the key side of lam_i - lam_j
  const gap = k.reg("gap", [1], "f32"); // G: the gates between the key block's end and q0
  k.load(gq, io.logG, [bi, range(q0, B), hk]); // [B]; past t: 0, a gate of 1
  k.cumsum(cq, gq, 0);
  start(cq);
  k.fill(gap, 0);
  const block = (k0: Val, diagonal: boolean): void => {
    if (diagonal) k.map(ck, ({ row }) => cq.at(row).neg());
    else {
      k.load(gk, io.logG, [bi, range(k0, B), hk]); // [B]
      k.cumsum(sk, gk, 0, { reverse: true }); // sk[j] = logG[k0+j] + ... + logG[k0+B-1]
      k.map(ck, ({ row }) => sk.at(row).sub(gk.at(row)).add(gap.at(0)));
    }
    visit(k0, diagonal, { cq, ck });
    if (!diagonal) k.map(gap, ({ row }) => gap.at(row).add(sk.at(0))); // a [1] tile: row is 0
  };
  block(q0, true);
  const earlier = q0.sub(q0.idiv(io.window).mul(io.window)).idiv(B); // key blocks of the window before q0
  k.for(0, earlier, (i) => block(q0.sub(i.add(1).mul(B)), false), { stages });
}

/** The chunked path's prep: the attention parts DyA and PA of each window, scored under the
 * forward's lse (query_state_bwd_dq adds the state's parts to them). */
function prepBuild(spec: Spec, sch: Schedule): Kernel {
  const name = "attention_bwd_prep";
  const doc = "DyA = rowsum(P * dP), PA = rowsum(P) over each window's keys (the attention parts of dy . y and of 1), in f32";
  return traceKernel(name, sch.numWarps, doc, (k) => {
    const { deg: p, d, e, dtype } = spec;
    const B = sch.blockT;
    const io = declare(k, spec);
    const lse = rowsOf(k, io, "lse", io.hq, "in");
    const out = { DyA: rowsOf(k, io, "DyA", io.hq, "out"), PA: rowsOf(k, io, "PA", io.hq, "out") };

    k.launch(io.t.add(B - 1).idiv(B), io.hq, io.b); // (query block, query head, batch)
    const q0 = k.programId(0).mul(B), qh = k.programId(1), bi = k.programId(2);
    const hk = qh.idiv(io.hq.idiv(io.h)), rows = range(q0, B);

    const qt = k.shared("q", [B, d], dtype);
    const dyt = k.shared("dy", [B, e], dtype);
    const lseI = k.reg("lse_i", [B], "f32");
    const kt = k.shared("k", [B, d], dtype);
    const vt = k.shared("v", [B, e], dtype);
    const dot = k.reg("dot", [B, B], "f32"); // q_i . k_j, then u_ij off the diagonal
    const pw = k.reg("p", [B, B], "f32"); // P
    const pdp = k.reg("p_dp", [B, B], "f32"); // dP, then P * dP
    const part = k.reg("part", [B], "f32");
    const accDy = k.reg("acc_dy", [B], "f32");
    const accP = k.reg("acc_p", [B], "f32");
    const fk = k.reg("fk", [B], "f32"); // a key block's f_j = exp(ck_j / p)
    const gi = k.reg("g_i", [B], "f32"); // g_i = exp((cq_i - lse_i) / p), over the whole walk

    k.load(qt, io.Q, [bi, rows, qh, range(0, d)]); // [B, d]; rows past t read 0
    k.load(dyt, io.dY, [bi, rows, qh, range(0, e)]); // [B, e]
    k.load(lseI, lse, [bi, rows, qh]); // [B]
    k.fill(accDy, 0);
    k.fill(accP, 0);
    const rowFactors = (cq: Tile): void => k.map(gi, ({ row }) => queryFactor(cq.at(row), lseI.at(row), p));
    walkKeys(k, io, B, { bi, hk, q0 }, sch.stages, rowFactors, (k0, diagonal, g) => {
      k.load(kt, io.K, [bi, range(k0, B), hk, range(0, d)]); // [B, d]
      k.load(vt, io.V, [bi, range(k0, B), hk, range(0, e)]); // [B, e]
      k.mma(dot, qt, kt, { transB: true }); // [B, d] @ [d, B]
      k.mma(pdp, dyt, vt, { transB: true }); // dP = [B, e] @ [e, B]
      const pair = (row: Val, col: Val): Pair => ({ dot: dot.at(row, col), cq: g.cq.at(row), ck: g.ck.at(col), lse: lseI.at(row), visible: diagonal ? col.le(row) : null });
      if (diagonal) k.map(pw, ({ row, col }) => weight(pair(row, col), io.scale, p));
      else {
        // linear space (header): P = u^p, no logarithm or exponential per score
        k.map(fk, ({ row }) => keyFactor(g.ck.at(row), p)); // [B]
        k.map(dot, ({ row, col }) => scaledScore(dot.at(row, col), io.scale, fk.at(col), gi.at(row))); // u
        k.map(pw, ({ row, col }) => dot.at(row, col).pow(p));
      }
      k.map(pdp, ({ row, col }) => select(live(pair(row, col)), pw.at(row, col).mul(pdp.at(row, col)), f32(0))); // not 0 * dP: v_j may be inf
      k.reduce(part, pdp, "sum", 1); // [B]
      k.map(accDy, ({ row }) => accDy.at(row).add(part.at(row)));
      k.reduce(part, pw, "sum", 1); // [B]
      k.map(accP, ({ row }) => accP.at(row).add(part.at(row)));
    });
    k.store(out.DyA, [bi, rows, qh], accDy);
    k.store(out.PA, [bi, rows, qh], accP);
  });
}

/** The quadratic path's prep: Dy_i = dy_i . y_i from the forward's y, no scoring. With no state,
 * y_i = sum_j P_ij v_j (normalised), so sum_j P_ij dP_ij = sum_j P_ij dy_i . v_j = dy_i . y_i, and dq
 * and dkv score under the forward's lse as it is (the forward normalised by the sum of its weights
 * rounded to the dtype, so the recomputed f32 weights of a row sum to 1 within that rounding). y is
 * the forward's f32 output (attention_y's yF), not Y: at p = 4 one key can carry almost all of a
 * row's weight, dP_ij - Dy_i then cancels, and the dtype's rounding of y broke the gradients'
 * tolerance (kernels/README.md, "Precision"). The prep this replaces scored every pair a third time
 * (as much work as the forward) to form sum_j P_ij dP_ij and the weights' total exactly; worst bf16
 * gradient error of test/backward.test.ts 4.7e-3 against 2.9e-3 then (tolerance 2e-2). Rows past t
 * read 0 and store nothing. */
function prepYBuild(spec: Spec, sch: Schedule): Kernel {
  const doc = "Dy = dy . y per row (f32): the quadratic path's row term of the backward, from the forward's y in f32";
  return traceKernel("attention_bwd_prep_y", sch.numWarps, doc, (k) => {
    const { e, dtype } = spec;
    const B = sch.blockT;
    const b = k.param("b", "i32"), t = k.param("t", "i32"), hq = k.param("hq", "i32");
    const yF = k.tensor("yF", "f32", [b, t, hq, e], "in");
    const dY = k.tensor("dY", dtype, [b, t, hq, e], "in");
    const Dy = k.tensor("Dy", "f32", [b, t, hq], "out");

    k.launch(t.add(B - 1).idiv(B), hq, b); // (row block, query head, batch)
    const rows = range(k.programId(0).mul(B), B), qh = k.programId(1), bi = k.programId(2);
    const yt = k.shared("y", [B, e], "f32"); // y, then y * dy
    const dyt = k.shared("dy", [B, e], "f32");
    const dot = k.reg("dot", [B], "f32");
    k.load(yt, yF, [bi, rows, qh, range(0, e)]); // [B, e]
    k.load(dyt, dY, [bi, rows, qh, range(0, e)]); // [B, e]
    k.map(yt, ({ row, col }) => yt.at(row, col).mul(dyt.at(row, col)));
    k.reduce(dot, yt, "sum", 1); // [B]
    k.store(Dy, [bi, rows, qh], dot);
  });
}

function dqBuild(spec: Spec, sch: Schedule, epilogue: Epilogue): Kernel {
  const name = epilogue === "parts" ? "attention_bwd_dq" : "attention_bwd_dq_y";
  const doc = epilogue === "parts"
    ? "dQa, rowW: the attention's dq and the row sums of W inside each window, per query block"
    : "dQ, rowW: the quadratic path's dq (dtype) and the row sums of W, per query block";
  return traceKernel(name, sch.numWarps, doc, (k) => {
    const { deg: p, d, e, dtype } = spec;
    const B = sch.blockT;
    const io = declare(k, spec);
    const lse = rowsOf(k, io, "lse", io.hq, "in"); // lseB (the chunked path), lse (_y)
    const Dy = rowsOf(k, io, "Dy", io.hq, "in");
    const dQ = epilogue === "parts" ? k.tensor("dQa", "f32", [io.b, io.t, io.hq, d], "out") : k.tensor("dQ", dtype, [io.b, io.t, io.hq, d], "out");
    const rowW = rowsOf(k, io, "rowW", io.hq, "out");

    k.launch(io.t.add(B - 1).idiv(B), io.hq, io.b); // (query block, query head, batch)
    const q0 = lastFirst(k, io.t, B), qh = k.programId(1), bi = k.programId(2);
    const hk = qh.idiv(io.hq.idiv(io.h)), rows = range(q0, B);

    const qt = k.shared("q", [B, d], dtype);
    const dyt = k.shared("dy", [B, e], dtype);
    const lseI = k.reg("lse_i", [B], "f32");
    const DyI = k.reg("Dy_i", [B], "f32");
    const kt = k.shared("k", [B, d], dtype);
    const vt = k.shared("v", [B, e], dtype);
    const dot = k.reg("dot", [B, B], "f32"); // q_i . k_j, then u_ij off the diagonal
    const W = k.reg("W", [B, B], "f32"); // dP, then W (off the diagonal: dP - Dy, then W)
    const ds = k.reg("ds", [B, B], dtype); // the mma operand of dq
    const acc = k.reg("acc", [B, d], "f32"); // dq
    const part = k.reg("part", [B], "f32");
    const wsum = k.reg("wsum", [B], "f32"); // sum_j W_ij
    const fk = k.reg("fk", [B], "f32"); // a key block's f_j = exp(ck_j / p)
    const gi = k.reg("g_i", [B], "f32"); // g_i = exp((cq_i - lse_i) / p), over the whole walk
    const hi = k.reg("h_i", [B], "f32"); // h_i = p scale g_i

    k.load(qt, io.Q, [bi, rows, qh, range(0, d)]); // [B, d]; rows past t read 0
    k.load(dyt, io.dY, [bi, rows, qh, range(0, e)]); // [B, e]
    k.load(lseI, lse, [bi, rows, qh]); // [B]
    k.load(DyI, Dy, [bi, rows, qh]); // [B]
    k.fill(acc, 0);
    k.fill(wsum, 0);
    const rowFactors = (cq: Tile): void => {
      k.map(gi, ({ row }) => queryFactor(cq.at(row), lseI.at(row), p));
      k.map(hi, ({ row }) => gi.at(row).mul(io.scale).mul(p));
    };
    walkKeys(k, io, B, { bi, hk, q0 }, sch.stages, rowFactors, (k0, diagonal, g) => {
      k.load(kt, io.K, [bi, range(k0, B), hk, range(0, d)]); // [B, d]
      k.load(vt, io.V, [bi, range(k0, B), hk, range(0, e)]); // [B, e]
      k.mma(dot, qt, kt, { transB: true }); // [B, d] @ [d, B]
      k.mma(W, dyt, vt, { transB: true }); // dP = [B, e] @ [e, B]
      if (diagonal) {
        const pair = (row: Val, col: Val): Pair => ({ dot: dot.at(row, col), cq: g.cq.at(row), ck: g.ck.at(col), lse: lseI.at(row), visible: col.le(row) });
        k.map(W, ({ row, col }) => wTerm(pair(row, col), io.scale, p, W.at(row, col), DyI.at(row)));
        zeroNonFinite(k, kt);
        k.map(ds, ({ row, col }) => dsTerm(pair(row, col), p, W.at(row, col)));
      } else {
        // linear space (header): no logarithm, exponential or division per score
        k.map(fk, ({ row }) => keyFactor(g.ck.at(row), p)); // [B]
        k.map(dot, ({ row, col }) => scaledScore(dot.at(row, col), io.scale, fk.at(col), gi.at(row))); // u
        k.map(W, ({ row, col }) => dpTerm(W.at(row, col), DyI.at(row), lseI.at(row))); // dP - Dy
        k.map(ds, ({ row, col }) => W.at(row, col).mul(dot.at(row, col).pow(p - 1)).mul(fk.at(col)).mul(hi.at(row))); // ds'
        k.map(W, ({ row, col }) => W.at(row, col).mul(dot.at(row, col).pow(p))); // W = (dP - Dy) u^p
      }
      k.reduce(part, W, "sum", 1); // [B] row sums
      k.map(wsum, ({ row }) => wsum.at(row).add(part.at(row)));
      k.mma(acc, ds, kt, { accumulate: true }); // dq += [B, B] @ [B, d]
    });
    k.store(dQ, [bi, rows, qh, range(0, d)], acc); // rounded to the tensor's dtype
    k.store(rowW, [bi, rows, qh], wsum);
  });
}

function dkvBuild(spec: Spec, sch: Schedule, epilogue: Epilogue): Kernel {
  const name = epilogue === "parts" ? "attention_bwd_dkv" : "attention_bwd_dkv_y";
  const doc = epilogue === "parts"
    ? "dKa, dVa, dlamA: the attention's dk, dv and gate gradient inside each window, per key block, over the group's query heads"
    : "dK, dV, dlamA: the quadratic path's dk, dv (dtype) and gate gradient, per key block, over the group's query heads";
  return traceKernel(name, sch.numWarps, doc, (k) => {
    const { deg: p, d, e, dtype } = spec;
    const B = sch.blockT;
    const io = declare(k, spec);
    const lse = rowsOf(k, io, "lse", io.hq, "in"); // lseB (the chunked path), lse (_y)
    const Dy = rowsOf(k, io, "Dy", io.hq, "in");
    const rowW = rowsOf(k, io, "rowW", io.hq, "in"); // attention_bwd_dq's row sums
    const [dK, dV] = epilogue === "parts"
      ? [k.tensor("dKa", "f32", [io.b, io.t, io.h, d], "out"), k.tensor("dVa", "f32", [io.b, io.t, io.h, e], "out")]
      : [k.tensor("dK", dtype, [io.b, io.t, io.h, d], "out"), k.tensor("dV", dtype, [io.b, io.t, io.h, e], "out")];
    const dlamA = rowsOf(k, io, "dlamA", io.h, "out");

    k.launch(io.t.add(B - 1).idiv(B), io.h, io.b); // (key block, kv head, batch)
    const k0 = k.programId(0).mul(B), hk = k.programId(1), bi = k.programId(2);
    const g = io.hq.idiv(io.h), keys = range(k0, B);
    // query blocks of the window at or after the diagonal, up to t
    const end = k0.idiv(io.window).add(1).mul(io.window).min(io.t);
    const later = end.sub(k0).add(B - 1).idiv(B).sub(1);

    const kt = k.shared("k", [B, d], dtype); // key block rows k0 .. k0 + B
    const vt = k.shared("v", [B, e], dtype);
    const gk = k.reg("gk", [B], "f32"); // the key block's gates
    const sk = k.reg("sk", [B], "f32"); // their suffix sums
    const ckOwn = k.reg("ck_own", [B], "f32"); // logG[j+1] + ... + logG[k0+B-1]
    const qt = k.shared("q", [B, d], dtype); // a query block
    const dyt = k.shared("dy", [B, e], dtype);
    const lseI = k.reg("lse_i", [B], "f32");
    const DyI = k.reg("Dy_i", [B], "f32");
    const gq = k.reg("gq", [B], "f32"); // the query block's gates
    const cq = k.reg("cq", [B], "f32"); // their inclusive cumsum
    const ck = k.reg("ck", [B], "f32"); // the key side of lam_i - lam_j
    const gap = k.reg("gap", [1], "f32"); // G: the gates between the key block's end and the query block
    const dot = k.reg("dot", [B, B], "f32"); // k_j . q_i: rows are keys; then u_ji off the diagonal
    const W = k.reg("W", [B, B], "f32"); // dP^T, then W^T (off the diagonal: dP^T - Dy, then W^T)
    const pt = k.reg("p", [B, B], dtype); // P^T, the mma operand of dv
    const ds = k.reg("ds", [B, B], dtype); // ds'^T, the mma operand of dk
    const accK = k.reg("acc_k", [B, d], "f32");
    const accV = k.reg("acc_v", [B, e], "f32");
    const part = k.reg("part", [B], "f32");
    const colSum = k.reg("col_sum", [B], "f32"); // sum_i W_ij over the group
    const rowSum = k.reg("row_sum", [B], "f32"); // sum_j W_ij of these rows as queries, over the group
    const fk = k.reg("fk", [B], "f32"); // the keys' f_j = exp(ck_j / p), per query block (G changes)
    const gi = k.reg("g_i", [B], "f32"); // a query block's g_i = exp((cq_i - lse_i) / p)
    const hi = k.reg("h_i", [B], "f32"); // its h_i = p scale g_i

    k.load(kt, io.K, [bi, keys, hk, range(0, d)]); // [B, d]; rows past t read 0
    k.load(vt, io.V, [bi, keys, hk, range(0, e)]); // [B, e]
    k.load(gk, io.logG, [bi, keys, hk]); // [B]
    k.cumsum(sk, gk, 0, { reverse: true });
    k.map(ckOwn, ({ row }) => sk.at(row).sub(gk.at(row)));
    k.fill(accK, 0);
    k.fill(accV, 0);
    k.fill(colSum, 0);
    k.fill(rowSum, 0);

    /** Score query block [q0, q0 + B) of query head qh against the key block and fold it in. */
    const queryBlock = (qh: Val, q0: Val, diagonal: boolean): void => {
      const rows = range(q0, B);
      k.load(qt, io.Q, [bi, rows, qh, range(0, d)]); // [B, d]
      k.load(dyt, io.dY, [bi, rows, qh, range(0, e)]); // [B, e]
      k.load(lseI, lse, [bi, rows, qh]); // [B]
      k.load(DyI, Dy, [bi, rows, qh]); // [B]
      k.load(gq, io.logG, [bi, rows, hk]); // [B]
      k.cumsum(cq, gq, 0);
      k.map(ck, ({ row }) => (diagonal ? cq.at(row).neg() : ckOwn.at(row).add(gap.at(0))));
      k.mma(dot, kt, qt, { transB: true }); // [B, d] @ [d, B]
      k.mma(W, vt, dyt, { transB: true }); // dP^T = [B, e] @ [e, B]
      // row: key j, col: query i
      if (diagonal) {
        const pair = (row: Val, col: Val): Pair => ({ dot: dot.at(row, col), cq: cq.at(col), ck: ck.at(row), lse: lseI.at(col), visible: row.le(col) });
        k.map(W, ({ row, col }) => wTerm(pair(row, col), io.scale, p, W.at(row, col), DyI.at(col)));
        zeroNonFinite(k, qt);
        k.map(pt, ({ row, col }) => weight(pair(row, col), io.scale, p));
        k.mma(accV, pt, dyt, { accumulate: true }); // dv += [B, B] @ [B, e]
        k.map(ds, ({ row, col }) => dsTerm(pair(row, col), p, W.at(row, col)));
      } else {
        // linear space (header), transposed: the key's factor is the row's, the query's the column's
        k.map(fk, ({ row }) => keyFactor(ck.at(row), p)); // [B] keys
        k.map(gi, ({ row }) => queryFactor(cq.at(row), lseI.at(row), p)); // [B] queries
        k.map(hi, ({ row }) => gi.at(row).mul(io.scale).mul(p));
        k.map(dot, ({ row, col }) => scaledScore(dot.at(row, col), io.scale, fk.at(row), gi.at(col))); // u^T
        k.map(pt, ({ row, col }) => dot.at(row, col).pow(p)); // P^T
        k.mma(accV, pt, dyt, { accumulate: true }); // dv += [B, B] @ [B, e]
        k.map(W, ({ row, col }) => dpTerm(W.at(row, col), DyI.at(col), lseI.at(col))); // dP^T - Dy
        k.map(ds, ({ row, col }) => W.at(row, col).mul(dot.at(row, col).pow(p - 1)).mul(fk.at(row)).mul(hi.at(col))); // ds'^T
        k.map(W, ({ row, col }) => W.at(row, col).mul(dot.at(row, col).pow(p))); // W^T = (dP^T - Dy) u^p
      }
      k.reduce(part, W, "sum", 1); // [B] column sums of W
      k.map(colSum, ({ row }) => colSum.at(row).add(part.at(row)));
      k.mma(accK, ds, qt, { accumulate: true }); // dk += [B, B] @ [B, d]
      if (!diagonal) k.map(gap, ({ row }) => gap.at(row).add(cq.at(B - 1))); // a [1] tile: row is 0
    };

    k.for(0, g, (hh) => {
      const qh = hk.mul(g).add(hh);
      k.load(part, rowW, [bi, keys, qh]); // [B]
      k.map(rowSum, ({ row }) => rowSum.at(row).add(part.at(row)));
      k.fill(gap, 0);
      queryBlock(qh, k0, true);
      k.for(0, later, (i) => queryBlock(qh, k0.add(i.add(1).mul(B)), false), { stages: sch.stages });
    });
    k.store(dK, [bi, keys, hk, range(0, d)], accK); // rounded to the tensor's dtype
    k.store(dV, [bi, keys, hk, range(0, e)], accV);
    k.map(rowSum, ({ row }) => rowSum.at(row).sub(colSum.at(row)));
    k.store(dlamA, [bi, keys, hk], rowSum);
  });
}

type Build = (spec: Spec, sch: Schedule, epilogue: Epilogue) => Kernel;

/** Largest blocks first; a warp owns 16 rows (as the forward's attention). */
const candidates = (cap: number): Schedule[] => tileSizes(cap, 128).map((blockT) => ({ numWarps: blockT / 16, blockD: 0, blockT, stages: 2 }));

/** Blocks down to 16 rows, a warp owning 16 to 64 of them, with and without prefetch, and for
 * blocks of 4 warps or more two blocks an SM (the forward's attention_y ran 1.22x faster so on the
 * H100; dkv holds 255 registers a thread at one block). tileBytes counts the register tiles too, so
 * whether two blocks also fit an SM's shared memory is the autotune's to find (gen refuses only a
 * block that fits no arch). */
function space(cap: number, s: Spec, build: Build, epilogue: Epilogue): Schedule[] {
  return tileSizes(cap, 128)
    .flatMap((blockT) => [1, 2, 4, 8].filter((w) => 16 * w <= blockT && 64 * w >= blockT).flatMap((numWarps) => [1, 2].flatMap((stages) =>
      (numWarps >= 4 ? [1, 2] : [1]).map((minBlocks) => ({ numWarps, blockD: 0, blockT, stages, ...(minBlocks > 1 ? { minBlocks } : {}) })))))
    .filter((sch) => tileBytes(build(s, sch, epilogue)) <= TILE_BUDGET);
}

const fitting = (s: Spec, list: readonly Schedule[], build: Build, epilogue: Epilogue): Schedule =>
  list.find((sch) => tileBytes(build(s, sch, epilogue)) <= TILE_BUDGET) ?? list[list.length - 1]!;

/** The chunked path's kernel: windows of one chunk, so its blocks divide the chunk. */
const partsDef = (name: string, build: Build): KernelDef => ({
  name,
  schedule: (s) => fitting(s, candidates(s.chunk), build, "parts"),
  scheduleSpace: (s) => space(s.chunk, s, build, "parts"),
  build: (s, sch) => build(s, sch, "parts"),
});

/** The quadratic path's kernel: one window over the whole sequence; nothing depends on the chunk. */
const quadraticDef = (name: string, build: Build): KernelDef => ({
  name,
  chunkFree: true,
  schedule: (s) => fitting(s, candidates(128), build, "y"),
  scheduleSpace: (s) => space(128, s, build, "y"),
  build: (s, sch) => build(s, sch, "y"),
});

export const attentionBwdPrep: KernelDef = partsDef("attention_bwd_prep", (s, sch) => prepBuild(s, sch));
/** Rows per block and warps; the tiles are shared, so any block fits. */
const prepYSpace = (): Schedule[] => [32, 64, 128].flatMap((blockT) => [4, 8].map((numWarps) => ({ numWarps, blockD: 0, blockT, stages: 1 })));
export const attentionBwdPrepY: KernelDef = {
  name: "attention_bwd_prep_y",
  chunkFree: true,
  schedule: () => ({ numWarps: 4, blockD: 0, blockT: 64, stages: 1 }),
  scheduleSpace: prepYSpace,
  build: (s, sch) => prepYBuild(s, sch),
};
export const attentionBwdDq: KernelDef = partsDef("attention_bwd_dq", dqBuild);
export const attentionBwdDqY: KernelDef = quadraticDef("attention_bwd_dq_y", dqBuild);
export const attentionBwdDkv: KernelDef = partsDef("attention_bwd_dkv", dkvBuild);
export const attentionBwdDkvY: KernelDef = quadraticDef("attention_bwd_dkv_y", dkvBuild);
