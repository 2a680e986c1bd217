// The forward plan (attention, update_state, discounted_cumsum, query_state) on the interpreter,
// against the float64 reference of SPEC.md on the same rounded inputs, plus the invariants the
// chunked algorithm must keep. Properties use fast-check with seed FC_SEED (default 42).

import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import type { DType } from "../dsl/dtype.ts";
import { attention } from "../dsl/kernels/attention.ts";
import { lowerUpTo } from "../codegen/pipeline.ts";
import { SMEM_LIMIT } from "../codegen/lower/rules.ts";
import { discountedCumsum } from "../dsl/kernels/discounted-cumsum.ts";
import { queryState } from "../dsl/kernels/query-state.ts";
import { forwardOnCpu, forwardPlan, problemSpec, type ForwardOutputs, type Problem, type ScheduleTable } from "../dsl/plan.ts";
import type { KernelDef } from "../dsl/spec.ts";
import { expectClose, expectIdentical, TOL, WorstErrors } from "./helpers/compare.ts";
import { timeConcat, timeSlice, repeatHeads } from "./helpers/layout.ts";
import { arbCase, caseInputs, describeCase, fcOptions, reference, rng, uniform, type Case, type Inputs } from "./helpers/problems.ts";
import { referenceState } from "./helpers/state.ts";

const worst = new WorstErrors();
const SLOW = { timeout: 120_000 };

afterAll(() => {
  console.log(worst.table("forward (interpreter) vs float64 reference: worst relative error per property and dtype"));
});

/** Y and lse against the reference; records the errors under `key`. lse is compared with log(l)
 * row by row: -inf exactly where l = 0, finite elsewhere, and the RMS of the row errors within the
 * tolerance (an error in lse is a relative error of the row's weights P = exp(w - lse), so the RMS
 * is what the backward feels; single rows whose weights cancel in the feature basis can be worse in
 * bf16/f16, see the report in the table). */
function checkForward(c: Case, key: string, x: Inputs = caseInputs(c), out: ForwardOutputs = forwardOnCpu(c.problem, x)): ForwardOutputs {
  const p = c.problem;
  const ref = reference(p, x);
  const tol = TOL[p.dtype];
  const what = describeCase(c);
  worst.record(`${key} Y ${p.dtype}`, expectClose(out.Y, ref.Y, tol, `Y (${what})`), what);
  let sq = 0, rows = 0, maxErr = 0;
  for (let i = 0; i < ref.l.length; i++) {
    const l = ref.l[i]!, got = out.lse[i]!;
    if (l === 0 || got === -Infinity) {
      if (got !== -Infinity || l !== 0) throw new Error(`lse[${i}] = ${got} where l = ${l}: expected -inf exactly where l = 0 (${what})`);
      continue;
    }
    const err = Math.abs(got - Math.log(l));
    if (!Number.isFinite(err)) throw new Error(`lse[${i}] = ${got}, log l = ${Math.log(l)} (${what})`);
    sq += err * err;
    rows++;
    maxErr = Math.max(maxErr, err);
  }
  const rms = rows ? Math.sqrt(sq / rows) : 0;
  if (!(rms <= tol)) throw new Error(`lse: RMS error ${rms.toExponential(3)} > ${tol} over ${rows} rows (max ${maxErr.toExponential(3)}) (${what})`);
  worst.record(`${key} lse-rms ${p.dtype}`, rms, what);
  worst.record(`${key} lse-max-row ${p.dtype}`, maxErr, what);
  return out;
}

const withProblem = (c: Case, change: Partial<Problem>): Case => ({ ...c, problem: { ...c.problem, ...change } });

