// Discounted cumulative sum backward (README "Backward"): the forward's recurrence
// Sin_{m+1} = exp(G_m) Sin_m + dS_m run backwards in time. With R the gradient of the state,
//   R_n = dSfinal,  R_m = dSin_m + exp(G_m) R_{m+1},  d(dS_m) = R_{m+1},  dS0 = R_0,
//   dG_m = exp(G_m) (<Sin_m, R_{m+1}> + <Zin_m, r_{m+1}>)   (r: the same for Z).
// One program owns one block of BD features of one (batch, kv head); dG_m is left as one partial
// sum per feature block (combine_grads adds them).

import { range, traceKernel } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { featureBlocks, scanProgram, scanSizes, withinBudget } from "./common.ts";

const doc = "ddS, ddZ, dS0, dZ0, dGc: reverse-time discounted cumsum of the state's gradient";

export const discountedCumsumBwd: KernelDef = {
  name: "discounted_cumsum_bwd",
  schedule: (s: Spec): Schedule => ({ numWarps: 4, blockD: 64, blockT: s.chunk, stages: 2 }),
  scheduleSpace: (s: Spec) =>
    withinBudget(s, [32, 64, 128].flatMap((blockD) => [4, 8].flatMap((numWarps) => [1, 2].map((stages) => ({ numWarps, blockD, blockT: s.chunk, stages })))), build),
  build: (spec, sch) => build(spec, sch),
};

/** The dense kernel, or with `varlen` the packed one (README "Variable-length sequences"; as
 * discounted_cumsum_varlen): sequence s on chunks [seqChunk[s], seqChunk[s + 1]) of [1, h, n],
 * its own dSfinal[s] in and dS0[s] out. */
function build(spec: Spec, sch: Schedule, varlen = false): Kernel {
  return traceKernel(varlen ? "discounted_cumsum_bwd_varlen" : "discounted_cumsum_bwd", sch.numWarps, doc, (k) => {
    const { e, chunk: c } = spec;
    const D = stateFeatures(spec);
    const BD = sch.blockD, nfb = featureBlocks(spec, BD).count;
    const sizes = scanSizes(k, varlen), { b, t, h, n, ns } = sizes;
    const logG = k.tensor("logG", "f32", [b, t, h], "in");
    const Sin = k.tensor("Sin", "f32", [b, h, n, D, e], "in");
    const Zin = k.tensor("Zin", "f32", [b, h, n, D], "in");
    const dSin = k.tensor("dSin", "f32", [b, h, n, D, e], "in");
    const dZin = k.tensor("dZin", "f32", [b, h, n, D], "in");
    const dSfinal = k.tensor("dSfinal", "f32", [ns, h, D, e], "in");
    const dZfinal = k.tensor("dZfinal", "f32", [ns, h, D], "in");
    const ddS = k.tensor("ddS", "f32", [b, h, n, D, e], "out");
    const ddZ = k.tensor("ddZ", "f32", [b, h, n, D], "out");
    const dS0 = k.tensor("dS0", "f32", [ns, h, D, e], "out");
    const dZ0 = k.tensor("dZ0", "f32", [ns, h, D], "out");
    const dGc = k.tensor("dGc", "f32", [b, h, n, nfb], "out");

    const { fb, si, hi, bi, first, end } = scanProgram(k, sizes, nfb);
    const feats = range(fb.mul(BD), BD); // features past D read 0, stores skip them

    const R = k.reg("R", [BD, e], "f32"); // gradient of the state after chunk m
    const r = k.reg("r", [BD], "f32");
    // Sin_m and dSin_m stream through shared memory (loaded at the top of the loop, so that with
    // stages > 1 the next chunk's blocks are in flight while this one is summed)
    const sIn = k.shared("s_in", [BD, e], "f32");
    const zIn = k.shared("z_in", [BD], "f32");
    const dsIn = k.shared("ds_in", [BD, e], "f32");
    const dzIn = k.shared("dz_in", [BD], "f32");
    const X = k.reg("X", [BD, e], "f32"); // Sin_m * R
    const gt = k.reg("g", [c], "f32");
    const G = k.reg("G", [1], "f32");
    const rowDot = k.reg("row_dot", [BD], "f32");
    const dG = k.reg("dG", [1], "f32");
    k.load(R, dSfinal, [si, hi, feats, range(0, e)]); // [BD, e]
    k.load(r, dZfinal, [si, hi, feats]); // [BD]

    k.for(first, end, (mm) => {
      const m = varlen ? first.add(end).sub(1).sub(mm) : n.sub(1).sub(mm); // chunks last to first
      k.load(gt, logG, [bi, range(m.mul(c), c), hi]); // [c]; positions past t read 0
      k.load(sIn, Sin, [bi, hi, m, feats, range(0, e)]); // [BD, e]
      k.load(zIn, Zin, [bi, hi, m, feats]); // [BD]
      k.load(dsIn, dSin, [bi, hi, m, feats, range(0, e)]); // [BD, e]
      k.load(dzIn, dZin, [bi, hi, m, feats]); // [BD]
      k.reduce(G, gt, "sum", 0); // [1] G_m
      const decay = G.at(0).exp();
      k.store(ddS, [bi, hi, m, feats, range(0, e)], R);
      k.store(ddZ, [bi, hi, m, feats], r);

      k.map(X, ({ row, col }) => sIn.at(row, col).mul(R.at(row, col)));
      k.reduce(rowDot, X, "sum", 1); // [BD]
      k.map(rowDot, ({ row }) => rowDot.at(row).add(zIn.at(row).mul(r.at(row))));
      k.reduce(dG, rowDot, "sum", 0); // [1]
      k.map(dG, ({ row }) => dG.at(row).mul(decay));
      k.store(dGc, [bi, hi, m, range(fb, 1)], dG);

      k.map(R, ({ row, col }) => dsIn.at(row, col).add(R.at(row, col).mul(decay)));
      k.map(r, ({ row }) => dzIn.at(row).add(r.at(row).mul(decay)));
    }, { stages: sch.stages });
    k.store(dS0, [si, hi, feats, range(0, e)], R);
    k.store(dZ0, [si, hi, feats], r);
  });
}

/** The backward scan of packed variable-length sequences (see `build`). */
export const discountedCumsumBwdVarlen: KernelDef = {
  name: "discounted_cumsum_bwd_varlen",
  twin: discountedCumsumBwd.name,
  schedule: discountedCumsumBwd.schedule,
  scheduleSpace: (s: Spec) => discountedCumsumBwd.scheduleSpace(s),
  build: (spec, sch) => build(spec, sch, true),
};
