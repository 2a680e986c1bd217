// Packed variable-length sequences (dsl/plan-varlen.ts): a call over ns sequences packed along t
// with cuSeqlens equals one call per sequence, bit for bit: outputs, final states and gradients
// (the aligned layout gives each sequence the chunks a call of its own has, so the kernels do the
// same arithmetic). Boundaries at chunk edges and inside chunks, sequences of length 0 and 1.
// Then the TypeScript API (opts.cuSeqlens) on the interpreter stand-in for the GPU
// (test/gpu/interp-device.ts): the same results through upload, plan, launch and read-back, and
// errors that name the argument.

import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generate, writeGenerated } from "../codegen/gen.ts";
import type { DType } from "../dsl/dtype.ts";
import { backwardOnCpu } from "../dsl/plan-backward.ts";
import { checkCuSeqlens, offsetsOf as offsets, varlenBackwardOnCpu, varlenForwardOnCpu, varlenForwardPlan, varlenLayout, type VarlenProblem } from "../dsl/plan-varlen.ts";
import { forwardOnCpu, type Problem } from "../dsl/plan.ts";
import { featureCount } from "../dsl/sympow.ts";
import { ArgumentError, powerRetention, powerRetentionBackward, Tensor } from "../runtime/index.ts";
import { installInterpDevice } from "./gpu/interp-device.ts";
import { expectIdentical } from "./helpers/compare.ts";
import { fcOptions, rng, uniform } from "./helpers/problems.ts";

const C = 16;

interface VarlenCase {
  readonly lengths: readonly number[];
  readonly hq: number;
  readonly h: number;
  readonly d: number;
  readonly e: number;
  readonly dtype: DType;
  readonly gated: boolean;
  readonly initialState: boolean;
  readonly finalState: boolean;
  readonly seed: number;
}


function problemOf(c: VarlenCase): VarlenProblem {
  const cu = offsets(c.lengths);
  return {
    b: 1, t: cu[cu.length - 1]!, hq: c.hq, h: c.h, d: c.d, e: c.e, deg: 2, chunk: C, dtype: c.dtype, scale: 1 / Math.sqrt(c.d),
    gated: c.gated, initialState: c.initialState, finalState: c.finalState, cuSeqlens: cu,
  };
}

/** Inputs of a case: packed Q, K, V, logG, per-sequence S0, Z0, and dY, dSfinal, dZfinal. */
function inputsOf(c: VarlenCase) {
  const p = problemOf(c), ns = c.lengths.length, D = featureCount(c.d, 2);
  const r = rng(c.seed);
  return {
    Q: uniform(r, p.t * c.hq * c.d, -1, 1, c.dtype),
    K: uniform(r, p.t * c.h * c.d, -1, 1, c.dtype),
    V: uniform(r, p.t * c.h * c.e, -1, 1, c.dtype),
    logG: c.gated ? uniform(r, p.t * c.h, -0.6, 0, "f32") : undefined,
    S0: c.initialState ? uniform(r, ns * c.h * D * c.e, -0.05, 0.05, "f32") : undefined,
    Z0: c.initialState ? uniform(r, ns * c.h * D, 0, 0.05, "f32") : undefined,
    dY: uniform(r, p.t * c.hq * c.e, -1, 1, c.dtype),
    dSfinal: c.finalState ? uniform(r, ns * c.h * D * c.e, -0.01, 0.01, "f32") : undefined,
    dZfinal: c.finalState ? uniform(r, ns * c.h * D, -0.01, 0.01, "f32") : undefined,
  };
}

const defined = <T extends object>(o: T): T => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;

/** Rows [cu[s], cu[s + 1]) of a packed [1, t, row] array; state s of an [ns, per] array. */
const rowsOf = (a: ArrayLike<number>, cu: readonly number[], s: number, row: number): Float32Array =>
  Float32Array.from({ length: (cu[s + 1]! - cu[s]!) * row }, (_, i) => a[cu[s]! * row + i]!);
const stateOf = (a: ArrayLike<number> | undefined, s: number, per: number): Float32Array =>
  a ? Float32Array.from({ length: per }, (_, i) => a[s * per + i]!) : new Float32Array(per);

/** The packed call against one call per sequence (each with a final state: the chunked form, which
 * the packed call takes too). */
