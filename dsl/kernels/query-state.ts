// Query state and combine (forward step 4 of SPEC.md's chunked algorithm). For query i of chunk m,
// with q'_i = scale q_i exp(lam_i / p) (the gate from the chunk's start folded into the query):
//   numS_i = phi(q'_i)^T Sin_m   [e]        denS_i = phi(q'_i) . Zin_m
// then, on the common scale M_i = max(maxA_i, 0) (numA, denA carry exp(-maxA_i)):
//   y_i = (numA_i exp(maxA_i - M_i) + numS_i exp(-M_i)) / (denA_i exp(maxA_i - M_i) + denS_i exp(-M_i))
//   lse_i = log(den_i) + M_i        (y_i = 0 and lse_i = -inf when den_i = 0)
// and, for the backward, the state's part of y and of the weights under the final normaliser:
//   yS_i = numS_i exp(-M_i) / den_i  [e]      wS_i = denS_i exp(-M_i) / den_i   (0 when den_i = 0)
// (README "Backward": they give Dy and the normaliser without recomputing phi(q'')^T [S, Z]).
// One program owns one chunk of one query head; it walks the chunk in blocks of BT rows and, for
// each, the state in blocks of BD features, forming phi of the queries right before each mma.
// In f16/bf16, phi(q') and the state block enter the mma as hi + lo pairs (common.ts,
// splitOperand): the sum phi(q')^T S can cancel far below its terms, and a single rounding of each
// operand then costs whole percent on such rows (README, "Precision of the state path").

