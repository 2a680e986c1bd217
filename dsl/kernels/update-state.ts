// Update state (forward step 2 of SPEC.md's chunked algorithm): for chunk m of one kv head,
//   dS_m = sum_j phi(k'_j) v_j^T   [D, e]      dZ_m = sum_j phi(k'_j)   [D]
// with k'_j = k_j * exp((G_m - lam_j) / p) the key discounted to the chunk's end. One program owns
// one block of BD features of one chunk; phi of the keys is formed right before the mma.

import { range, traceKernel } from "../builder.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { chunkGates, featureBlocks } from "./common.ts";

const doc = "dS_m = phi(k')^T V, dZ_m = colsum phi(k') per chunk, k' = k exp((G_m - lam)/p)";

export const updateState: KernelDef = {
  name: "update_state",
  schedule: (s: Spec): Schedule => ({ numWarps: 4, blockD: 64, blockT: s.chunk, stages: 1 }),
  scheduleSpace: (s: Spec) => [32, 64, 128].flatMap((blockD) => [4, 8].map((numWarps) => ({ numWarps, blockD, blockT: s.chunk, stages: 1 }))),
  build: (spec, sch) =>
    traceKernel(updateState.name, sch.numWarps, doc, (k) => {
      const { deg: p, d, e, chunk: c, dtype } = spec;
      const D = stateFeatures(spec);
      const BD = sch.blockD;
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
      const kt = k.shared("k", [c, d], dtype);
      const vt = k.shared("v", [c, e], dtype);
      k.load(kt, K, [bi, range(t0, c), hi, range(0, d)]); // [c, d]; rows past t read 0
      k.load(vt, V, [bi, range(t0, c), hi, range(0, e)]); // [c, e]

      // k'_j = k_j * exp((G - lam_j) / p): the gate from j to the chunk's end, folded into the key.
      const kd = k.shared("k_disc", [c, d], "f32");
      k.map(kd, ({ row, col }) => kt.at(row, col).mul(G.sub(lam.at(row)).div(p).exp()));

      const phi = k.shared("phi", [c, BD], dtype); // [c, BD] features fb*BD .. fb*BD+BD-1
      k.expand(phi, kd, p, fb.mul(BD));
      const s = k.reg("s", [BD, e], "f32");
      k.mma(s, phi, vt, { transA: true }); // [BD, c] @ [c, e]
      const z = k.reg("z", [BD], "f32");
      k.reduce(z, phi, "sum", 0); // [BD]
      k.store(dS, [bi, hi, m, range(fb.mul(BD), BD), range(0, e)], s);
      k.store(dZ, [bi, hi, m, range(fb.mul(BD), BD)], z);
    }),
};
