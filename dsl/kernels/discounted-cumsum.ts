// Discounted cumulative sum over chunks (forward step 3 of SPEC.md's chunked algorithm):
//   Sin_0 = S0,   Sin_{m+1} = exp(G_m) Sin_m + dS_m        (the same for Z)
// Sin_m is the state chunk m's queries read; after the last chunk the running state is the final
// one. One program owns one block of BD features of one (batch, kv head) and walks the chunks in
// order; the work is memory-bound (it moves n * D * e state elements).

import { range, traceKernel } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { chunkGates, featureBlocks, firstFitting, tileBytes, TILE_BUDGET } from "./common.ts";

const doc = "Sin_m = state before chunk m: Sin_0 = S0, Sin_{m+1} = exp(G_m) Sin_m + dS_m (and Z); Sfinal after the last chunk";

function build(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("discounted_cumsum", sch.numWarps, doc, (k) => {
    const { e, chunk: c } = spec;
    const D = stateFeatures(spec);
    const BD = sch.blockD;
    const b = k.param("b", "i32"), t = k.param("t", "i32"), h = k.param("h", "i32"), n = k.param("n", "i32");
    const dS = k.tensor("dS", "f32", [b, h, n, D, e], "in");
    const dZ = k.tensor("dZ", "f32", [b, h, n, D], "in");
    const logG = k.tensor("logG", "f32", [b, t, h], "in");
    const S0 = k.tensor("S0", "f32", [b, h, D, e], "in");
    const Z0 = k.tensor("Z0", "f32", [b, h, D], "in");
    const Sin = k.tensor("Sin", "f32", [b, h, n, D, e], "out");
    const Zin = k.tensor("Zin", "f32", [b, h, n, D], "out");
    const Sfinal = k.tensor("Sfinal", "f32", [b, h, D, e], "out");
    const Zfinal = k.tensor("Zfinal", "f32", [b, h, D], "out");

    k.launch(featureBlocks(spec, BD).count, b.mul(h)); // (feature block, batch*head)
    const fb = k.programId(0), bi = k.programId(1).idiv(h), hi = k.programId(1).mod(h);
    const feats = range(fb.mul(BD), BD);

    const s = k.reg("s", [BD, e], "f32"); // the running state
    const z = k.reg("z", [BD], "f32");
    const ds = k.shared("ds", [BD, e], "f32");
    const dz = k.reg("dz", [BD], "f32");
    k.load(s, S0, [bi, hi, feats, range(0, e)]); // [BD, e]; features past D read 0
    k.load(z, Z0, [bi, hi, feats]); // [BD]
    k.for(0, n, (m) => {
      k.store(Sin, [bi, hi, m, feats, range(0, e)], s);
      k.store(Zin, [bi, hi, m, feats], z);
      const { G } = chunkGates(k, logG, bi, hi, m.mul(c), c); // G = chunk m's log gate
      k.load(ds, dS, [bi, hi, m, feats, range(0, e)]); // [BD, e]
      k.load(dz, dZ, [bi, hi, m, feats]); // [BD]
      k.map(s, ({ row, col }) => s.at(row, col).mul(G.exp()).add(ds.at(row, col)));
      k.map(z, ({ row }) => z.at(row).mul(G.exp()).add(dz.at(row)));
    }, { stages: sch.stages });
    k.store(Sfinal, [bi, hi, feats, range(0, e)], s);
    k.store(Zfinal, [bi, hi, feats], z);
  });
}

export const discountedCumsum: KernelDef = {
  name: "discounted_cumsum",
  schedule: (s: Spec): Schedule => firstFitting(s, [64, 32, 16].map((blockD) => ({ numWarps: 4, blockD, blockT: s.chunk, stages: 2 })), build),
  scheduleSpace: (s: Spec) =>
    [16, 32, 64, 128]
      .flatMap((blockD) => [2, 4, 8].flatMap((numWarps) => [1, 2].map((stages) => ({ numWarps, blockD, blockT: s.chunk, stages }))))
      .filter((sch) => tileBytes(build(s, sch)) <= TILE_BUDGET),
  build,
};