import { max, range, select, traceKernel, type Val } from "../builder.ts";
import type { Kernel } from "../ir.ts";
import type { KernelDef, Schedule, Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";
import { chunkGates, featureBlocks, firstFitting, mmaSplit, splitOperand, STATE_OPERAND_SCALE, stateOperandDtype, tileBytes, TILE_BUDGET, tileSizes } from "./common.ts";

const doc = "Y = (attention part + phi(q')^T Sin) / (its normaliser), lse = log normaliser, q' = scale q exp(lam/p)";

function build(spec: Spec, sch: Schedule): Kernel {
  return traceKernel("query_state", sch.numWarps, doc, (k) => {
    const { deg: p, d, e, chunk: c, dtype } = spec;
    const D = stateFeatures(spec);
    const BT = sch.blockT, BD = sch.blockD;
    if (c % BT !== 0) throw new Error(`query_state: blockT ${BT} must divide the chunk ${c}`);
    const b = k.param("b", "i32"), t = k.param("t", "i32"), hq = k.param("hq", "i32"), h = k.param("h", "i32");
    const n = k.param("n", "i32"), scale = k.param("scale", "f32");
    const Q = k.tensor("Q", dtype, [b, t, hq, d], "in");
    const logG = k.tensor("logG", "f32", [b, t, h], "in");
    const Sin = k.tensor("Sin", "f32", [b, h, n, D, e], "in");
    const Zin = k.tensor("Zin", "f32", [b, h, n, D], "in");
    const numA = k.tensor("numA", "f32", [b, t, hq, e], "in");
    const denA = k.tensor("denA", "f32", [b, t, hq], "in");
    const maxA = k.tensor("maxA", "f32", [b, t, hq], "in");
    const Y = k.tensor("Y", dtype, [b, t, hq, e], "out");
    const lse = k.tensor("lse", "f32", [b, t, hq], "out");
    const yS = k.tensor("yS", "f32", [b, t, hq, e], "out");
    const wS = k.tensor("wS", "f32", [b, t, hq], "out");

    k.launch(n, hq, b); // (chunk, query head, batch)
    const m = k.programId(0), qh = k.programId(1), bi = k.programId(2);
    const hk = qh.idiv(hq.idiv(h)); // the kv head of this query head
    const t0 = m.mul(c);

    const { lam } = chunkGates(k, logG, bi, hk, t0, c); // lam [c]
    const qs = k.shared("q", [BT, d], "f32"); // q, then q'
    // bf16 pairs for an f16 spec (stateOperandDtype): phi(q') under strong gates falls below f16's
    // normal range, and the backward reads yS, wS to well below the dtype's rounding (README "Backward").
    const sd = stateOperandDtype(dtype);
    const phi = splitOperand(k, "phi", [BT, BD], sd, { spec, site: "query_state.phi" }); // phi(q'), hi + lo (stateSplit)
    const sb = splitOperand(k, "s", [BD, e], sd, { spec, site: "query_state.S" }); // a block of Sin_m / sigma, hi + lo (stateSplit)
    const sigma = STATE_OPERAND_SCALE[sd];
    const zb = k.reg("z", [BD], "f32");
    const numS = k.reg("num_s", [BT, e], "f32");
    const denBlock = k.reg("den_block", [BT], "f32");
    const num = k.reg("num", [BT, e], "f32"); // numA, then y
    const den = k.reg("den", [BT], "f32");
    const denAt = k.reg("den_a", [BT], "f32");
    const maxAt = k.reg("max_a", [BT], "f32");
    const lseT = k.reg("lse_t", [BT], "f32");

    k.for(0, c / BT, (rb) => {
      const r0 = rb.mul(BT); // first row of the block, inside the chunk
      k.if(t0.add(r0).lt(t), () => { // blocks wholly past t have nothing to do
        const rows = range(t0.add(r0), BT);
        k.load(qs, Q, [bi, rows, qh, range(0, d)]); // [BT, d]; rows past t read 0
        k.map(qs, ({ row, col }) => qs.at(row, col).mul(scale).mul(lam.at(r0.add(row)).div(p).exp()));
        k.fill(numS, 0);
        k.fill(den, 0);
        k.for(0, featureBlocks(spec, BD).count, (fb) => {
          const f0 = fb.mul(BD);
          k.expand(phi.x, qs, p, f0); // [BT, BD] features f0 .. f0+BD-1 (0 past D)
          phi.split();
          k.load(sb.x, Sin, [bi, hk, m, range(f0, BD), range(0, e)]); // [BD, e]
          sb.split(1 / sigma);
          k.load(zb, Zin, [bi, hk, m, range(f0, BD)]); // [BD]
          mmaSplit(k, numS, phi, sb, { accumulate: true }); // [BT, e] += [BT, BD] @ [BD, e], numS / sigma
          k.map(phi.x, ({ row, col }) => phi.x.at(row, col).mul(zb.at(col))); // phi_f(q') Z_f, in f32
          k.reduce(denBlock, phi.x, "sum", 1); // [BT]
          k.map(den, ({ row }) => den.at(row).add(denBlock.at(row))); // denS
        }, { stages: sch.stages });

        k.load(num, numA, [bi, rows, qh, range(0, e)]); // [BT, e]
        k.load(denAt, denA, [bi, rows, qh]); // [BT]
        k.load(maxAt, maxA, [bi, rows, qh]); // [BT]
        const M = (r: Val): Val => max(maxAt.at(r), 0); // the common scale (maxA = -inf on rows with no attention weight)
        const wA = (r: Val): Val => maxAt.at(r).sub(M(r)).exp(); // attention part to the common scale
        const sS = (r: Val): Val => M(r).neg().exp().mul(sigma); // state part to the common scale (numS is kept / sigma)
        k.map(denAt, ({ row }) => denAt.at(row).mul(wA(row))); // attention's weight on the common scale
        k.map(denBlock, ({ row }) => den.at(row).mul(M(row).neg().exp())); // the state's
        k.map(den, ({ row }) => denAt.at(row).add(denBlock.at(row)));
        const part = (x: Val, r: Val): Val => select(den.at(r).gt(0), x.div(den.at(r)), 0);
        k.map(numS, ({ row, col }) => part(numS.at(row, col).mul(sS(row)), row)); // yS
        k.map(num, ({ row, col }) => part(num.at(row, col).mul(wA(row)), row).add(numS.at(row, col)));
        k.map(denBlock, ({ row }) => part(denBlock.at(row), row)); // wS
        k.store(yS, [bi, rows, qh, range(0, e)], numS);
        k.store(wS, [bi, rows, qh], denBlock);
        k.map(lseT, ({ row }) => select(den.at(row).gt(0), den.at(row).log().add(M(row)), -Infinity));
        k.store(Y, [bi, rows, qh, range(0, e)], num); // rounded to the dtype by the store
        k.store(lse, [bi, rows, qh], lseT);
      });
    });
  });
}

/** Largest tiles first: whole chunk rows up to 64, feature blocks of 64 then 32. */
function candidates(spec: Spec): Schedule[] {
  return tileSizes(spec.chunk, 64).flatMap((blockT) => [64, 32, 16].map((blockD) => ({ numWarps: 4, blockD, blockT, stages: 2 })));
}

export const queryState: KernelDef = {
  name: "query_state",
  schedule: (s: Spec): Schedule => firstFitting(s, candidates(s), build),
  scheduleSpace: (s: Spec) =>
    tileSizes(s.chunk, 128)
      .flatMap((blockT) => [16, 32, 64, 128].flatMap((blockD) => [4, 8].map((numWarps) => ({ numWarps, blockD, blockT, stages: 2 }))))
      .filter((sch) => tileBytes(build(s, sch)) <= TILE_BUDGET),
  build,
};