describe("forward plan on the interpreter vs the float64 reference", () => {
  it("matches the reference (Y within SPEC tolerance, lse = log l)", SLOW, () => {
    fc.assert(fc.property(arbCase({ maxWork: 2e7 }), (c) => void checkForward(c, "random")), fcOptions(60));
  });

  it("inputs scaled by 10 stay finite and within tolerance", SLOW, () => {
    const cases = arbCase({ inputScale: 10, gate: [-0.05, 0], maxWork: 1e7 });
    fc.assert(fc.property(cases, (c) => void checkForward(c, "x10")), fcOptions(15));
  });

  it("an ungated f16 state past f16's range (inputs x10, p = 4, t = 300) stays finite and within tolerance", SLOW, () => {
    const p: Problem = { b: 1, t: 300, hq: 1, h: 1, d: 8, e: 16, deg: 4, chunk: 64, dtype: "f16", scale: 1 / Math.sqrt(8), gated: false, initialState: false, finalState: true };
    const out = checkForward({ problem: p, seed: 5, inputScale: 10, gate: [0, 0] }, "x10-long");
    expect(out.Sfinal!.reduce((m, v) => Math.max(m, Math.abs(v)), 0)).toBeGreaterThan(65504); // the case is the one it claims
  });

  it("gates near -20 stay finite and within tolerance", SLOW, () => {
    const cases = arbCase({ gated: [true], gate: [-21, -19], maxWork: 1e7 });
    fc.assert(fc.property(cases, (c) => void checkForward(c, "gate-20")), fcOptions(10));
  });

  it("rows with no weight give y = 0 and lse = -inf, never NaN", () => {
    const p: Problem = { b: 1, t: 40, hq: 2, h: 1, d: 8, e: 8, deg: 2, chunk: 16, dtype: "f16", scale: 1 / Math.sqrt(8), gated: true, initialState: false };
    const r = rng(7);
    const x = { Q: uniform(r, 40 * 2 * 8, -1, 1, "f16"), K: uniform(r, 40 * 8, -1, 1, "f16"), V: uniform(r, 40 * 8, -1, 1, "f16"), logG: uniform(r, 40, -1, 0, "f32") };
    const zeroRows = [0, 17, 39]; // query head 0 at these positions has q = 0
    for (const i of zeroRows) x.Q.fill(0, i * 16, i * 16 + 8);
    const out = checkForward({ problem: p, seed: 7, inputScale: 1, gate: [-1, 0] }, "no-weight", x);
    for (const i of zeroRows) {
      expect(Array.from(out.Y.subarray(i * 16, i * 16 + 8))).toEqual(new Array(8).fill(0));
      expect(out.lse[i * 2]).toBe(-Infinity);
    }
    const noKeys = forwardOnCpu(p, { ...x, K: new Float32Array(40 * 8) }); // every weight is 0
    expect(noKeys.Y.every((y) => y === 0)).toBe(true);
    expect(noKeys.lse.every((l) => l === -Infinity)).toBe(true);
  });
});

describe("non-finite inputs", () => {
  // A NaN at one token of Q, K or logG: NaN exactly where the float64 reference has it (Q: that
  // row; K, logG: that row and every later one), every other row bit-identical to the clean run,
  // for every chunk size.
  const at = (x: Float32Array, row: number, width: number): Float32Array => {
    const y = x.slice();
    for (let c = 0; c < width; c++) y[row * width + c] = NaN;
    return y;
  };
  it.each(["Q", "K", "logG"] as const)("a NaN in %s at one token is NaN where the reference is, and nowhere else", (input) => {
    fc.assert(
      fc.property(arbCase({ degs: [2], dtypes: ["f32", "bf16"], gated: [true], bMax: 1, heads: [1, 2], dims: [[8, 1], [16, 1]], tMax: 90 }), fc.nat(), (c0, pick) => {
        const p0 = c0.problem;
        const x = caseInputs(c0);
        const tok = pick % p0.t;
        const width = input === "logG" ? p0.h : input === "Q" ? p0.hq * p0.d : p0.h * p0.d;
        const bad: Inputs = { ...x, [input]: at(x[input]!, tok, width) };
        const ref = reference(p0, bad).Y;
        const rowW = p0.hq * p0.e;
        for (const chunk of [16, 64]) {
          const pc = { ...p0, chunk };
          const clean = forwardOnCpu(pc, x).Y, got = forwardOnCpu(pc, bad).Y;
          for (let i = 0; i < got.length; i++) {
            const what = `Y[${i}] (token ${Math.floor(i / rowW)}, NaN in ${input} at token ${tok}, chunk ${chunk}, ${describeCase(c0)})`;
            if (Number.isNaN(ref[i]!)) expect(Number.isNaN(got[i]!), what).toBe(true);
            else expect(Object.is(got[i], clean[i]), what).toBe(true);
          }
        }
      }),
      { ...fcOptions(4) },
    );
  }, 120_000);
  // One non-finite element of Q, K or V: the rows where the float64 reference is not finite are
  // NaN (README "Non-finite inputs": whichever part carried it, so whatever the chunk size), every
  // other row bit-identical to the clean run. V is the case that broke causality (0 * inf in the
  // masked part of the diagonal block's P V).
  it.each([
    ["V", Infinity], ["V", -Infinity], ["V", NaN], ["Q", Infinity], ["K", -Infinity],
  ] as const)("%s holding %s at one element of one token: NaN where the reference is not finite, and nowhere else", (input, value) => {
    fc.assert(
      fc.property(arbCase({ degs: [2], dtypes: ["f32", "bf16"], gated: [true, false], bMax: 1, heads: [1, 2], dims: [[8, 1], [16, 1]], tMax: 90 }), fc.nat(), fc.nat(), (c0, pick, col) => {
        const p0 = c0.problem;
        const x = caseInputs(c0);
        const tok = pick % p0.t;
        const width = input === "Q" ? p0.hq * p0.d : input === "K" ? p0.h * p0.d : p0.h * p0.e;
        const v = x[input]!.slice();
        v[tok * width + (col % width)] = value;
        const bad: Inputs = { ...x, [input]: v };
        const ref = reference(p0, bad).Y;
        const rowW = p0.hq * p0.e;
        for (const chunk of [16, 64]) {
          const pc = { ...p0, chunk };
          const clean = forwardOnCpu(pc, x).Y, got = forwardOnCpu(pc, bad).Y;
          for (let i = 0; i < got.length; i++) {
            const what = `Y[${i}] (token ${Math.floor(i / rowW)}, ${value} in ${input} at token ${tok}, chunk ${chunk}, ${describeCase(c0)})`;
            if (!Number.isFinite(ref[i]!)) expect(got[i], what).toBeNaN();
            else expect(Object.is(got[i], clean[i]), what).toBe(true);
          }
        }
      }),
      { ...fcOptions(4) },
    );
  }, 120_000);
});

