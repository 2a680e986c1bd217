// Update state (forward step 2 of SPEC.md's chunked algorithm): for chunk m of one kv head,
//   dS_m = sum_j phi(k'_j) v_j^T   [D, e]      dZ_m = sum_j phi(k'_j)   [D]
// with k'_j = k_j * exp((G_m - lam_j) / p) the key discounted to the chunk's end. One program owns
// one block of BD features of one chunk and walks the chunk in blocks of BT rows; phi of the keys
// is formed right before the mma. In f16/bf16 phi enters the mma as hi + lo (common.ts,
// splitOperand; stateSplit says where), V being exact in its dtype: one rounding of phi costs whole
// percent at p = 4. For f16 at p = 4 both are bf16 (updateStateOperandDtype: f16's range).
//
// At p = 2 the factored form (buildFactored) expands nothing: with phi_(a,b)(k) = w_ab k_a k_b,
// the features of one a contiguous in the state (b >= a, lexicographic) and phi(k'_j) = g_j phi(k_j),
// g_j = exp(G_m - lam_j),
//   dS_(a, b) = w_ab sum_j k_jb (g_j k_ja v_j)     = w_ab (K^T U_a)_b,   U_a = diag(g k_:a) V  [c, e]
//   dZ_(a, b) = w_ab sum_j k_ja g_j k_jb           = w_ab (K^T diag(g) K)_ab
// so the mma's A operand is K itself, exact in its dtype, and only U_a (and g K for dZ) is rounded,
// as a hi + lo pair where stateSplit("update_state.phi") says so. One program owns a whole chunk
// and BE columns of V; the a's run in blocks of 16, each block using the K columns from its first a
// (16-aligned, for ldmatrix), and each a's rows go to the state through a masked store (rows b < a
// of the tile belong to the group before): pair-outer.ts, shared with query_state_bwd_ds. It keeps
// the chunk's keys on chip; where they do not fit (d = 128 at chunk 256 in f32) the expanded form
// below runs instead, chosen per spec.

import { range, traceKernel, type KernelBuilder, type Val } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { dtypeBytes } from "../dtype.ts";
import { chunkGates, dataOperand, featureBlocks, mmaSplit, rowBlocks, splitOperand, stateSplit, tileBytes, TILE_BUDGET, tileSizes, updateStateOperandDtype } from "./common.ts";
import { pairOuter, pairOuterBytes } from "./pair-outer.ts";

const doc = "dS_m = phi(k')^T V, dZ_m = colsum phi(k') per chunk, k' = k exp((G_m - lam)/p)";

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
    dS: k.tensor("dS", "f32", [b, h, n, D, e], "out"),
    dZ: k.tensor("dZ", "f32", [b, h, n, D], "out"),
  };
}

function buildExpanded(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("update_state", sch.numWarps, doc, (k) => {
    const { deg: p, d, e, chunk: c, dtype } = spec;
    const BD = sch.blockD, BT = sch.blockT;
    if (c % BT !== 0) throw new Error(`update_state: blockT ${BT} must divide the chunk ${c}`);
    const { b, t, h, n, K, V, logG, dS, dZ } = declare(k, spec);

    const nfb = featureBlocks(spec, BD).count;
    k.launch(n.mul(nfb), b.mul(h)); // (chunk * feature block, batch*head): chunks on x, CUDA's 2^31 - 1 axis, feature blocks fastest
    const fb = k.programId(0).mod(nfb), m = k.programId(0).idiv(nfb), bi = k.programId(1).idiv(h), hi = k.programId(1).mod(h);
    const t0 = m.mul(c);

    const { lam, G } = chunkGates(k, logG, bi, hi, t0, c); // lam [c], G = lam[c-1]
    const kt = k.shared("k", [BT, d], dtype);
    const sd = updateStateOperandDtype(spec); // bf16 for f16 at p >= 4 (f16's range)
    const vt = dataOperand(k, "v", [BT, e], dtype, sd, { spec, site: "update_state.v" });
    const phi = splitOperand(k, "phi", [BT, BD], sd, { spec, site: "update_state.phi" }); // phi(k') [BT, BD], features fb*BD.., hi + lo (stateSplit)
    const s = k.reg("s", [BD, e], "f32");
    const z = k.reg("z", [BD], "f32");
    const zb = k.reg("z_block", [BD], "f32");
    k.fill(s, 0);
    k.fill(z, 0);
    k.for(0, rowBlocks(t, t0, c, BT), (rb) => {
      const r0 = rb.mul(BT); // first row of the block, inside the chunk
      k.load(kt, K, [bi, range(t0.add(r0), BT), hi, range(0, d)]); // [BT, d]; rows past t read 0
      vt.load(V, [bi, range(t0.add(r0), BT), hi, range(0, e)]); // [BT, e]
      // k'_j = k_j * exp((G - lam_j) / p): the gate from j to the chunk's end, folded into the key.
      k.expand(phi.x, kt, p, fb.mul(BD)); // phi(k) [BT, BD] in f32 ...
      k.map(phi.x, ({ row, col }) => phi.x.at(row, col).mul(G.sub(lam.at(r0.add(row))).exp())); // ... times exp(G - lam_j) = phi(k')
      phi.split();
      mmaSplit(k, s, phi, vt.op, { transA: true, accumulate: true }); // [BD, BT] @ [BT, e]
      k.reduce(zb, phi.x, "sum", 0); // [BD]
      k.map(z, ({ row }) => z.at(row).add(zb.at(row)));
    }, { stages: sch.stages });
    k.store(dS, [bi, hi, m, range(fb.mul(BD), BD), range(0, e)], s);
    k.store(dZ, [bi, hi, m, range(fb.mul(BD), BD)], z);
  });
}