function checkAgainstPerSequence(c: VarlenCase): void {
  const p = problemOf(c), x = inputsOf(c), cu = p.cuSeqlens, D = featureCount(c.d, 2);
  const sPer = c.h * D * c.e, zPer = c.h * D;
  const fwd = varlenForwardOnCpu(p, defined({ Q: x.Q, K: x.K, V: x.V, logG: x.logG, S0: x.S0, Z0: x.Z0 }));
  const bwd = varlenBackwardOnCpu(p, defined({ ...x }));
  for (let s = 0; s < c.lengths.length; s++) {
    const what = (n: string): string => `${n} of sequence ${s} (lengths ${c.lengths.join(", ")}, ${c.dtype}, gated ${c.gated}, state in ${c.initialState}, out ${c.finalState})`;
    const S0 = stateOf(x.S0, s, sPer), Z0 = stateOf(x.Z0, s, zPer);
    if (c.lengths[s] === 0) {
      // nothing to read: the state passes through, and so does its gradient
      if (c.finalState) expectIdentical(stateOf(fwd.Sfinal, s, sPer), S0, what("Sfinal"));
      if (c.initialState) expectIdentical(stateOf(bwd.dS0, s, sPer), stateOf(x.dSfinal, s, sPer), what("dS0"));
      continue;
    }
    const q: Problem = { ...p, t: c.lengths[s]!, initialState: true, finalState: true };
    const one = {
      Q: rowsOf(x.Q, cu, s, c.hq * c.d), K: rowsOf(x.K, cu, s, c.h * c.d), V: rowsOf(x.V, cu, s, c.h * c.e),
      ...(c.gated ? { logG: rowsOf(x.logG!, cu, s, c.h) } : {}), S0, Z0,
    };
    const f = forwardOnCpu(q, one);
    expectIdentical(rowsOf(fwd.Y, cu, s, c.hq * c.e), f.Y, what("Y"));
    if (c.finalState) {
      expectIdentical(stateOf(fwd.Sfinal, s, sPer), f.Sfinal!, what("Sfinal"));
      expectIdentical(stateOf(fwd.Zfinal, s, zPer), f.Zfinal!, what("Zfinal"));
    }
    const g = backwardOnCpu(q, { ...one, dY: rowsOf(x.dY, cu, s, c.hq * c.e), dSfinal: stateOf(x.dSfinal, s, sPer), dZfinal: stateOf(x.dZfinal, s, zPer) });
    expectIdentical(rowsOf(bwd.dQ, cu, s, c.hq * c.d), g.dQ, what("dQ"));
    expectIdentical(rowsOf(bwd.dK, cu, s, c.h * c.d), g.dK, what("dK"));
    expectIdentical(rowsOf(bwd.dV, cu, s, c.h * c.e), g.dV, what("dV"));
    if (c.gated) expectIdentical(rowsOf(bwd.dlogG, cu, s, c.h), g.dlogG, what("dlogG"));
    if (c.initialState) {
      expectIdentical(stateOf(bwd.dS0, s, sPer), g.dS0!, what("dS0"));
      expectIdentical(stateOf(bwd.dZ0, s, zPer), g.dZ0!, what("dZ0"));
    }
  }
}

/** Lengths that put boundaries at chunk edges (multiples of C), inside chunks, and make empty and one-token sequences. */
const length = fc.oneof(fc.constant(0), fc.constant(1), fc.constantFrom(C, 2 * C), fc.integer({ min: 2, max: 2 * C + 5 }));
const arbCase: fc.Arbitrary<VarlenCase> = fc.record({
  lengths: fc.array(length, { minLength: 1, maxLength: 4 }).filter((ls) => ls.some((l) => l > 0)),
  hq: fc.constant(0), h: fc.constantFrom(1, 2), d: fc.constant(8), e: fc.constant(4),
  dtype: fc.constantFrom<DType>("f32", "bf16", "f16"),
  gated: fc.boolean(), initialState: fc.boolean(), finalState: fc.boolean(),
  seed: fc.integer({ min: 0, max: 0x7fffffff }),
}).chain((c) => fc.constantFrom(1, 2).map((g) => ({ ...c, hq: c.h * g })));

describe("packed sequences on the interpreter == one call per sequence", () => {
  it("lengths 5, 0, 16, 1, 37: every output, state and gradient", () => {
    checkAgainstPerSequence({ lengths: [5, 0, 16, 1, 37], hq: 2, h: 1, d: 8, e: 4, dtype: "f32", gated: true, initialState: true, finalState: true, seed: 7 });
  });

  it("property: random lengths, dtypes, gates, states in and out", () => {
    fc.assert(fc.property(arbCase, (c) => checkAgainstPerSequence(c)), fcOptions(25));
  }, 300_000);

  it("the aligned layout: each sequence starts a chunk, empty ones take none", () => {
    expect(varlenLayout([0, 5, 5, 21, 22, 59], 16)).toEqual({
      ns: 5, nc: 6, chunkSrc: [0, 5, 21, 22, 38, 54], chunkLen: [5, 16, 1, 16, 16, 5], seqChunk: [0, 1, 1, 2, 3, 6],
    });
  });

  it("a packed call of one sequence is the dense call", () => {
    const c: VarlenCase = { lengths: [40], hq: 1, h: 1, d: 8, e: 4, dtype: "bf16", gated: true, initialState: false, finalState: false, seed: 3 };
    const p = problemOf(c), x = inputsOf(c);
    const dense = forwardOnCpu({ ...p, finalState: true }, { Q: x.Q, K: x.K, V: x.V, logG: x.logG! });
    expectIdentical(varlenForwardOnCpu(p, { Q: x.Q, K: x.K, V: x.V, logG: x.logG! }).Y, dense.Y, "Y");
  });
});

