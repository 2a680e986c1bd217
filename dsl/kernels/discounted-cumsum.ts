// Discounted cumulative sum over chunks (forward step 3 of SPEC.md's chunked algorithm):
//   Sin_0 = S0,   Sin_{m+1} = exp(G_m) Sin_m + dS_m        (the same for Z)
// Sin_m is the state chunk m's queries read; after the last chunk the running state is the final
// one. One program owns one block of BD features of one (batch, kv head) and walks the chunks in
// order; the work is memory-bound (it moves n * D * e state elements).

import { range, traceKernel } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { chunkGates, featureBlocks, firstFitting, scanProgram, scanSizes, tileBytes, TILE_BUDGET } from "./common.ts";

const doc = "Sin_m = state before chunk m: Sin_0 = S0, Sin_{m+1} = exp(G_m) Sin_m + dS_m (and Z); Sfinal after the last chunk";

/** The dense kernel (b sequences of n chunks), or with `varlen` the packed one (README "Variable-length
 * sequences"): the chunks of ns sequences back to back ([1, h, n] for the chunk-indexed tensors),
 * sequence s on chunks [seqChunk[s], seqChunk[s + 1]), with its own S0[s] in and Sfinal[s] out. */
function build(spec: Spec, sch: Schedule, varlen = false): Kernel {
  return traceKernel(varlen ? "discounted_cumsum_varlen" : "discounted_cumsum", sch.numWarps, doc, (k) => {
    const { e, chunk: c } = spec;
    const D = stateFeatures(spec);
    const BD = sch.blockD;
    const sizes = scanSizes(k, varlen), { b, t, h, n, ns } = sizes;
    const dS = k.tensor("dS", "f32", [b, h, n, D, e], "in");
    const dZ = k.tensor("dZ", "f32", [b, h, n, D], "in");
    const logG = k.tensor("logG", "f32", [b, t, h], "in");
    const S0 = k.tensor("S0", "f32", [ns, h, D, e], "in");
    const Z0 = k.tensor("Z0", "f32", [ns, h, D], "in");
    const Sin = k.tensor("Sin", "f32", [b, h, n, D, e], "out");
    const Zin = k.tensor("Zin", "f32", [b, h, n, D], "out");
    const Sfinal = k.tensor("Sfinal", "f32", [ns, h, D, e], "out");
    const Zfinal = k.tensor("Zfinal", "f32", [ns, h, D], "out");

    const { fb, si, hi, bi, first, end } = scanProgram(k, sizes, featureBlocks(spec, BD).count);
    const feats = range(fb.mul(BD), BD);

    const s = k.reg("s", [BD, e], "f32"); // the running state
    const z = k.reg("z", [BD], "f32");
    const ds = k.shared("ds", [BD, e], "f32");
    const dz = k.reg("dz", [BD], "f32");
    k.load(s, S0, [si, hi, feats, range(0, e)]); // [BD, e]; features past D read 0
    k.load(z, Z0, [si, hi, feats]); // [BD]
    k.for(first, end, (m) => {
      k.store(Sin, [bi, hi, m, feats, range(0, e)], s);
      k.store(Zin, [bi, hi, m, feats], z);
      const { G } = chunkGates(k, logG, bi, hi, m.mul(c), c); // G = chunk m's log gate
      k.load(ds, dS, [bi, hi, m, feats, range(0, e)]); // [BD, e]
      k.load(dz, dZ, [bi, hi, m, feats]); // [BD]
      k.map(s, ({ row, col }) => s.at(row, col).mul(G.exp()).add(ds.at(row, col)));
      k.map(z, ({ row }) => z.at(row).mul(G.exp()).add(dz.at(row)));
    }, { stages: sch.stages });
    k.store(Sfinal, [si, hi, feats, range(0, e)], s);
    k.store(Zfinal, [si, hi, feats], z);
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

/** The scan of packed variable-length sequences (see `build`). */
export const discountedCumsumVarlen: KernelDef = {
  name: "discounted_cumsum_varlen",
  twin: discountedCumsum.name,
  schedule: discountedCumsum.schedule,
  scheduleSpace: (s: Spec) => discountedCumsum.scheduleSpace(s),
  build: (spec, sch) => build(spec, sch, true),
};