describe("extreme scales", () => {
  // scale^p cancels in y, so any scale whose float64 result is finite must stay within tolerance
  // (the state's factor scale^p exp(lam) and the attention's weights meet in one exponent).
  it.each([1e-20, 1e-8, 1e8, 1e20])("scale %s stays within tolerance at p = 2 and 4", (scale) => {
    fc.assert(
      fc.property(arbCase({ dtypes: ["f32", "bf16"], bMax: 1, heads: [1, 2], dims: [[8, 1], [16, 1]], tMax: 90, chunks: [16] }), fc.constantFrom(2, 4), (c, deg) => {
        // past the first chunk, so that the state's part counts
        checkForward(withProblem(c, { scale, deg, t: Math.max(c.problem.t, 40) }), `scale ${scale}`);
      }),
      fcOptions(4),
    );
  }, 120_000);
});

describe("forward plan invariants", () => {
  it("gives the same result for every chunk size, and with the smallest blocks inside a chunk", SLOW, () => {
    const cases = arbCase({ chunks: [16], maxWork: 5e6 });
    // blocks of 16 rows and features: 4 key blocks per query block at c = 64 exercise the online rescale
    const small: ScheduleTable = {
      attention: { numWarps: 1, blockD: 0, blockT: 16, stages: 2 },
      query_state: { numWarps: 4, blockD: 16, blockT: 16, stages: 2 },
      discounted_cumsum: { numWarps: 4, blockD: 16, blockT: 64, stages: 2 },
    };
    fc.assert(
      fc.property(cases, (c) => {
        const x = caseInputs(c);
        const outs = [16, 32, 64].map((chunk) => checkForward(withProblem(c, { chunk }), "chunks", x).Y);
        const c64 = withProblem(c, { chunk: 64 });
        const smallBlocks = checkForward(c64, "small-blocks", x, forwardOnCpu(c64.problem, x, small)).Y;
        const what = describeCase(c);
        expectClose(outs[1]!, outs[0]!, TOL[c.problem.dtype], `Y chunk 32 vs 16 (${what})`);
        expectClose(outs[2]!, outs[0]!, TOL[c.problem.dtype], `Y chunk 64 vs 16 (${what})`);
        expectClose(smallBlocks, outs[2]!, TOL[c.problem.dtype], `Y chunk 64 blocks of 16 vs default blocks (${what})`);
      }),
      fcOptions(8),
    );
  });

  it("is causal: changing later tokens leaves earlier outputs bit-identical", SLOW, () => {
    const cases = arbCase({ maxWork: 1e7 }).filter((c) => c.problem.t >= 2);
    fc.assert(
      fc.property(cases, fc.double({ min: 0, max: 1, noNaN: true }), (c, u) => {
        const { b, t, hq, h, d, e, dtype } = c.problem;
        const t1 = 1 + Math.floor(u * (t - 1)); // keep [0, t1), change [t1, t)
        const x = caseInputs(c);
        const r = rng(c.seed + 1);
        const redraw = (a: Float32Array, row: number, lo: number, hi: number, dt: DType): Float32Array => {
          const y = a.slice();
          for (let bi = 0; bi < b; bi++) y.set(uniform(r, (t - t1) * row, lo, hi, dt), (bi * t + t1) * row);
          return y;
        };
        const x2: Inputs = {
          Q: redraw(x.Q, hq * d, -1, 1, dtype),
          K: redraw(x.K, h * d, -1, 1, dtype),
          V: redraw(x.V, h * e, -1, 1, dtype),
          ...(x.logG ? { logG: redraw(x.logG, h, -2, 0, "f32") } : {}),
        };
        const a = forwardOnCpu(c.problem, x), z = forwardOnCpu(c.problem, x2);
        const what = `${describeCase(c)} t1=${t1}`;
        expectIdentical(timeSlice(a.Y, b, t, hq * e, 0, t1), timeSlice(z.Y, b, t, hq * e, 0, t1), `Y before t1 (${what})`);
        expectIdentical(timeSlice(a.lse, b, t, hq, 0, t1), timeSlice(z.lse, b, t, hq, 0, t1), `lse before t1 (${what})`);
        // and the change is seen: outputs from t1 on differ somewhere
        expect(Array.from(timeSlice(a.Y, b, t, hq * e, t1, t))).not.toEqual(Array.from(timeSlice(z.Y, b, t, hq * e, t1, t)));
      }),
      fcOptions(10),
    );
  });

  it("grouped-query heads equal kv heads repeated for every query head", SLOW, () => {
    const cases = arbCase({ heads: [1, 2, 4], maxWork: 1e7 }).filter((c) => c.problem.h < c.problem.hq);
    fc.assert(
      fc.property(cases, (c) => {
        const { b, t, hq, h, d, e } = c.problem;
        const g = hq / h;
        const x = caseInputs(c);
        const grouped = forwardOnCpu(c.problem, x);
        const repeated = forwardOnCpu({ ...c.problem, h: hq }, {
          Q: x.Q,
          K: repeatHeads(x.K, b, t, h, d, g),
          V: repeatHeads(x.V, b, t, h, e, g),
          ...(x.logG ? { logG: repeatHeads(x.logG, b, t, h, 1, g) } : {}),
        });
        expectIdentical(grouped.Y, repeated.Y, `Y (${describeCase(c)})`);
        expectIdentical(grouped.lse, repeated.lse, `lse (${describeCase(c)})`);
      }),
      fcOptions(8),
    );
  });

  it("logG = 0 gives the same as no gate, bit for bit", SLOW, () => {
    const cases = arbCase({ gated: [false], maxWork: 1e7 });
    fc.assert(
      fc.property(cases, (c) => {
        const { b, t, h } = c.problem;
        const x = caseInputs(c);
        const plain = forwardOnCpu(c.problem, x);
        const gated = forwardOnCpu({ ...c.problem, gated: true }, { ...x, logG: new Float32Array(b * t * h) });
        expectIdentical(plain.Y, gated.Y, `Y (${describeCase(c)})`);
        expectIdentical(plain.lse, gated.lse, `lse (${describeCase(c)})`);
      }),
      fcOptions(8),
    );
  });

  it("carries the state: [0, t1) then [t1, t) from its final state equals one run over [0, t)", SLOW, () => {
    const cases = arbCase({ finalState: true, maxWork: 6e6 }).filter((c) => c.problem.t >= 2);
    fc.assert(
      fc.property(cases, fc.double({ min: 0, max: 1, noNaN: true }), (c, u) => {
        const p = c.problem;
        const { b, t, hq, h, d, e } = p;
        const t1 = 1 + Math.floor(u * (t - 1));
        const x = caseInputs(c);
        const part = (t0: number, t2: number): Inputs => ({
          Q: timeSlice(x.Q, b, t, hq * d, t0, t2),
          K: timeSlice(x.K, b, t, h * d, t0, t2),
          V: timeSlice(x.V, b, t, h * e, t0, t2),
          ...(x.logG ? { logG: timeSlice(x.logG, b, t, h, t0, t2) } : {}),
        });
        const first = forwardOnCpu({ ...p, t: t1 }, part(0, t1));
        const second = forwardOnCpu({ ...p, t: t - t1, initialState: true }, { ...part(t1, t), S0: first.Sfinal!, Z0: first.Zfinal! });
        const whole = checkForward(c, "state-carry", x);
        const what = `${describeCase(c)} t1=${t1}`;
        const tol = TOL[p.dtype];
        const Y = timeConcat(first.Y, second.Y, b, t1, t - t1, hq * e);
        worst.record(`state-carry split Y ${p.dtype}`, expectClose(Y, reference(p, x).Y, tol, `Y of the two parts (${what})`), what);
        const ref = referenceState(p, x);
        worst.record(`final S ${p.dtype}`, expectClose(whole.Sfinal!, ref.S, tol, `Sfinal of one run (${what})`), what);
        expectClose(whole.Zfinal!, ref.Z, tol, `Zfinal of one run (${what})`);
        expectClose(second.Sfinal!, ref.S, tol, `Sfinal after two parts (${what})`);
        expectClose(second.Zfinal!, ref.Z, tol, `Zfinal after two parts (${what})`);
      }),
      fcOptions(10),
    );
  });

  it("every schedule of the autotuner's space gives the same result within tolerance", SLOW, () => {
    const kernels: readonly KernelDef[] = [attention, queryState, discountedCumsum];
    const cases = arbCase({ maxWork: 6e6 });
    fc.assert(
      fc.property(cases, fc.array(fc.nat(), { minLength: 3, maxLength: 3 }), (c, picks) => {
        const spec = problemSpec(c.problem);
        const sched: ScheduleTable = Object.fromEntries(
          kernels.map((k, i) => {
            const space = k.scheduleSpace(spec);
            return [k.name, space[picks[i]! % space.length]!];
          }),
        );
        const x = caseInputs(c);
        const out = forwardOnCpu(c.problem, x, sched);
        checkForward({ ...c, seed: c.seed }, "schedules", x, out);
        expectClose(out.Y, forwardOnCpu(c.problem, x).Y, TOL[c.problem.dtype], `Y with ${JSON.stringify(sched)} vs default (${describeCase(c)})`);
      }),
      fcOptions(10),
    );
  });
});

