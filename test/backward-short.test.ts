// The backward's short path (one window over the whole sequence, no state in or out: the quadratic
// form) at lengths past the compiled chunks, on the interpreter: the plan takes it when the
// Problem's chunk is >= t, so these cases draw a nominal chunk of 16 or 64 and run with a chunk of
// the next power of two or 4096. Against the float64 reference (as test/backward.test.ts measures
// it), against the chunked path on the same inputs, with non-finite inputs, and with the spec's
// chunk changed under the short path's kernels (they must not read it). The worst errors per
// dtype and gradient are printed at the end.

import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { executeOnCpu } from "../dsl/execute-cpu.ts";
import { backwardOnCpu, backwardPlan, type BackwardOutputs } from "../dsl/plan-backward.ts";
import { forwardPlan, planInputs, type Problem } from "../dsl/plan.ts";
import type { Plan } from "../dsl/plan-types.ts";
import { referenceBackward, type ReferenceGradients } from "../dsl/reference/power-retention.ts";
import { expectClose, TOL, WorstErrors } from "./helpers/compare.ts";
import { arbCase, caseInputs, describeCase, fcOptions, fcSeed, rng, uniform, type Case, type Inputs } from "./helpers/problems.ts";

const worst = new WorstErrors();
afterAll(() => console.log(worst.table("backward, short path (one window, chunk >= t) vs float64 reference: worst relative error")));

const GRADS = ["dQ", "dK", "dV", "dlogG"] as const;
const SLOW = { timeout: 180_000 };

function sumSq(a: ArrayLike<number>, b?: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i]!)) return Infinity;
    const d = a[i]! - (b ? b[i]! : 0);
    s += d * d;
  }
  return s;
}

const randomDY = (p: Problem, seed: number): Float32Array => uniform(rng(seed ^ 0x5eed), p.b * p.t * p.hq * p.e, -1, 1, p.dtype);

function refGrads(p: Problem, x: Inputs, dY: Float32Array): ReferenceGradients {
  const logG = x.logG ?? new Float32Array(p.b * p.t * p.h);
  return referenceBackward({ shape: p, deg: p.deg, scale: p.scale, Q: x.Q, K: x.K, V: x.V, logG }, dY);
}

/** The smallest power of two >= t (at least 16), or 4096: a chunk that puts the problem on the short path. */
const shortChunk = (t: number, seed: number): number => (seed % 2 ? 4096 : Math.max(16, 2 ** Math.ceil(Math.log2(t))));

/** A case with t in [70, 300] whose Problem chunk is >= t; its nominal chunk (16 or 64) is in the note. */
function arbShort(o: Parameters<typeof arbCase>[0] = {}): fc.Arbitrary<Case> {
  return arbCase({ chunks: [16, 64], dims: [[8, 3], [16, 2], [32, 1]], bMax: 1, ...o }).chain((c) =>
    fc.integer({ min: 70, max: o.tMax ?? 300 }).map((t) => ({ ...c, problem: { ...c.problem, t, chunk: shortChunk(t, c.seed) } })),
  );
}

/** As test/backward.test.ts: each gradient within twice SPEC's tolerance of the reference, or for
 * dQ, dK, dlogG of 1e-3 |dV| where that is larger (they vanish when one key takes a row's weight). */
function compare(p: Problem, out: BackwardOutputs, ref: ReferenceGradients, what: string, key = ""): void {
  const tol = 2 * TOL[p.dtype];
  const floor = 1e-3 * Math.sqrt(sumSq(ref.dV));
  for (const g of GRADS) {
    const r = ref[g]!, norm = Math.sqrt(sumSq(r));
    if (g === "dV" || norm >= floor) {
      worst.record(`${key}${p.dtype} ${g}`, expectClose(out[g], r, tol, `${what}: ${g}`), what);
      continue;
    }
    const err = Math.sqrt(sumSq(out[g], r)) / floor;
    worst.record(`${key}${p.dtype} ${g} (vs 1e-3 |dV|)`, err, what);
    if (!(err <= tol)) throw new Error(`${what}: ${g} error ${err.toExponential(3)} relative to 1e-3 |dV| > ${tol} [FC_SEED=${fcSeed()}]`);
  }
}

