// The backward of a retention call as a plan (kernels/README.md, "Backward"): the gradients flow
// through the attention, the query state, the discounted cumulative sum (backwards in time) and
// the update state, and combine_grads adds the parts up. Like the forward, one window with no state
// in or out is the plain quadratic form: the attention kernels' `_y` variants over the whole
// sequence write the final gradients, and no state kernel runs.

import { executeOnCpu } from "./execute-cpu.ts";
import { attentionBwdDkv, attentionBwdDkvY, attentionBwdDq, attentionBwdDqY, attentionBwdPrep, attentionBwdPrepY } from "./kernels/attention-bwd.ts";
import { combineGrads, gateGradsY } from "./kernels/combine-grads.ts";
import { featureBlocks } from "./kernels/common.ts";
import { discountedCumsumBwd } from "./kernels/discounted-cumsum-bwd.ts";
import { dqStateBlocks, queryStateBwdDq, queryStateBwdDs } from "./kernels/query-state-bwd.ts";
import { updateStateBwd } from "./kernels/update-state-bwd.ts";
import { checkProblem, chunksOf, forwardPlan, inputBuffers, planInputs, problemSpec, stateInBuffers, stepOf, type ForwardInputs, type Problem, type ScheduleTable } from "./plan.ts";
import { withoutUnusedBuffers, type Plan, type PlanBuffer, type PlanStep } from "./plan-types.ts";
import { stateFeatures } from "./spec.ts";

/** One window (chunk >= t), no initial state and no final state: the quadratic form, no state part. */
const isShortPath = (p: Problem): boolean => chunksOf(p) === 1 && !p.initialState && !p.finalState;

/**
 * Backward. Inputs: Q K V logG S0 Z0 (as the forward), the forward's lse, yS and wS (on the
 * quadratic path yS is y in f32, whose dot with dy is Dy), the state each chunk read (Sin, Zin; on
 * the forward's short path that is S0, Z0), dY, and dSfinal, dZfinal when `p.finalState` (zeros
 * otherwise). Outputs: dQ dK dV (dtype), dlogG (f32; the gradient for a gate
 * of 1 when ungated), and dS0, dZ0 when `p.initialState`.
 */