describe("forward plan structure", () => {
  const base: Problem = { b: 1, t: 20, hq: 2, h: 1, d: 8, e: 8, deg: 2, chunk: 32, dtype: "f32", scale: 0.35, gated: true, initialState: true };

  it("one chunk without a final state skips update_state and discounted_cumsum", () => {
    const short = forwardPlan(base);
    expect(short.steps.map((s) => s.kernel.name)).toEqual(["attention", "query_state"]);
    expect(short.steps[1]!.bind.Sin).toBe("S0");
    expect(short.outputs).toEqual(["Y", "lse", "yS", "wS"]);
    const full = forwardPlan({ ...base, finalState: true });
    expect(full.steps.map((s) => s.kernel.name)).toEqual(["attention", "update_state", "discounted_cumsum", "query_state"]);
    expect(full.outputs).toEqual(["Y", "lse", "yS", "wS", "Sin", "Zin", "Sfinal", "Zfinal"]);
    expect(forwardPlan({ ...base, t: 33 }).outputs).toEqual(["Y", "lse", "yS", "wS", "Sin", "Zin"]);
  });

  it("the short path and the full path agree bit for bit", () => {
    const c: Case = { problem: base, seed: 3, inputScale: 1, gate: [-1, 0] };
    const x = caseInputs(c);
    const { b, h, d, deg, e } = base;
    const D = (d * (d + 1)) / 2; // deg 2
    expect(deg).toBe(2);
    // a plausible initial state: the state after a random prefix of 50 tokens
    const prefix: Case = { problem: { ...base, t: 50, initialState: false, finalState: true }, seed: 4, inputScale: 1, gate: [-1, 0] };
    const s0 = forwardOnCpu(prefix.problem, caseInputs(prefix));
    expect(s0.Sfinal!.length).toBe(b * h * D * e);
    const inputs = { ...x, S0: s0.Sfinal!, Z0: s0.Zfinal! };
    const short = forwardOnCpu(base, inputs);
    const full = forwardOnCpu({ ...base, finalState: true }, inputs);
    expectIdentical(short.Y, full.Y, "Y");
    expectIdentical(short.lse, full.lse, "lse");
    expect(short.Sfinal).toBeUndefined();
    expect(full.Sfinal!.every(Number.isFinite)).toBe(true);
  });

  it("default schedules fit sm_80's shared memory as the lowering plans it (c <= 256, d, e <= 128)", () => {
    const over: string[] = [];
    for (const dtype of ["f32", "f16", "bf16"] as const)
      for (const chunk of [16, 64, 128, 256])
        for (const d of [8, 32, 64, 128])
          for (const deg of d <= 32 ? [2, 4] : [2])
            for (const k of [attention, queryState, discountedCumsum]) {
              const spec = { deg, d, e: d, chunk, dtype };
              const bytes = lowerUpTo(k.build(spec, k.schedule(spec)), "plan-shared").smemBytes!;
              if (bytes > SMEM_LIMIT.sm_80) over.push(`${k.name} ${JSON.stringify(spec)}: ${bytes} bytes`);
            }
    expect(over).toEqual([]);
  });
});
