// The CPU API's inputs against the problem's flags (issue 27): an input the flags say the plan does
// not read (logG with gated false, S0/Z0 without initialState, dSfinal/dZfinal without finalState)
// is an error naming it, as is a required one missing, a flag that is not a boolean, or an unknown
// input; never a silent run without it. Before, forwardOnCpu with logG and gated false (or gated
// missing) returned the ungated output.

import { describe, expect, it } from "vitest";
import { executeOnCpu } from "../dsl/execute-cpu.ts";
import { backwardOnCpu } from "../dsl/plan-backward.ts";
import { createDecodeState, decodeStepOnCpu } from "../dsl/plan-decode.ts";
import { forwardOnCpu, forwardPlan, type Problem } from "../dsl/plan.ts";
import { featureCount } from "../dsl/sympow.ts";

const p: Problem = { b: 1, t: 20, hq: 2, h: 1, d: 8, e: 8, deg: 2, chunk: 16, dtype: "f32", scale: 0.35, gated: false, initialState: false, finalState: false };
const D = featureCount(p.d, p.deg);
const ramp = (n: number, lo: number, hi: number): Float32Array => Float32Array.from({ length: n }, (_, i) => lo + ((hi - lo) * ((i * 7919) % n)) / n);
const Q = ramp(20 * 2 * 8, -1, 1), K = ramp(20 * 8, -1, 1), V = ramp(20 * 8, -1, 1), logG = ramp(20, -1, -0.1);
const S0 = ramp(D * 8, 0, 0.1), Z0 = ramp(D, 0.5, 1), dY = ramp(20 * 2 * 8, -1, 1);

describe("forwardOnCpu and backwardOnCpu check their inputs against the problem's flags", () => {
  it("refuse logG for an ungated problem, naming logG and the flag (the gates were ignored before)", () => {
    // what the error prevents: the gates change the output, so ignoring them was a wrong answer
    const gated = forwardOnCpu({ ...p, gated: true }, { Q, K, V, logG }).Y, plain = forwardOnCpu(p, { Q, K, V }).Y;
    expect(Math.max(...gated.map((v, i) => Math.abs(v - plain[i]!)))).toBeGreaterThan(0.01);
    const msg = /^logG: given, but problem\.gated is false, so the plan would not read it; set gated: true, or leave logG out$/;
    expect(() => forwardOnCpu(p, { Q, K, V, logG })).toThrow(msg);
    expect(() => backwardOnCpu(p, { Q, K, V, logG, dY })).toThrow(msg);
  });

  it("refuse a problem whose gated (or initialState) is missing or not a boolean", () => {
    const { gated: _g, ...noGated } = p;
    expect(() => forwardOnCpu(noGated as Problem, { Q, K, V, logG })).toThrow(/^gated: expected true or false \(logG given or not\), received undefined$/);
    expect(() => forwardOnCpu({ ...p, gated: 1 } as unknown as Problem, { Q, K, V, logG })).toThrow(/^gated: expected true or false \(logG given or not\), received 1$/);
    const { initialState: _i, ...noInit } = p;
    expect(() => forwardOnCpu(noInit as Problem, { Q, K, V })).toThrow(/^initialState: expected true or false \(S0, Z0 given or not\), received undefined$/);
    expect(() => forwardOnCpu({ ...p, finalState: "yes" } as unknown as Problem, { Q, K, V })).toThrow(/^finalState: expected true, false or undefined/);
  });

  it("require logG for a gated problem", () => {
    expect(() => forwardOnCpu({ ...p, gated: true }, { Q, K, V })).toThrow(/^logG: required when problem\.gated is true, received undefined$/);
    expect(() => backwardOnCpu({ ...p, gated: true }, { Q, K, V, dY })).toThrow(/^logG: required when problem\.gated is true/);
  });

  it("refuse S0/Z0 without initialState and require them with it", () => {
    expect(() => forwardOnCpu(p, { Q, K, V, S0, Z0 })).toThrow(/^S0: given, but problem\.initialState is false/);
    expect(() => forwardOnCpu(p, { Q, K, V, Z0 })).toThrow(/^Z0: given, but problem\.initialState is false/);
    expect(() => forwardOnCpu({ ...p, initialState: true }, { Q, K, V, S0 })).toThrow(/^Z0: required when problem\.initialState is true/);
    expect(forwardOnCpu({ ...p, initialState: true }, { Q, K, V, S0, Z0 }).Y.length).toBe(20 * 2 * 8);
  });

  it("refuse dSfinal/dZfinal without finalState and require them with it (backward)", () => {
    const dSfinal = new Float32Array(D * 8), dZfinal = new Float32Array(D);
    expect(() => backwardOnCpu(p, { Q, K, V, dY, dSfinal, dZfinal })).toThrow(/^dSfinal: given, but problem\.finalState is false/);
    const { finalState: _f, ...noFinal } = p;
    expect(() => backwardOnCpu(noFinal, { Q, K, V, dY, dZfinal })).toThrow(/^dZfinal: given, but problem\.finalState is undefined/);
    expect(() => backwardOnCpu({ ...p, finalState: true }, { Q, K, V, dY, dSfinal })).toThrow(/^dZfinal: required when problem\.finalState is true/);
    expect(backwardOnCpu({ ...p, finalState: true }, { Q, K, V, dY, dSfinal, dZfinal }).dQ.length).toBe(20 * 2 * 8);
  });

  it("refuse an unknown input (a misspelt logG is not silently an ungated run)", () => {
    expect(() => forwardOnCpu(p, { Q, K, V, log_G: logG } as never)).toThrow(/^inputs\.log_G: unknown input; expected some of Q, K, V, logG, S0, Z0$/);
    expect(() => forwardOnCpu(p, { Q, K, V, dY } as never)).toThrow(/^inputs\.dY: unknown input/);
    expect(() => backwardOnCpu(p, { Q, K, V, dY, dy: dY } as never)).toThrow(/^inputs\.dy: unknown input; expected some of Q, K, V, dY, logG, S0, Z0, dSfinal, dZfinal$/);
  });
});

