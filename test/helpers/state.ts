// Float64 reference of the state after a sequence, in the project's layout (kernels/README.md:
// phi's features in sympow.ts order with sqrt-multinomial weights):
//   S = exp(L_T) S0 + sum_j exp(L_T - L_j) phi(k_j) v_j^T   [b, h, D, e]
//   Z = exp(L_T) Z0 + sum_j exp(L_T - L_j) phi(k_j)         [b, h, D]
// with L the cumulative log gate and T the last position.

import type { ForwardInputs, Problem } from "../../dsl/plan.ts";
import { symPowTable } from "../../dsl/sympow.ts";

export function referenceState(p: Problem, x: ForwardInputs): { S: Float64Array; Z: Float64Array } {
  const { b, t, h, d, e, deg } = p;
  const tab = symPowTable(d, deg);
  const D = tab.size;
  const S = new Float64Array(b * h * D * e);
  const Z = new Float64Array(b * h * D);
  const phi = new Float64Array(D);
  for (let bi = 0; bi < b; bi++)
    for (let hi = 0; hi < h; hi++) {
      const st = (bi * h + hi) * D;
      let LT = 0; // L_T, then L_T - L_j walking j down
      if (p.gated) for (let j = 0; j < t; j++) LT += x.logG![(bi * t + j) * h + hi]!;
      if (p.initialState)
        for (let f = 0; f < D; f++) {
          Z[st + f] = Math.exp(LT) * x.Z0![st + f]!;
          for (let c = 0; c < e; c++) S[(st + f) * e + c] = Math.exp(LT) * x.S0![(st + f) * e + c]!;
        }
      let decay = 0; // L_T - L_j
      for (let j = t - 1; j >= 0; j--) {
        const w = Math.exp(decay);
        const k = (bi * t + j) * h + hi;
        for (let f = 0; f < D; f++) {
          let v = tab.weight[f]!;
          for (let q = 0; q < deg; q++) v *= x.K[k * d + tab.index[f * deg + q]!]!;
          phi[f] = w * v;
        }
        for (let f = 0; f < D; f++) {
          Z[st + f] += phi[f]!;
          for (let c = 0; c < e; c++) S[(st + f) * e + c] += phi[f]! * x.V[k * e + c]!;
        }
        if (p.gated) decay += x.logG![k]!;
      }
    }
  return { S, Z };
}