function checkCase(c: Case, key = ""): void {
  const p = c.problem, x = caseInputs(c), dY = randomDY(p, c.seed);
  compare(p, backwardOnCpu(p, { ...x, dY }), refGrads(p, x, dY), describeCase(c), key);
}

describe("backward short path past the compiled chunks (t = 70..300, chunk >= t)", () => {
  it("is the short path: one window, no state kernels", () => {
    const p: Problem = { b: 1, t: 300, hq: 2, h: 1, d: 8, e: 8, deg: 2, chunk: 4096, dtype: "bf16", scale: 0.35, gated: true, initialState: false };
    const names = backwardPlan(p).steps.map((s) => s.kernel.name);
    expect(names.some((n) => /state|cumsum/.test(n)), names.join(" ")).toBe(false);
  });

  it("matches the reference on random shapes, dtypes, degrees and gates (odd t, GQA)", SLOW, () => {
    fc.assert(fc.property(arbShort(), (c) => checkCase(c)), fcOptions(16));
  });

  it("stays finite and matches with inputs scaled by 10", SLOW, () => {
    fc.assert(fc.property(arbShort({ inputScale: 10, gate: [-0.05, 0], tMax: 200 }), (c) => checkCase(c, "x10 ")), fcOptions(8));
  });

  it("stays finite with gates near -20, accurate on the scale of the ungated gradients", SLOW, () => {
    const strong = fc.oneof(arbShort({ gated: [true], gate: [-21, -19], tMax: 200 }), arbShort({ gated: [true], gate: [-20, 0], tMax: 200 }));
    fc.assert(
      fc.property(strong, (c) => {
        const p = c.problem, x = caseInputs(c), dY = randomDY(p, c.seed);
        const out = backwardOnCpu(p, { ...x, dY }), ref = refGrads(p, x, dY), open = refGrads(p, { ...x, logG: undefined }, dY);
        for (const g of GRADS) {
          const den = Math.sqrt(Math.max(sumSq(ref[g]!), sumSq(open[g]!))), num = Math.sqrt(sumSq(out[g], ref[g]!));
          const err = den > 0 ? num / den : num;
          worst.record(`gate-20 ${p.dtype} ${g} (vs ungated norm)`, err, describeCase(c));
          if (!(err <= 2 * TOL[p.dtype])) throw new Error(`${describeCase(c)}: ${g} error ${err.toExponential(3)} on the ungated scale > ${2 * TOL[p.dtype]} [FC_SEED=${fcSeed()}]`);
        }
      }),
      fcOptions(8),
    );
  });

  it("equals the chunked path (several windows of 16 or 64) within f32 rounding", SLOW, () => {
    const arb = arbShort({ dtypes: ["f32"], tMax: 200 }).chain((c) => fc.constantFrom(16, 64).map((chunk) => ({ c, chunk })));
    fc.assert(
      fc.property(arb, ({ c, chunk }) => {
        const x = caseInputs(c), dY = randomDY(c.problem, c.seed);
        const short = backwardOnCpu(c.problem, { ...x, dY }), chunked = backwardOnCpu({ ...c.problem, chunk }, { ...x, dY });
        for (const g of GRADS)
          worst.record(`f32 ${g} (short vs chunk ${chunk})`, expectClose(short[g], chunked[g], 2e-5, `${g} short vs chunk ${chunk}, ${describeCase(c)}`), describeCase(c));
      }),
      fcOptions(8),
    );
  });

  it("runs at t = 1000 with a chunk of 4096, within tolerance (f32 with weak gates for dlogG, bf16 GQA)", SLOW, () => {
    const base = { b: 1, t: 1000, d: 8, e: 8, deg: 2, chunk: 4096, scale: 1 / Math.sqrt(8), gated: true, initialState: false } as const;
    checkCase({ problem: { ...base, hq: 1, h: 1, dtype: "f32" }, seed: 7, inputScale: 1, gate: [-0.05, 0] }, "t1000 ");
    checkCase({ problem: { ...base, hq: 2, h: 1, dtype: "bf16" }, seed: 8, inputScale: 1, gate: [-1, 0] }, "t1000 ");
  });
});

