// Packed variable-length sequences (README "Variable-length sequences"): the caller's tokens sit
// back to back in [total, w] rows (w = heads x features, flattened), sequence s on rows
// [cu[s], cu[s + 1]). The plan moves them into a chunk-aligned layout, [nc * c, w]: each
// sequence starts a chunk of its own, and the rows of its last chunk past its end are 0 (a zero
// key adds nothing to the state, a zero query reads 0, a log gate of 0 is a gate of 1: SPEC.md's
// padding of a tail). There the dense kernels run unchanged with b = 1: no window crosses a
// sequence boundary, since every window is one chunk; only the scan over chunks restarts at each
// sequence (discounted_cumsum[_bwd]_varlen).
//
// Two tables, one element per chunk slot m of the aligned layout (plan-varlen.ts builds them):
//   chunkSrc[m]  the caller's row of the slot's first row,
//   chunkLen[m]  how many of its c rows are the sequence's (1..c).
// varlen_pack:   Xp[m c + r, :] = r < chunkLen[m] ? X[chunkSrc[m] + r, :] : 0
// varlen_unpack: X[chunkSrc[m] + r, :] = Xp[m c + r, :] for r < chunkLen[m]  (the inverse)
// One program per (chunk slot, block of blockD columns); the work is a copy.

import { range, select, traceKernel } from "../builder.ts";
import type { DType } from "../dtype.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";

const schedule = (s: Spec): Schedule => ({ numWarps: 4, blockD: 64, blockT: s.chunk, stages: 1 });
const space = (s: Spec): Schedule[] => [32, 64, 128].flatMap((blockD) => [4, 8].map((numWarps) => ({ numWarps, blockD, blockT: s.chunk, stages: 1 })));

function build(name: string, dtype: DType, pack: boolean, spec: Spec, sch: Schedule): Kernel {
  const doc = pack
    ? `Xp[m c + r, :] = r < chunkLen[m] ? X[chunkSrc[m] + r, :] : 0 (${dtype}): packed rows to the chunk-aligned layout`
    : `X[chunkSrc[m] + r, :] = Xp[m c + r, :] for r < chunkLen[m] (${dtype}): chunk-aligned rows back to the packed layout`;
  return traceKernel(name, sch.numWarps, doc, (k) => {
    const c = spec.chunk, BW = sch.blockD;
    const rows = k.param("rows", "i32"), nc = k.param("nc", "i32"), w = k.param("w", "i32");
    const chunkSrc = k.table("chunkSrc", nc);
    const chunkLen = k.table("chunkLen", nc);
    const X = k.tensor("X", dtype, [rows, w], pack ? "in" : "out");
    const Xp = k.tensor("Xp", dtype, [nc.mul(c), w], pack ? "out" : "in");

    k.launch(nc, w.add(BW - 1).idiv(BW)); // (chunk slot, column block)
    const m = k.programId(0), cols = range(k.programId(1).mul(BW), BW);
    const src = chunkSrc.at(m), len = chunkLen.at(m);
    const x = k.reg("x", [c, BW], dtype); // columns past w read 0, stores skip them
    if (pack) {
      k.load(x, X, [range(src, c), cols]); // rows past the sequence are the next one's: zeroed
      k.map(x, ({ row, col }) => select(row.lt(len), x.at(row, col), 0));
      k.store(Xp, [range(m.mul(c), c), cols], x);
    } else {
      k.load(x, Xp, [range(m.mul(c), c), cols]);
      k.store(X, [range(src, c), cols], x, { where: ({ row }) => row.lt(len) });
    }
  });
}

const def = (name: string, pack: boolean, f32: boolean): KernelDef => ({
  name,
  schedule,
  scheduleSpace: space,
  build: (spec, sch) => build(name, f32 ? "f32" : spec.dtype, pack, spec, sch),
});

/** Q, K, V, dY (the spec's dtype) into the chunk-aligned layout. */
export const varlenPack = def("varlen_pack", true, false);
/** logG (f32) into the chunk-aligned layout. */
export const varlenPackF32 = def("varlen_pack_f32", true, true);
/** Y, dQ, dK, dV (the spec's dtype) back to the packed layout. */
export const varlenUnpack = def("varlen_unpack", false, false);
/** dlogG (f32) back to the packed layout. */
export const varlenUnpackF32 = def("varlen_unpack_f32", false, true);
