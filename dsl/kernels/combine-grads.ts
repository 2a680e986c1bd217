// The backward's last step (README "Backward").
// combine_grads, the chunked path: the partial gradients of one chunk of one kv head,
//   dQ = dQa + dQs (each query head of the group), dK = dKa + dKs, dV = dVa + dVs, and
//   dlam = dlamA + sum_group dlamQ + dlamK,   dG_m = sum_fb dGc[m, fb] + dGk[m],
//   dlogG_k = sum_{i >= k in chunk} dlam_i + dG_m   (lam is the in-chunk prefix sum, G_m the total).
// gate_grads_y, the quadratic path (dQ, dK, dV came out of the attention kernels in the dtype; no
// state): dlogG_k = sum_{i >= k} dlamA_i over the whole sequence, for one kv head.
// Row blocks are visited last to first so the suffix sum carries across them: each dlogG_k is the
// block's own suffix sum (B terms) plus the carry (the sum over the later blocks, one block total
// added per block), never a total minus a prefix (which would cancel): every partial sum is a later
// dlogG_i or a difference of two, so the rounding of dlogG_k is that of B + t / B additions of
// numbers no larger than max_{i >= k} |dlogG_i| (README "Gates").
//
// Tensors: dQa, dQs [b,t,hq,d], dKa, dKs [b,t,h,d], dVa, dVs [b,t,h,e], dlamA, dlamK [b,t,h], dlamQ
// [b,t,hq], dGc [b,h,n,nfb], dGk [b,h,n] f32; dQ, dK, dV in the dtype; dlogG [b,t,h] f32.

import { range, traceKernel, type Range, type TensorRef, type Tile, type Val } from "../builder.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { firstFitting, rowBlocks, tileSizes, withinBudget } from "./common.ts";

const doc = "dQ, dK, dV (dtype) and dlogG from the partial gradients of the backward kernels";

const candidates = (s: Spec): Schedule[] => tileSizes(s.chunk, 64).map((blockT) => ({ numWarps: 4, blockD: 0, blockT, stages: 1 }));

export const combineGrads: KernelDef = {
  name: "combine_grads",
  schedule: (s) => firstFitting(s, candidates(s), combineGrads.build),
  scheduleSpace: (s) =>
    withinBudget(s, tileSizes(s.chunk, 128).flatMap((blockT) => [4, 8].map((numWarps) => ({ numWarps, blockD: 0, blockT, stages: 1 }))), combineGrads.build),
  build: (spec, sch) =>
    traceKernel(combineGrads.name, sch.numWarps, doc, (k) => {
      const { d, e, chunk: c, dtype } = spec;
      const BT = sch.blockT;
      const b = k.param("b", "i32"), t = k.param("t", "i32"), hq = k.param("hq", "i32"), h = k.param("h", "i32");
      const n = k.param("n", "i32"), nfb = k.param("nfb", "i32"); // feature blocks of dGc
      const dQa = k.tensor("dQa", "f32", [b, t, hq, d], "in");
      const dQs = k.tensor("dQs", "f32", [b, t, hq, d], "in");
      const dKa = k.tensor("dKa", "f32", [b, t, h, d], "in");
      const dKs = k.tensor("dKs", "f32", [b, t, h, d], "in");
      const dVa = k.tensor("dVa", "f32", [b, t, h, e], "in");
      const dVs = k.tensor("dVs", "f32", [b, t, h, e], "in");
      const dlamA = k.tensor("dlamA", "f32", [b, t, h], "in");
      const dlamK = k.tensor("dlamK", "f32", [b, t, h], "in");
      const dlamQ = k.tensor("dlamQ", "f32", [b, t, hq], "in");
      const dGc = k.tensor("dGc", "f32", [b, h, n, nfb], "in");
      const dGk = k.tensor("dGk", "f32", [b, h, n], "in");
      const dQ = k.tensor("dQ", dtype, [b, t, hq, d], "out");
      const dK = k.tensor("dK", dtype, [b, t, h, d], "out");
      const dV = k.tensor("dV", dtype, [b, t, h, e], "out");
      const dlogG = k.tensor("dlogG", "f32", [b, t, h], "out");

      k.launch(n, h, b); // (chunk, kv head, batch)
      const m = k.programId(0), hk = k.programId(1), bi = k.programId(2);
      const g = hq.idiv(h), t0 = m.mul(c);

      const ad = k.reg("a_d", [BT, d], "f32");
      const bd = k.reg("b_d", [BT, d], "f32");
      const ae = k.reg("a_e", [BT, e], "f32");
      const be = k.reg("b_e", [BT, e], "f32");
      const dlam = k.reg("dlam", [BT], "f32");
      const part = k.reg("part", [BT], "f32");
      const suffix = k.reg("suffix", [BT], "f32");
      const carry = k.reg("carry", [1], "f32"); // dG_m + sum of dlam over the later blocks
      const one = k.reg("one", [1], "f32");

      // dst[idx] = x[idx] + y[idx] for one block of rows, through the tiles a and s.
      const addRows = (x: TensorRef, y: TensorRef, dst: TensorRef, idx: (Val | Range)[], a: Tile, s: Tile): void => {
        k.load(a, x, idx);
        k.load(s, y, idx);
        k.map(a, ({ row, col }) => a.at(row, col).add(s.at(row, col)));
        k.store(dst, idx, a);
      };

      k.load(carry, dGk, [bi, hk, range(m, 1)]); // [1]
      k.for(0, nfb, (fb) => {
        k.load(one, dGc, [bi, hk, m, range(fb, 1)]); // [1]
        k.map(carry, ({ row }) => carry.at(row).add(one.at(row)));
      });
      const nb = rowBlocks(t, t0, c, BT);
      k.for(0, nb, (v) => {
        const r0 = nb.sub(1).sub(v).mul(BT); // blocks last to first
        const rows = range(t0.add(r0), BT);
        k.load(dlam, dlamA, [bi, rows, hk]); // [BT]
        k.load(part, dlamK, [bi, rows, hk]);
        k.map(dlam, ({ row }) => dlam.at(row).add(part.at(row)));
        k.for(0, g, (hh) => {
          const qh = hk.mul(g).add(hh);
          addRows(dQa, dQs, dQ, [bi, rows, qh, range(0, d)], ad, bd); // [BT, d]
          k.load(part, dlamQ, [bi, rows, qh]);
          k.map(dlam, ({ row }) => dlam.at(row).add(part.at(row)));
        });
        addRows(dKa, dKs, dK, [bi, rows, hk, range(0, d)], ad, bd); // [BT, d]
        addRows(dVa, dVs, dV, [bi, rows, hk, range(0, e)], ae, be); // [BT, e]
        k.cumsum(suffix, dlam, 0, { reverse: true }); // [BT]
        k.map(suffix, ({ row }) => suffix.at(row).add(carry.at(0)));
        k.store(dlogG, [bi, rows, hk], suffix);
        k.map(carry, () => suffix.at(0));
      });
    }),
};

