// Update state (forward step 2 of SPEC.md's chunked algorithm): for chunk m of one kv head,
//   dS_m = sum_j phi(k'_j) v_j^T   [D, e]      dZ_m = sum_j phi(k'_j)   [D]
// with k'_j = k_j * exp((G_m - lam_j) / p) the key discounted to the chunk's end. One program owns
// one block of BD features of one chunk and walks the chunk in blocks of BT rows; phi of the keys
// is formed right before the mma. In f16/bf16 phi enters the mma as hi + lo (common.ts,
// splitOperand; stateSplit says where), V being exact in its dtype: one rounding of phi costs whole
// percent at p = 4. For f16 at p = 4 both are bf16 (updateStateOperandDtype: f16's range).

import { range, traceKernel } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { chunkGates, dataOperand, featureBlocks, firstFitting, mmaSplit, rowBlocks, splitOperand, tileSizes, updateStateOperandDtype } from "./common.ts";

const doc = "dS_m = phi(k')^T V, dZ_m = colsum phi(k') per chunk, k' = k exp((G_m - lam)/p)";

function build(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("update_state", sch.numWarps, doc, (k) => {
    const { deg: p, d, e, chunk: c, dtype } = spec;
    const D = stateFeatures(spec);
    const BD = sch.blockD, BT = sch.blockT;
    if (c % BT !== 0) throw new Error(`update_state: blockT ${BT} must divide the chunk ${c}`);
    const b = k.param("b", "i32"), t = k.param("t", "i32"), h = k.param("h", "i32"), n = k.param("n", "i32");
    const K = k.tensor("K", dtype, [b, t, h, d], "in");
    const V = k.tensor("V", dtype, [b, t, h, e], "in");
    const logG = k.tensor("logG", "f32", [b, t, h], "in");
    const dS = k.tensor("dS", "f32", [b, h, n, D, e], "out");
    const dZ = k.tensor("dZ", "f32", [b, h, n, D], "out");

    k.launch(featureBlocks(spec, BD).count, n, b.mul(h)); // (feature block, chunk, batch*head)
    const fb = k.programId(0), m = k.programId(1), bi = k.programId(2).idiv(h), hi = k.programId(2).mod(h);
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

function candidates(spec: Spec): Schedule[] {
  return tileSizes(spec.chunk, 64).flatMap((blockT) => [64, 32].map((blockD) => ({ numWarps: 4, blockD, blockT, stages: 2 })));
}

export const updateState: KernelDef = {
  name: "update_state",
  schedule: (spec) => firstFitting(spec, candidates(spec), build),
  scheduleSpace: (spec) => candidates(spec).flatMap((s) => [s, { ...s, numWarps: 8 }]),
  build,
};