export function backwardPlan(p: Problem, sched: ScheduleTable = {}): Plan {
  checkProblem(p);
  const spec = problemSpec(p);
  const D = stateFeatures(spec);
  const n = chunksOf(p);
  const { b, t, hq, h, d, e } = p;
  const state = stateInBuffers(p);
  const buf = (name: string, shape: number[], init: PlanBuffer["init"] = "nan"): PlanBuffer => ({ name, dtype: "f32", shape, init });
  const buffers: PlanBuffer[] = [
    ...inputBuffers(p),
    buf("lse", [b, t, hq], "input"),
    buf("yS", [b, t, hq, e], "input"),
    buf("wS", [b, t, hq], "input"),
    { name: "dY", dtype: p.dtype, shape: [b, t, hq, e], init: "input" },
    buf("Dy", [b, t, hq]),
    buf("rowW", [b, t, hq]),
    buf("dlamA", [b, t, h]),
    { name: "dQ", dtype: p.dtype, shape: [b, t, hq, d], init: "nan" },
    { name: "dK", dtype: p.dtype, shape: [b, t, h, d], init: "nan" },
    { name: "dV", dtype: p.dtype, shape: [b, t, h, e], init: "nan" },
    buf("dlogG", [b, t, h]),
  ];
  const attn = { Q: "Q", K: "K", V: "V", logG: "logG", dY: "dY" };
  const outputs = ["dQ", "dK", "dV", "dlogG"];
  if (isShortPath(p)) {
    // the quadratic form: one window over the whole sequence; Dy = dy . y from the forward's y in
    // f32 (yS there; no state: sum_j P_ij dP_ij = dy_i . y_i), dQ, dK, dV out of the attention
    // under the forward's lse, dlogG is the suffix sum of dlamA
    const win = { b, t, hq, h, window: t, scale: p.scale };
    const steps: PlanStep[] = [
      stepOf(attentionBwdPrepY, spec, sched, { b, t, hq }, { yF: "yS", dY: "dY", Dy: "Dy" }),
      stepOf(attentionBwdDqY, spec, sched, win, { ...attn, lse: "lse", Dy: "Dy", dQ: "dQ", rowW: "rowW" }),
      stepOf(attentionBwdDkvY, spec, sched, win, { ...attn, lse: "lse", Dy: "Dy", rowW: "rowW", dK: "dK", dV: "dV", dlamA: "dlamA" }),
      stepOf(gateGradsY, spec, sched, { b, t, h }, { dlamA: "dlamA", dlogG: "dlogG" }),
    ];
    return withoutUnusedBuffers({ buffers, steps, outputs });
  }
  const dims = { b, t, hq, h, n };
  const win = { b, t, hq, h, window: p.chunk, scale: p.scale }; // windows of one chunk
  const dq = stepOf(queryStateBwdDq, spec, sched, {}, {});
  const dcb = stepOf(discountedCumsumBwd, spec, sched, { b, t, h, n }, {});
  const nfbC = featureBlocks(spec, dcb.schedule.blockD).count; // dGc's partial sums per chunk
  buffers.push(
    buf("lseB", [b, t, hq]),
    buf("DyA", [b, t, hq]),
    buf("PA", [b, t, hq]),
    buf("dQa", [b, t, hq, d]),
    buf("dKa", [b, t, h, d]),
    buf("dVa", [b, t, h, e]),
    buf("dQs", [b, t, hq, d]),
    buf("dlamQ", [b, t, hq]),
    buf("dKs", [b, t, h, d]),
    buf("dVs", [b, t, h, e]),
    buf("dlamK", [b, t, h]),
    buf("dGc", [b, h, n, nfbC]),
    buf("dGk", [b, h, n]),
  );
  if (state.Sin === "Sin") buffers.push(buf("Sin", [b, h, n, D, e], "input"), buf("Zin", [b, h, n, D], "input"));
  const final = p.finalState ? "input" : "zeros";
  buffers.push(
    buf("dSin", [b, h, n, D, e]),
    buf("dZin", [b, h, n, D]),
    buf("dSfinal", [b, h, D, e], final),
    buf("dZfinal", [b, h, D], final),
    buf("ddS", [b, h, n, D, e]),
    buf("ddZ", [b, h, n, D]),
    buf("dS0", [b, h, D, e]),
    buf("dZ0", [b, h, D]),
  );
  const steps: PlanStep[] = [
    // the attention parts of Dy_i = dy_i . y_i and of the weights' total, recomputed in f32
    // (README "Backward"); query_state_bwd_dq completes them into Dy and lseB with the state part
    stepOf(attentionBwdPrep, spec, sched, win, { ...attn, lse: "lse", DyA: "DyA", PA: "PA" }),
    {
      ...dq,
      params: { ...dims, scale: p.scale, nfb: dqStateBlocks(spec, dq.schedule) },
      bind: {
        Q: "Q", logG: "logG", Sin: state.Sin, Zin: state.Zin, dY: "dY", lse: "lse", yS: "yS", wS: "wS",
        DyA: "DyA", PA: "PA", Dy: "Dy", lseB: "lseB", dQs: "dQs", dlamQ: "dlamQ",
      },
    },
    stepOf(attentionBwdDq, spec, sched, win, { ...attn, lse: "lseB", Dy: "Dy", dQa: "dQa", rowW: "rowW" }),
    stepOf(attentionBwdDkv, spec, sched, win, { ...attn, lse: "lseB", Dy: "Dy", rowW: "rowW", dKa: "dKa", dVa: "dVa", dlamA: "dlamA" }),
    stepOf(queryStateBwdDs, spec, sched, { ...dims, scale: p.scale }, {
      Q: "Q", logG: "logG", dY: "dY", lse: "lseB", Dy: "Dy", dSin: "dSin", dZin: "dZin",
    }),
    {
      ...dcb,
      bind: {
        logG: "logG", Sin: state.Sin, Zin: state.Zin, dSin: "dSin", dZin: "dZin", dSfinal: "dSfinal", dZfinal: "dZfinal",
        ddS: "ddS", ddZ: "ddZ", dS0: "dS0", dZ0: "dZ0", dGc: "dGc",
      },
    },
    stepOf(updateStateBwd, spec, sched, { b, t, h, n }, {
      K: "K", V: "V", logG: "logG", ddS: "ddS", ddZ: "ddZ", dKs: "dKs", dVs: "dVs", dlamK: "dlamK", dGk: "dGk",
    }),
    stepOf(combineGrads, spec, sched, { ...dims, nfb: nfbC }, {
      dQa: "dQa", dQs: "dQs", dKa: "dKa", dKs: "dKs", dVa: "dVa", dVs: "dVs", dlamA: "dlamA", dlamK: "dlamK", dlamQ: "dlamQ",
      dGc: "dGc", dGk: "dGk", dQ: "dQ", dK: "dK", dV: "dV", dlogG: "dlogG",
    }),
  ];
  if (p.initialState) outputs.push("dS0", "dZ0");
  return withoutUnusedBuffers({ buffers, steps, outputs });
}

/** What the backward needs beyond the forward's inputs. */
export interface BackwardInputs extends ForwardInputs {
  readonly dY: ArrayLike<number>; // [b, t, hq, e]
  /** [b, h, D, e] and [b, h, D]: gradients of the final state, when `problem.finalState` (else zero). */
  readonly dSfinal?: ArrayLike<number>;
  readonly dZfinal?: ArrayLike<number>;
}

export interface BackwardOutputs {
  readonly dQ: Float32Array; // [b, t, hq, d], values of the dtype
  readonly dK: Float32Array; // [b, t, h, d]
  readonly dV: Float32Array; // [b, t, h, e]
  readonly dlogG: Float32Array; // [b, t, h]
  readonly dS0?: Float32Array; // [b, h, D, e], when problem.initialState
  readonly dZ0?: Float32Array; // [b, h, D]
}

/** Run the forward plan, then the backward plan, through the interpreter. */
export function backwardOnCpu(p: Problem, inputs: BackwardInputs, sched: ScheduleTable = {}): BackwardOutputs {
  const given = planInputs(p, inputs, ["dY"], [["dSfinal", "finalState"], ["dZfinal", "finalState"]]);
  const fwd = executeOnCpu(forwardPlan(p, sched), given);
  const out = executeOnCpu(backwardPlan(p, sched), { ...given, ...fwd });
  return {
    dQ: out.dQ!, dK: out.dK!, dV: out.dV!, dlogG: out.dlogG!,
    ...(p.initialState ? { dS0: out.dS0!, dZ0: out.dZ0! } : {}),
  };
}
