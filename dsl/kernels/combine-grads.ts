// Combine the backward's partial gradients (README "Backward", kernel 10) for one chunk of one kv
// head: dQ = dQa + dQs (each query head of the group), dK = dKa + dKs, dV = dVa + dVs, and
//   dlam = dlamA + sum_group dlamQ + dlamK,   dG_m = sum_fb dGc[m, fb] + dGk[m],
//   dlogG_k = sum_{i >= k in chunk} dlam_i + dG_m   (lam is the in-chunk prefix sum, G_m the total).
// Row blocks are visited last to first so the suffix sum carries across them.

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