describe("the layout in the Python package (_manifest.varlen_layout)", () => {
  it("is varlenLayout's, over random packings and chunks", () => {
    const r = rng(5);
    const cases = Array.from({ length: 200 }, () => {
      const ns = 1 + Math.floor(r() * 6), chunk = [16, 64, 128][Math.floor(r() * 3)]!;
      const lengths = Array.from({ length: ns }, () => [0, 1, chunk, 2 * chunk, Math.floor(r() * 3 * chunk)][Math.floor(r() * 5)]!);
      return { cu: offsets(lengths), chunk };
    });
    const py = `
import json, sys
sys.path.insert(0, ${JSON.stringify(path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "runtime", "python"))})
from prt import _manifest as m
print(json.dumps([m.varlen_layout(c["cu"], c["chunk"]) for c in json.load(sys.stdin)]))
`;
    const out = spawnSync("python3", ["-c", py], { input: JSON.stringify(cases), encoding: "utf8" });
    expect(out.status, out.stderr).toBe(0);
    expect(JSON.parse(out.stdout)).toEqual(cases.map((c) => varlenLayout(c.cu, c.chunk)));
  });
});

describe("cuSeqlens errors name the argument, the expected and the received", () => {
  const cases: [unknown, RegExp][] = [
    [[0], /cuSeqlens: expected at least 2 offsets/],
    [[1, 10], /cuSeqlens\[0\]: expected 0/],
    [[0, 6, 4, 10], /cuSeqlens\[2\]: expected offsets that do not decrease, received 4 after 6/],
    [[0, 4, 9], /cuSeqlens\[2\]: expected the packed length 10 .*received 9/],
    [[0, 4.5, 10], /cuSeqlens\[1\]: expected an integer in \[0, 2\^31\), received 4.5/],
    [[0, "4", 10], /cuSeqlens\[1\]: expected an integer/],
    ["0,10", /cuSeqlens: expected an array \(or Int32Array\) of offsets/],
  ];
  it.each(cases)("%j", (cu, msg) => expect(() => checkCuSeqlens(cu, 10)).toThrow(msg));
  it("Int32Array offsets are accepted", () => expect(checkCuSeqlens(Int32Array.from([0, 3, 10]), 10)).toEqual([0, 3, 10]));
  it("b other than 1", () => {
    const p = { ...problemOf({ lengths: [3, 4], hq: 1, h: 1, d: 8, e: 4, dtype: "f32", gated: false, initialState: false, finalState: false, seed: 1 }), b: 2 };
    expect(() => varlenForwardPlan(p)).toThrow(/b: expected 1 with cuSeqlens .*received 2/);
  });
});

// ---- the TypeScript API on the interpreter stand-in for the GPU ---------------------------------

const TMP = mkdtempSync(path.join(tmpdir(), "prt-varlen-"));
const savedEnv = { PRT_MANIFEST: process.env.PRT_MANIFEST, PRT_KERNEL_DIR: process.env.PRT_KERNEL_DIR, PRT_NATIVE_ADDON: process.env.PRT_NATIVE_ADDON };
const API_D = 16;

