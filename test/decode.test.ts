// Decoding (dsl/plan-decode.ts, dsl/kernels/decode.ts) through the interpreter: feeding a sequence
// token by token, or in random-sized groups, must give the whole-sequence output of the float64
// reference, and the state after the folds must be sum_j exp(L_end - L_j) phi(k_j) v_j^T (and the
// forward plan's Sfinal). Property tests use FC_SEED (default 42).

import { afterAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { roundArray, type DType } from "../dsl/dtype.ts";
import { decode } from "../dsl/kernels/decode.ts";
import { tileBytes, TILE_BUDGET } from "../dsl/kernels/common.ts";
import { createDecodeState, decodePlan, decodeStepOnCpu, type DecodeProblem, type DecodeState } from "../dsl/plan-decode.ts";
import { forwardOnCpu, type ScheduleTable } from "../dsl/plan.ts";
import { referenceForward, relativeError } from "../dsl/reference/power-retention.ts";
import { scheduleKey } from "../dsl/spec.ts";
import { symPowTable } from "../dsl/sympow.ts";
import { rng } from "./helpers/problems.ts";

const SLOW = 60_000; // ms: property tests run the interpreter for seconds, more on a loaded machine
const SEED = process.env.FC_SEED !== undefined && process.env.FC_SEED !== "" ? Number(process.env.FC_SEED) : 42;
const TOL: Record<DType, number> = { f32: 1e-4, f16: 3e-3, bf16: 1e-2 }; // SPEC.md, "Accuracy"
const worst: Record<string, number> = {};
const note = (what: string, err: number): void => void (worst[what] = Math.max(worst[what] ?? 0, err));
afterAll(() => {
  const lines = Object.entries(worst).sort().map(([k, v]) => `  ${k}: ${v.toExponential(2)}`);
  console.log(`decode worst relative errors (FC_SEED=${SEED}):\n${lines.join("\n")}`);
});

interface Case {
  readonly dtype: DType;
  readonly deg: number;
  readonly d: number;
  readonly e: number;
  readonly chunk: number;
  readonly t: number;
  readonly b: number;
  readonly h: number;
  readonly g: number; // query heads per kv head
  readonly gated: boolean;
  readonly seed: number;
  readonly amp?: number; // input magnitude (default 1)
  readonly gate?: readonly [number, number]; // logG range (default [-2, 0])
  readonly scale?: number; // default 1 / sqrt(d)
}

interface Inputs {
  readonly Q: Float32Array; // [b, t, hq, d], values of the dtype
  readonly K: Float32Array; // [b, t, h, d]
  readonly V: Float32Array; // [b, t, h, e]
  readonly logG: Float32Array | null; // [b, t, h]
}

const problemOf = (c: Case): DecodeProblem => ({
  b: c.b, hq: c.h * c.g, h: c.h, d: c.d, e: c.e, deg: c.deg, chunk: c.chunk, dtype: c.dtype, scale: c.scale ?? 1 / Math.sqrt(c.d), gated: c.gated,
});

function makeInputs(c: Case): Inputs {
  const r = rng(c.seed);
  const amp = c.amp ?? 1;
  const [glo, ghi] = c.gate ?? [-2, 0];
  const hq = c.h * c.g;
  const arr = (n: number): Float32Array => roundArray(Array.from({ length: n }, () => amp * (2 * r() - 1)), c.dtype);
  return {
    Q: arr(c.b * c.t * hq * c.d),
    K: arr(c.b * c.t * c.h * c.d),
    V: arr(c.b * c.t * c.h * c.e),
    logG: c.gated ? Float32Array.from({ length: c.b * c.t * c.h }, () => glo + (ghi - glo) * r()) : null,
  };
}

/** Rows t0 .. t0+tn-1 of x [b, t, heads, f] as [b, tn, heads, f] (and the inverse for outputs). */
function rows<A extends Float32Array | Float64Array>(x: A, b: number, t: number, t0: number, tn: number, width: number): A {
  const out = new (x.constructor as new (n: number) => A)(b * tn * width);
  for (let bi = 0; bi < b; bi++) out.set(x.subarray((bi * t + t0) * width, (bi * t + t0 + tn) * width), bi * tn * width);
  return out;
}
function putRows(dst: Float32Array, src: Float32Array, b: number, t: number, t0: number, tn: number, width: number): void {
  for (let bi = 0; bi < b; bi++) dst.set(src.subarray(bi * tn * width, (bi + 1) * tn * width), (bi * t + t0) * width);
}

/** Decode the whole sequence in calls of `sizes` tokens (cycled); Y [b, t, hq, e] and the final state. */
function decodeAll(
  c: Case, x: Inputs, sizes: readonly number[], sched: ScheduleTable = {}, state: DecodeState = createDecodeState(problemOf(c)),
): { Y: Float32Array; state: DecodeState; calls: number } {
  const p = problemOf(c);
  const Y = new Float32Array(c.b * c.t * p.hq * c.e).fill(NaN);
  let calls = 0;
  for (let t0 = 0; t0 < c.t; calls++) {
    const tn = Math.min(sizes[calls % sizes.length]!, c.t - t0);
    const y = decodeStepOnCpu(state, {
      q: rows(x.Q, c.b, c.t, t0, tn, p.hq * c.d),
      k: rows(x.K, c.b, c.t, t0, tn, c.h * c.d),
      v: rows(x.V, c.b, c.t, t0, tn, c.h * c.e),
      logG: x.logG && rows(x.logG, c.b, c.t, t0, tn, c.h),
    }, sched);
    putRows(Y, y, c.b, c.t, t0, tn, p.hq * c.e);
    t0 += tn;
  }
  return { Y, state, calls };
}

/** In float64: S = sum_{j < nf} exp(L_{nf-1} - L_j) phi(k_j) v_j^T, Z likewise, per (batch, kv head). */
function state64(c: Case, x: Inputs, nf: number): { S: Float64Array; Z: Float64Array } {
  const tab = symPowTable(c.d, c.deg), D = tab.size, p = c.deg;
  const S = new Float64Array(c.b * c.h * D * c.e), Z = new Float64Array(c.b * c.h * D);
  for (let bi = 0; bi < c.b; bi++)
    for (let hk = 0; hk < c.h; hk++) {
      const L = new Float64Array(c.t);
      for (let i = 0, acc = 0; i < c.t; i++) L[i] = acc += x.logG ? x.logG[(bi * c.t + i) * c.h + hk]! : 0;
      for (let j = 0; j < nf; j++) {
        const k = (bi * c.t + j) * c.h + hk, decay = Math.exp(L[nf - 1]! - L[j]!);
        for (let f = 0; f < D; f++) {
          let phi = tab.weight[f]! * decay;
          for (let q = 0; q < p; q++) phi *= x.K[k * c.d + tab.index[f * p + q]!]!;
          const s = (bi * c.h + hk) * D + f;
          Z[s] += phi;
          for (let a = 0; a < c.e; a++) S[s * c.e + a] += phi * x.V[k * c.e + a]!;
        }
      }
    }
  return { S, Z };
}

const describeCase = (c: Case, sizes?: readonly number[], sched: ScheduleTable = {}): string =>
  `FC_SEED=${SEED} ${c.dtype} p=${c.deg} d=${c.d} e=${c.e} c=${c.chunk} t=${c.t} b=${c.b} h=${c.h} g=${c.g}` +
  `${c.gated ? " gated" : ""}${c.amp ? ` amp=${c.amp}` : ""}${c.scale !== undefined ? ` scale=${c.scale}` : ""}${c.gate ? ` gate=[${c.gate}]` : ""} data=${c.seed}` +
  (sizes ? ` calls of [${sizes}]` : "") + (sched.decode ? ` decode schedule ${scheduleKey(sched.decode)}` : "");

/** Decode, then check Y against the reference and the state against float64 and the forward plan. */
function checkDecoding(c: Case, sizes: readonly number[], label: string, sched: ScheduleTable = {}): void {
  const x = makeInputs(c);
  const what = describeCase(c, sizes, sched);
  const { Y, state } = decodeAll(c, x, sizes, sched);
  const ref = referenceForward({
    shape: { b: c.b, t: c.t, hq: c.h * c.g, h: c.h, d: c.d, e: c.e }, deg: c.deg, scale: c.scale ?? 1 / Math.sqrt(c.d), ...x,
  });
  const errY = relativeError(Y, ref.Y); // Infinity on any NaN/Inf (an unwritten row stays NaN)
  note(`${label} Y ${c.dtype}`, errY);
  expect(errY, `${what}: Y`).toBeLessThanOrEqual(TOL[c.dtype]);

  const nf = Math.floor(c.t / c.chunk) * c.chunk; // tokens folded into the state
  expect(state.len, `${what}: cache length`).toBe(c.t - nf);
  if (nf === 0) {
    expect(state.S.every((v) => v === 0) && state.Z.every((v) => v === 0), `${what}: no fold, S = Z = 0`).toBe(true);
    return;
  }
  // The fold runs in f32 whatever the dtype: the state is exact up to f32 rounding.
  const s64 = state64(c, x, nf);
  const errS = Math.max(relativeError(state.S, s64.S), relativeError(state.Z, s64.Z));
  note(`${label} state ${c.dtype}`, errS);
  expect(errS, `${what}: S, Z against float64`).toBeLessThanOrEqual(TOL.f32);
  const fwd = forwardOnCpu(
    { ...problemOf(c), t: nf, initialState: false, finalState: true },
    { Q: rows(x.Q, c.b, c.t, 0, nf, c.h * c.g * c.d), K: rows(x.K, c.b, c.t, 0, nf, c.h * c.d), V: rows(x.V, c.b, c.t, 0, nf, c.h * c.e), ...(x.logG ? { logG: rows(x.logG, c.b, c.t, 0, nf, c.h) } : {}) },
  );
  const errF = Math.max(relativeError(state.S, fwd.Sfinal!), relativeError(state.Z, fwd.Zfinal!));
  note(`${label} state vs forward ${c.dtype}`, errF);
  expect(errF, `${what}: S, Z against the forward plan's Sfinal, Zfinal`).toBeLessThanOrEqual(TOL[c.dtype]);
}

/** Problems: deg 4 only with d <= 16, t up to 3 chunks; small heads so the interpreter stays quick. */
const caseArb = (maxChunks: number): fc.Arbitrary<Case> =>
  fc
    .noBias(fc.record({
      dtype: fc.constantFrom<DType>("f32", "f16", "bf16"),
      deg: fc.constantFrom(2, 2, 4),
      dSmall: fc.constantFrom(4, 8),
      dBig: fc.constantFrom(8, 16),
      e: fc.constantFrom(4, 8, 16),
      chunk: fc.constantFrom(16, 32),
      tRaw: fc.integer({ min: 1, max: 1000 }),
      b: fc.integer({ min: 1, max: 2 }),
      h: fc.integer({ min: 1, max: 2 }),
      g: fc.integer({ min: 1, max: 2 }),
      gated: fc.boolean(),
      seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
    }))
    .map(({ dSmall, dBig, tRaw, ...r }) => {
      const d = r.deg === 4 ? dSmall : dBig; // D = 35 / 330 at p = 4, 36 / 136 at p = 2
      return { ...r, d, t: 1 + ((tRaw - 1) % (maxChunks * r.chunk + 2)) };
    });

describe(`decode equals the whole-sequence reference (FC_SEED=${SEED})`, () => {
  it("token by token (tn = 1), folds included", () => {
    fc.assert(fc.property(caseArb(3), (c) => checkDecoding(c, [1], "tn=1")), { seed: SEED, numRuns: 30 });
  }, SLOW);

  it("in random-sized groups of tokens, folds inside calls included, under several schedules", () => {
    const arb = fc.tuple(
      caseArb(3),
      fc.noBias(fc.array(fc.integer({ min: 1, max: 32 }), { minLength: 1, maxLength: 5 })),
      fc.constantFrom(0, 16, 32), // 0: the default schedule, else blockD with key blocks of 16 rows
    );
    fc.assert(
      fc.property(arb, ([c, sizes, bd]) => {
        const sched: ScheduleTable = bd ? { decode: { numWarps: 4, blockD: bd, blockT: 16, stages: 1 } } : {};
        checkDecoding(c, sizes.map((n) => 1 + ((n - 1) % c.chunk)), "groups", sched);
      }),
      { seed: SEED + 1, numRuns: 40 },
    );
  }, SLOW);

  it("at p = 4 with d = 16 (D = 3876)", () => {
    const arb = fc.noBias(fc.record({
      dtype: fc.constantFrom<DType>("f32", "f16", "bf16"),
      t: fc.integer({ min: 17, max: 40 }),
      gated: fc.boolean(),
      size: fc.integer({ min: 3, max: 16 }),
      seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
    }));
    fc.assert(
      fc.property(arb, ({ size, ...r }) =>
        checkDecoding({ ...r, deg: 4, d: 16, e: 8, chunk: 16, b: 1, h: 1, g: 2 }, [size], "p=4 d=16"),
      ),
      { seed: SEED + 2, numRuns: 5 },
    );
  }, SLOW);

  it("stays accurate at scales 1e-20 and 1e20 (scale^p cancels in y), p = 2 and 4", () => {
    for (const scale of [1e-20, 1e20])
      for (const deg of [2, 4])
        for (const dtype of ["f32", "bf16"] as const)
          checkDecoding({ dtype, deg, d: 8, e: 8, chunk: 16, t: 40, b: 1, h: 1, g: 2, gated: true, seed: 7, scale }, [5], `scale ${scale}`);
  }, SLOW);

  it("queries whose keys and values are 0 (gates 1) read the state alone: power_retention_inference with K = None", () => {
    // the Python binding runs K = V = log_G = None as new tokens with zero keys and values and
    // gates of 1 after a fold left the cache empty (a zero key scores 0: no weight); here a prefix
    // of one chunk folds, then 3 such tokens decode, against the reference on the whole sequence
    for (const dtype of ["f32", "bf16"] as const) {
      const c: Case = { dtype, deg: 2, d: 8, e: 8, chunk: 16, t: 19, b: 2, h: 2, g: 2, gated: true, seed: 11 };
      const x = makeInputs(c);
      const zero = (a: Float32Array, width: number): void => { for (let bi = 0; bi < c.b; bi++) a.fill(0, (bi * c.t + 16) * width, (bi + 1) * c.t * width); };
      zero(x.K, c.h * c.d);
      zero(x.V, c.h * c.e);
      zero(x.logG!, c.h);
      const { Y, state } = decodeAll(c, x, [16, 3]);
      expect(state.len, "the fold emptied the cache and the zero tokens filled 3 rows").toBe(3);
      const ref = referenceForward({ shape: { b: c.b, t: c.t, hq: c.h * c.g, h: c.h, d: c.d, e: c.e }, deg: c.deg, scale: 1 / Math.sqrt(c.d), ...x });
      const w = c.h * c.g * c.e;
      const last = (a: ArrayLike<number>): Float64Array => Float64Array.from({ length: c.b * 3 * w }, (_, i) => a[(Math.floor(i / (3 * w)) * c.t + 16) * w + (i % (3 * w))]!);
      const err = relativeError(Float32Array.from(last(Y)), last(ref.Y));
      note(`zero keys Y ${dtype}`, err);
      expect(err, `${dtype}: the 3 state-only rows`).toBeLessThanOrEqual(TOL[dtype]);
    }
  });

  it("stays finite and accurate with inputs of size 10 and strong gates (logG in [-20, -15])", () => {
    const arb = fc.noBias(fc.record({
      dtype: fc.constantFrom<DType>("f32", "f16", "bf16"),
      deg: fc.constantFrom(2, 4),
      strong: fc.boolean(),
      size: fc.integer({ min: 1, max: 16 }),
      seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
    }));
    fc.assert(
      fc.property(arb, ({ strong, size, deg, ...r }) =>
        checkDecoding(
          { ...r, deg, d: deg === 4 ? 8 : 16, e: 8, chunk: 16, t: 40, b: 1, h: 1, g: 2, gated: true, amp: 10, ...(strong ? { gate: [-20, -15] as const } : {}) },
          [size],
          "stress",
        ),
      ),
      { seed: SEED + 3, numRuns: 12 },
    );
  }, SLOW);

  it("continues from a prefill: the forward's Sfinal, Zfinal over n c tokens, then decoding the rest", () => {
    const arb = fc.noBias(fc.record({
      dtype: fc.constantFrom<DType>("f32", "f16", "bf16"),
      chunks: fc.integer({ min: 1, max: 2 }),
      rest: fc.integer({ min: 1, max: 20 }),
      size: fc.integer({ min: 1, max: 16 }),
      gated: fc.boolean(),
      seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
    }));
    fc.assert(
      fc.property(arb, ({ chunks, rest, size, ...r }) => {
        const c: Case = { ...r, deg: 2, d: 8, e: 8, chunk: 16, t: chunks * 16 + rest, b: 2, h: 1, g: 2 };
        const x = makeInputs(c), nf = chunks * 16, p = problemOf(c);
        const pre = forwardOnCpu(
          { ...p, t: nf, initialState: false, finalState: true },
          { Q: rows(x.Q, c.b, c.t, 0, nf, p.hq * c.d), K: rows(x.K, c.b, c.t, 0, nf, c.h * c.d), V: rows(x.V, c.b, c.t, 0, nf, c.h * c.e), ...(x.logG ? { logG: rows(x.logG, c.b, c.t, 0, nf, c.h) } : {}) },
        );
        const st = createDecodeState(p, { S: pre.Sfinal!, Z: pre.Zfinal! });
        const tail: Case = { ...c, t: rest };
        const xt: Inputs = {
          Q: rows(x.Q, c.b, c.t, nf, rest, p.hq * c.d), K: rows(x.K, c.b, c.t, nf, rest, c.h * c.d), V: rows(x.V, c.b, c.t, nf, rest, c.h * c.e),
          logG: x.logG && rows(x.logG, c.b, c.t, nf, rest, c.h),
        };
        const { Y } = decodeAll(tail, xt, [size], {}, st);
        const ref = referenceForward({ shape: { b: c.b, t: c.t, hq: p.hq, h: c.h, d: c.d, e: c.e }, deg: c.deg, scale: p.scale, ...x });
        const err = relativeError(Y, rows(ref.Y, c.b, c.t, nf, rest, p.hq * c.e));
        note(`prefill Y ${c.dtype}`, err);
        expect(err, describeCase(c, [size])).toBeLessThanOrEqual(TOL[c.dtype]);
      }),
      { seed: SEED + 4, numRuns: 10 },
    );
  }, SLOW);

  it("never reads cache rows past len (a NaN-filled cache decodes the same)", () => {
    const c: Case = { dtype: "bf16", deg: 2, d: 8, e: 8, chunk: 16, t: 37, b: 2, h: 2, g: 2, gated: true, seed: 11 };
    const x = makeInputs(c);
    const clean = decodeAll(c, x, [5, 1, 9]).Y;
    const st = createDecodeState(problemOf(c));
    for (const a of [st.Kc, st.Vc, st.Gc]) a.fill(NaN);
    const { Y } = decodeAll(c, x, [5, 1, 9], {}, st);
    expect(Array.from(Y), describeCase(c)).toEqual(Array.from(clean));
  });

  it("keeps a non-finite v_j out of the earlier rows: NaN where the reference is not finite, every other row as the clean run", () => {
    // v_j = inf or NaN: calls of several tokens hold j and rows before it (the in-call causal mask),
    // and the fold carries it into the state, whose later outputs are NaN too (README "Non-finite inputs").
    for (const [value, dtype] of [[Infinity, "f32"], [-Infinity, "bf16"], [NaN, "f16"]] as const) {
      const c: Case = { dtype, deg: 2, d: 8, e: 8, chunk: 16, t: 37, b: 1, h: 2, g: 2, gated: true, seed: 5 };
      const x = makeInputs(c);
      const clean = decodeAll(c, x, [5, 1, 9]).Y;
      const V = x.V.slice();
      V[(11 * c.h + 1) * c.e + 3] = value; // token 11, kv head 1, column 3: inside a call of 9 (tokens 6 .. 14)
      const bad = { ...x, V };
      const { Y } = decodeAll(c, bad, [5, 1, 9]);
      const ref = referenceForward({ shape: { b: c.b, t: c.t, hq: c.h * c.g, h: c.h, d: c.d, e: c.e }, deg: c.deg, scale: 1 / Math.sqrt(c.d), ...bad }).Y;
      let nonFinite = 0;
      for (let i = 0; i < Y.length; i++) {
        const what = `${describeCase(c, [5, 1, 9])}: Y[${i}] (token ${Math.floor(i / (c.h * c.g * c.e))}), v = ${value} at token 11`;
        if (!Number.isFinite(ref[i]!)) { nonFinite++; expect(Y[i], what).toBeNaN(); }
        else expect(Object.is(Y[i], clean[i]), what).toBe(true);
      }
      expect(nonFinite, "the reference has non-finite rows to check").toBeGreaterThan(0);
    }
  });

  it("gives y = 0, never NaN, where every weight is 0 (q = 0)", () => {
    const c: Case = { dtype: "f16", deg: 2, d: 8, e: 8, chunk: 16, t: 20, b: 1, h: 1, g: 1, gated: true, seed: 7 };
    const x = makeInputs(c);
    x.Q.fill(0);
    const { Y } = decodeAll(c, x, [3]);
    expect(Y.every((v) => v === 0), describeCase(c)).toBe(true);
  });
});

describe("decode plan", () => {
  const p: DecodeProblem = { b: 1, hq: 2, h: 1, d: 8, e: 8, deg: 2, chunk: 16, dtype: "bf16", scale: 0.35, gated: true };
  const names = (len0: number, tn: number): string[] => decodePlan(p, len0, tn).plan.steps.map((s) => s.kernel.name);
  const fold = ["update_state", "discounted_cumsum", "state_copy"];

  it("appends and decodes without a fold while the cache stays below c", () => {
    expect(names(0, 1)).toEqual(["cache_append", "decode"]);
    expect(decodePlan(p, 14, 1).len).toBe(15);
    expect(names(3, 12)).toEqual(["cache_append", "decode"]);
  });

  it("folds exactly when the cache reaches c, splitting the call there", () => {
    expect(names(15, 1)).toEqual(["cache_append", "decode", ...fold]);
    const split = decodePlan(p, 10, 16);
    expect(split.plan.steps.map((s) => s.kernel.name)).toEqual(["cache_append", "decode", ...fold, "cache_append", "decode"]);
    expect(split.plan.steps.filter((s) => s.kernel.name === "decode").map((s) => [s.params.q0, s.params.tn, s.params.len])).toEqual([[0, 6, 16], [6, 10, 10]]);
    expect([split.len, split.folds]).toEqual([10, 1]);
    const many = decodePlan(p, 0, 40);
    expect([many.len, many.folds]).toEqual([8, 2]);
  });

  it("runs the fold with f32 operands and the state buffers in place", () => {
    const { plan } = decodePlan(p, 15, 1);
    expect(plan.steps.filter((s) => fold.includes(s.kernel.name)).every((s) => s.spec.dtype === "f32")).toBe(true);
    expect(plan.outputs).toEqual(["Y", "S", "Z", "Kc", "Vc", "Gc"]);
    for (const n of ["S", "Z", "Kc", "Vc", "Gc"]) expect(plan.buffers.find((b) => b.name === n)?.init).toBe("input");
  });

  it("rejects a bad cache length, token count or input size, naming the argument", () => {
    expect(() => decodePlan(p, 16, 1)).toThrow(/len0: expected an integer in \[0, 16\), received 16/);
    expect(() => decodePlan(p, 0, 0)).toThrow(/tn: expected a positive integer, received 0/);
    expect(() => decodePlan({ ...p, hq: 3, h: 2 }, 0, 1)).toThrow(/hq: expected a multiple of h = 2/);
    const st = createDecodeState(p);
    expect(() => decodeStepOnCpu(st, { q: new Float32Array(15), k: new Float32Array(8), v: new Float32Array(8) })).toThrow(/q: expected b\*tn\*hq\*d/);
    expect(() => decodeStepOnCpu(st, { q: new Float32Array(16), k: new Float32Array(8), v: new Float32Array(8) })).toThrow(/logG: required/);
  });

  it("has a default decode schedule within the tile budget", () => {
    for (const [chunk, d, deg] of [[64, 64, 2], [1024, 64, 2], [1024, 128, 2], [256, 32, 4]] as const)
      for (const dtype of ["f32", "bf16"] as const) {
        const spec = { deg, d, e: d, chunk, dtype };
        expect(tileBytes(decode.build(spec, decode.schedule(spec))), JSON.stringify(spec)).toBeLessThanOrEqual(TILE_BUDGET);
      }
  });
});