describe("decodeStepOnCpu checks logG against the decode problem's gated", () => {
  const dp = { b: 1, hq: 2, h: 1, d: 8, e: 8, deg: 2, chunk: 16, dtype: "f32" as const, scale: 0.35 };
  const x = { q: Q.subarray(0, 16), k: K.subarray(0, 8), v: V.subarray(0, 8) };

  it("refuses logG for an ungated state and requires it for a gated one", () => {
    expect(() => decodeStepOnCpu(createDecodeState({ ...dp, gated: false }), { ...x, logG: logG.subarray(0, 1) })).toThrow(
      /^logG: given, but the problem's gated is false, so the plan would not read it/,
    );
    expect(() => decodeStepOnCpu(createDecodeState({ ...dp, gated: true }), x)).toThrow(/^logG: required when the problem's gated is true, received undefined$/);
    expect(decodeStepOnCpu(createDecodeState({ ...dp, gated: true }), { ...x, logG: logG.subarray(0, 1) }).length).toBe(16);
    expect(decodeStepOnCpu(createDecodeState({ ...dp, gated: false }), x).length).toBe(16);
  });

  it("refuses a decode problem without gated", () => {
    expect(() => createDecodeState(dp as never)).toThrow(/^gated: expected true or false \(logG given with each call or not\), received undefined$/);
  });
});

describe("executeOnCpu (a plan and its inputs by buffer name)", () => {
  it("refuses an input for a buffer the plan fills itself (logG of an ungated plan starts as zeros)", () => {
    expect(() => executeOnCpu(forwardPlan(p), { Q, K, V, logG })).toThrow(
      /^plan input 'logG': given, but the plan does not read it \(it starts as zeros: the problem is not gated\); leave it out$/,
    );
    expect(() => executeOnCpu(forwardPlan(p), { Q, K, V, S0 })).toThrow(/^plan input 'S0': given, but the plan does not read it \(it starts as zeros\)/);
    expect(() => executeOnCpu(forwardPlan(p), { Q, K, V, Y: dY })).toThrow(/^plan input 'Y': given, but the plan does not read it \(it starts as NaN, an output\)/);
    expect(executeOnCpu(forwardPlan({ ...p, gated: true }), { Q, K, V, logG }).Y!.length).toBe(20 * 2 * 8);
  });
});