describe("powerRetention with opts.cuSeqlens (interpreter stand-in for the GPU)", () => {
  let device: ReturnType<typeof installInterpDevice>;
  beforeAll(() => {
    const dir = path.join(TMP, "generated");
    writeGenerated(dir, generate({ selection: { degs: [2], ds: [API_D], es: null, chunks: [C], dtypes: ["f32", "bf16"], archs: ["sm_80", "sm_90a"], kernels: null } }));
    process.env.PRT_MANIFEST = path.join(dir, "manifest.json");
    device = installInterpDevice(); // before anything loads the addon in this process
  }, 60_000);
  afterAll(() => {
    for (const [k, v] of Object.entries(savedEnv)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    rmSync(TMP, { recursive: true, force: true });
  });

  const apiCase: VarlenCase = { lengths: [9, 0, 16, 1, 21], hq: 2, h: 1, d: API_D, e: API_D, dtype: "bf16", gated: true, initialState: true, finalState: true, seed: 11 };

  it("forward and backward equal the interpreter's plans bit for bit, states per sequence", () => {
    const c = apiCase, p = problemOf(c), x = inputsOf(c), ns = c.lengths.length, D = featureCount(c.d, 2);
    const up = (a: Float32Array, shape: number[], dtype: DType = c.dtype): Tensor => Tensor.upload(a, shape, dtype);
    const Q = up(x.Q, [1, p.t, c.hq, c.d]), K = up(x.K, [1, p.t, c.h, c.d]), V = up(x.V, [1, p.t, c.h, c.e]);
    const logG = up(x.logG!, [1, p.t, c.h], "f32");
    const S = up(x.S0!, [ns, c.h, D, c.e], "f32"), Z = up(x.Z0!, [ns, c.h, D], "f32");
    const out = powerRetention(Q, K, V, logG, { cuSeqlens: p.cuSeqlens, chunk: C, initialState: { S, Z }, returnState: true });
    const want = varlenForwardOnCpu(p, { Q: x.Q, K: x.K, V: x.V, logG: x.logG, S0: x.S0, Z0: x.Z0 });
    expectIdentical(out.Y.download(), want.Y, "Y");
    expect(out.state!.S.shape).toEqual([ns, c.h, D, c.e]);
    expectIdentical(out.state!.S.download(), want.Sfinal!, "Sfinal");
    expectIdentical(out.state!.Z.download(), want.Zfinal!, "Zfinal");
    const dS = up(x.dSfinal!, [ns, c.h, D, c.e], "f32"), dZ = up(x.dZfinal!, [ns, c.h, D], "f32");
    const g = powerRetentionBackward(out.saved, up(x.dY, [1, p.t, c.hq, c.e]), { dState: { S: dS, Z: dZ } });
    const gw = varlenBackwardOnCpu(p, defined({ ...x }));
    expectIdentical(g.dQ.download(), gw.dQ, "dQ");
    expectIdentical(g.dK.download(), gw.dK, "dK");
    expectIdentical(g.dV.download(), gw.dV, "dV");
    expectIdentical(g.dlogG!.download(), gw.dlogG, "dlogG");
    expectIdentical(g.dInitialState!.S.download(), gw.dS0!, "dS0");
    expectIdentical(g.dInitialState!.Z.download(), gw.dZ0!, "dZ0");
  }, 120_000);

  it("poisons the plan's outputs and temporaries only when asked (PRT_POISON=1)", () => {
    const t = 20, z = (shape: number[]): Tensor => Tensor.zeros(shape, "f32");
    const Q = z([1, t, 1, API_D]), K = z([1, t, 1, API_D]), V = z([1, t, 1, API_D]);
    const saved = process.env.PRT_POISON;
    try {
      for (const [env, poisons] of [[undefined, false], ["1", true]] as const) {
        if (env === undefined) delete process.env.PRT_POISON;
        else process.env.PRT_POISON = env;
        const before = device.poisoned;
        const r = powerRetention(Q, K, V, null, { chunk: C, cuSeqlens: [0, 7, 20] });
        expect(device.poisoned > before, `PRT_POISON=${env}`).toBe(poisons);
        r.Y.free();
        r.saved.free();
      }
    } finally {
      if (saved === undefined) delete process.env.PRT_POISON;
      else process.env.PRT_POISON = saved;
    }
  });

  it("errors name opts.cuSeqlens, Q (b > 1) and the per-sequence state", () => {
    const t = 20, D = featureCount(API_D, 2);
    const z = (shape: number[], dtype: DType = "f32"): Tensor => Tensor.zeros(shape, dtype);
    const Q = z([1, t, 1, API_D]), K = z([1, t, 1, API_D]), V = z([1, t, 1, API_D]);
    const call = (opts: object, q: Tensor = Q, k: Tensor = K, v: Tensor = V) => () => powerRetention(q, k, v, null, { chunk: C, ...opts });
    expect(call({ cuSeqlens: [0, 12, 19] })).toThrow(ArgumentError);
    expect(call({ cuSeqlens: [0, 12, 19] })).toThrow(/powerRetention: opts.cuSeqlens\[2\]: expected the packed length 20 .*received 19/);
    expect(call({ cuSeqlens: [0, 12, 7, 20] })).toThrow(/opts.cuSeqlens\[2\]: expected offsets that do not decrease/);
    expect(call({ cuSeqlens: "0,20" })).toThrow(/opts.cuSeqlens: expected an array/);
    const Q2 = z([2, t, 1, API_D]), K2 = z([2, t, 1, API_D]), V2 = z([2, t, 1, API_D]);
    expect(call({ cuSeqlens: [0, 20] }, Q2, K2, V2)).toThrow(/powerRetention: Q: expected b = 1 with opts.cuSeqlens .*received b = 2/);
    // one state per sequence: 2 sequences, a state of b = 1 is the wrong shape
    const S = z([1, 1, D, API_D]), Zs = z([1, 1, D]);
    expect(call({ cuSeqlens: [0, 8, 20], initialState: { S, Z: Zs } })).toThrow(/opts.initialState.S: expected shape \[2, 1, 136, 16\]/);
  });
});