/** p = 2, factored form (header). Schedule: blockD = the V columns per program (divides e). */
function buildFactored(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("update_state", sch.numWarps, doc, (k) => {
    const { d, e, chunk: c, dtype } = spec;
    if (spec.deg !== 2) throw new Error(`update_state: the factored form is for deg 2, got ${spec.deg}`);
    const BE = sch.blockD;
    if (e % BE !== 0) throw new Error(`update_state: blockD ${BE} (columns of V per program) must divide e ${e}`);
    const { b, t, h, n, K, V, logG, dS, dZ } = declare(k, spec);

    const neb = e / BE;
    k.launch(n.mul(neb), b.mul(h)); // (chunk * column block of V, batch*head): chunks on x, CUDA's 2^31 - 1 axis
    const eb = k.programId(0).mod(neb), e0 = eb.mul(BE), m = k.programId(0).idiv(neb), bi = k.programId(1).idiv(h), hi = k.programId(1).mod(h);
    const t0 = m.mul(c);
    const { lam, G } = chunkGates(k, logG, bi, hi, t0, c); // lam [c], G = lam[c-1]
    const gate = (j: Val): Val => G.sub(lam.at(j)).exp(); // g_j: phi(k'_j) = g_j phi(k_j)
    const sd = spec.dtype === "f32" ? "f32" : spec.dtype; // K is exact in its dtype; U is rounded to it
    const pair = stateSplit(spec, "update_state.phi");
    const rows = range(t0, c);
    const vt = k.shared("v", [c, BE], dtype);
    k.load(vt, V, [bi, rows, hi, range(e0, BE)]);
    pairOuter(k, {
      d, name: "k", aDtype: dtype, operandDtype: sd, pair, X: vt, xScale: gate, z: gate, sources: 1, // U_a = v (g k_:a)
      loadA: (kI, c0) => k.load(kI, K, [bi, rows, hi, range(c0, kI.cols)]), // K[:, c0:W]; rows past t and columns past d read 0
      withZ: eb.eq(0), S: dS, Z: dZ, at: [bi, hi, m], col0: e0,
    });
  });
}

/** The factored form where it applies (p = 2) and fits with its narrowest column block; else the expanded one. */
const factored = (spec: Spec): boolean => spec.deg === 2 && factoredPeakBytes(spec, { numWarps: 4, blockD: Math.min(8, spec.e), blockT: spec.chunk, stages: 1 }) <= TILE_BUDGET;
const build = (spec: Spec, sch: Schedule): Kernel => (factored(spec) ? buildFactored : buildExpanded)(spec, sch);

/** Shared bytes of the factored form at its peak (tileBytes sums every tile, but the phases reuse bytes):
 * pairOuter's tiles, V, the gates. */
function factoredPeakBytes(spec: Spec, sch: Schedule): number {
  const c = spec.chunk, el = dtypeBytes(spec.dtype);
  return pairOuterBytes({ d: spec.d, rows: c, cols: sch.blockD, aDtype: spec.dtype, operandDtype: spec.dtype, pair: stateSplit(spec, "update_state.phi") }) + c * sch.blockD * el + 2 * c * 4;
}

/** p = 2: a whole chunk per program, all of V's columns while they fit (halving blockD), 8 warps
 * from 64 x 64 outputs. p >= 4: feature blocks of 64 then 32. */
function candidates(spec: Spec): Schedule[] {
  if (factored(spec)) {
    const out: Schedule[] = [];
    for (let be = spec.e; be >= Math.min(8, spec.e) && spec.e % be === 0; be /= 2) out.push({ numWarps: Math.ceil(spec.d / 16) * 16 * be >= 4096 ? 8 : 4, blockD: be, blockT: spec.chunk, stages: 1 });
    return out;
  }
  return tileSizes(spec.chunk, 64).flatMap((blockT) => [64, 32].map((blockD) => ({ numWarps: 4, blockD, blockT, stages: 2 })));
}

const fits = (s: Spec, sch: Schedule): boolean =>
  factored(s) ? factoredPeakBytes(s, sch) <= TILE_BUDGET : tileBytes(build(s, sch)) <= TILE_BUDGET;

export const updateState: KernelDef = {
  name: "update_state",
  schedule: (spec) => candidates(spec).find((sch) => fits(spec, sch)) ?? candidates(spec).at(-1)!,
  scheduleSpace: (spec) =>
    candidates(spec)
      .flatMap((s) => [{ ...s, numWarps: 4 }, { ...s, numWarps: 8 }])
      .filter((s) => fits(spec, s)),
  build,
};