const gatesDoc = "dlogG: the quadratic path's gate gradient, the suffix sums of dlamA over the whole sequence";

/** The quadratic path's combine: only dlogG is left to form. One program per (kv head, batch), row
 * blocks of blockT (not the chunk: nothing here depends on it) from last to first. */
export const gateGradsY: KernelDef = {
  name: "gate_grads_y",
  chunkFree: true,
  schedule: () => ({ numWarps: 4, blockD: 0, blockT: 256, stages: 1 }),
  scheduleSpace: () => [128, 256, 512, 1024].flatMap((blockT) => [4, 8].map((numWarps) => ({ numWarps, blockD: 0, blockT, stages: 1 }))),
  build: (_spec, sch) =>
    traceKernel(gateGradsY.name, sch.numWarps, gatesDoc, (k) => {
      const B = sch.blockT;
      const b = k.param("b", "i32"), t = k.param("t", "i32"), h = k.param("h", "i32");
      const dlamA = k.tensor("dlamA", "f32", [b, t, h], "in");
      const dlogG = k.tensor("dlogG", "f32", [b, t, h], "out");

      k.launch(h, b); // (kv head, batch)
      const hk = k.programId(0), bi = k.programId(1);
      const dlam = k.reg("dlam", [B], "f32");
      const suffix = k.reg("suffix", [B], "f32");
      const carry = k.reg("carry", [1], "f32"); // sum of dlam over the later blocks

      k.fill(carry, 0);
      const nb = t.add(B - 1).idiv(B);
      k.for(0, nb, (v) => {
        const rows = range(nb.sub(1).sub(v).mul(B), B); // blocks last to first
        k.load(dlam, dlamA, [bi, rows, hk]); // [B]; rows past t read 0
        k.cumsum(suffix, dlam, 0, { reverse: true }); // [B]
        k.map(suffix, ({ row }) => suffix.at(row).add(carry.at(0)));
        k.store(dlogG, [bi, rows, hk], suffix);
        k.map(carry, () => suffix.at(0));
      }, { stages: sch.stages });
    }),
};