describe("backward short path: non-finite inputs", () => {
  // As test/backward.test.ts: one non-finite element of Q, K or V gives non-finite gradients where the
  // float64 reference has them and leaves every other element bit-identical to the clean run.
  it.each([["V", Infinity], ["V", NaN], ["K", NaN], ["Q", Infinity], ["Q", -Infinity]] as const)("%s holding %s at one element", (input, value) => {
    fc.assert(
      fc.property(arbShort({ degs: [2], dtypes: ["f32", "bf16"], gated: [true], heads: [1, 2], dims: [[8, 1]], tMax: 150 }), fc.nat(), fc.nat(), (c, pick, col) => {
        const p = c.problem, x = caseInputs(c), dY = randomDY(p, c.seed);
        const tok = pick % p.t;
        const width = input === "Q" ? p.hq * p.d : input === "K" ? p.h * p.d : p.h * p.e;
        const arr = x[input]!.slice();
        arr[tok * width + (col % width)] = value;
        const bad: Inputs = { ...x, [input]: arr };
        const ref = refGrads(p, bad, dY);
        const clean = backwardOnCpu(p, { ...x, dY }), got = backwardOnCpu(p, { ...bad, dY });
        for (const g of GRADS) {
          const r = ref[g]!, o = got[g]!, cl = clean[g]!;
          for (let i = 0; i < o.length; i++) {
            const what = `${g}[${i}] (${value} in ${input} at token ${tok}, ${describeCase(c)})`;
            if (!Number.isFinite(r[i]!)) expect(Number.isFinite(o[i]!), what).toBe(false);
            else expect(Object.is(o[i], cl[i]), what).toBe(true);
          }
        }
      }),
      fcOptions(2),
    );
  }, 120_000);
});

describe("the short path's kernels do not depend on the spec's chunk", () => {
  /** The plan with every step's spec given another chunk (what a runtime passing an effective chunk >= t would run). */
  const respec = (plan: Plan, chunk: number): Plan => ({ ...plan, steps: plan.steps.map((s) => ({ ...s, spec: { ...s.spec, chunk } })) });

  it("forward and backward give bit-identical results under spec chunks 16, 64 and 4096 at t = 150", () => {
    const p: Problem = { b: 1, t: 150, hq: 2, h: 1, d: 8, e: 16, deg: 2, chunk: 256, dtype: "bf16", scale: 0.35, gated: true, initialState: false };
    const c: Case = { problem: p, seed: 3, inputScale: 1, gate: [-1, 0] };
    const x = caseInputs(c), dY = randomDY(p, 3);
    const given = planInputs(p, { ...x, dY }, ["dY"]);
    const run = (chunk: number): Record<string, Float32Array> => {
      const fwd = executeOnCpu(respec(forwardPlan(p), chunk), given);
      return { ...fwd, ...executeOnCpu(respec(backwardPlan(p), chunk), { ...given, ...fwd }) };
    };
    const [base, ...rest] = [256, 16, 64, 4096].map(run);
    for (const o of rest)
      for (const name of ["Y", "lse", "dQ", "dK", "dV", "dlogG"]) {
        expect(base![name]!.length).toBeGreaterThan(0);
        expect(o[name]!.every((v, i) => Object.is(v, base![name]![i])), name).toBe(true);
      }
  });
});
