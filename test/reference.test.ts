import { describe, expect, it } from "vitest";
import fc from "fast-check";
import {
  maxAbsError,
  referenceBackward,
  referenceForward,
  relativeError,
  type RetentionInputs,
  type RetentionShape,
} from "../dsl/reference/power-retention.ts";

const SEED = process.env.FC_SEED !== undefined && process.env.FC_SEED !== "" ? Number(process.env.FC_SEED) : 42;

// ----------------------------------------------------------------------------------------------
// helpers

/** Deterministic pseudo-random numbers in [lo, hi) (mulberry32), for the non-property tests. */
function rng(seed: number): (lo: number, hi: number) => number {
  let s = seed >>> 0;
  return (lo, hi) => {
    s = (s + 0x6d2b79f5) >>> 0;
    let r = s;
    r = Math.imul(r ^ (r >>> 15), r | 1);
    r ^= r + Math.imul(r ^ (r >>> 7), r | 61);
    const u = ((r ^ (r >>> 14)) >>> 0) / 4294967296;
    return lo + (hi - lo) * u;
  };
}

function randomArray(n: number, rand: (lo: number, hi: number) => number, lo = -1, hi = 1): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = rand(lo, hi);
  return out;
}

function randomInputs(shape: RetentionShape, deg: number, gated: boolean, seed: number): RetentionInputs {
  const r = rng(seed);
  const { b, t, hq, h, d, e } = shape;
  return {
    shape,
    deg,
    scale: 1 / Math.sqrt(d),
    Q: randomArray(b * t * hq * d, r),
    K: randomArray(b * t * h * d, r),
    V: randomArray(b * t * h * e, r),
    logG: gated ? randomArray(b * t * h, r, -2, -0.1) : null,
  };
}

/** Copy K or V [b, t, h, f] into [b, t, hq, f] by repeating each kv head hq/h times. */
function repeatHeads(x: ArrayLike<number>, b: number, t: number, h: number, hq: number, f: number): Float64Array {
  const g = hq / h;
  const out = new Float64Array(b * t * hq * f);
  for (let bi = 0; bi < b; bi++)
    for (let i = 0; i < t; i++)
      for (let qh = 0; qh < hq; qh++)
        for (let k = 0; k < f; k++)
          out[((bi * t + i) * hq + qh) * f + k] = x[((bi * t + i) * h + Math.floor(qh / g)) * f + k];
  return out;
}

/** Sum [b, t, hq, f] back over each group of hq/h heads into [b, t, h, f]. */
function sumHeads(x: ArrayLike<number>, b: number, t: number, h: number, hq: number, f: number): Float64Array {
  const g = hq / h;
  const out = new Float64Array(b * t * h * f);
  for (let bi = 0; bi < b; bi++)
    for (let i = 0; i < t; i++)
      for (let qh = 0; qh < hq; qh++)
        for (let k = 0; k < f; k++)
          out[((bi * t + i) * h + Math.floor(qh / g)) * f + k] += x[((bi * t + i) * hq + qh) * f + k];
  return out;
}

function dotAll(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

// ----------------------------------------------------------------------------------------------
// forward: hand-checkable cases

describe("referenceForward: small exact cases", () => {
  it("t = 1 gives y_0 = v_0 exactly", () => {
    const shape = { b: 2, t: 1, hq: 4, h: 2, d: 3, e: 5 };
    for (const deg of [2, 4]) {
      const x = randomInputs(shape, deg, true, 7 + deg);
      const { Y } = referenceForward(x);
      const want = repeatHeads(x.V, 2, 1, 2, 4, 5);
      expect(Array.from(Y)).toEqual(Array.from(want));
    }
  });

  it("hand-computed t = 2, d = e = 1 case", () => {
    // q = [1, 1], k = [1, 2], v = [3, 5], scale 1, p = 2, logG = [0, ln 1/2] -> L = [0, -ln 2]
    // row 0: a00 = 1 -> y0 = 3, l0 = 1
    // row 1: a10 = 1^2 * exp(-ln 2) = 0.5, a11 = 2^2 = 4 -> l1 = 4.5, y1 = (1.5 + 20) / 4.5
    const x: RetentionInputs = {
      shape: { b: 1, t: 2, hq: 1, h: 1, d: 1, e: 1 },
      deg: 2,
      scale: 1,
      Q: [1, 1],
      K: [1, 2],
      V: [3, 5],
      logG: [0, Math.log(0.5)],
    };
    const { Y, l } = referenceForward(x);
    expect(Y[0]).toBe(3);
    expect(Y[1]).toBeCloseTo(21.5 / 4.5, 14);
    expect(l[0]).toBe(1);
    expect(l[1]).toBeCloseTo(4.5, 14);
    // degree 4: a10 = 0.5, a11 = 16
    const y4 = referenceForward({ ...x, deg: 4 }).Y;
    expect(y4[1]).toBeCloseTo((0.5 * 3 + 16 * 5) / 16.5, 14);
  });

  it("q all zero gives y = 0 and l = 0 (never NaN), and zero, finite gradients", () => {
    const shape = { b: 1, t: 5, hq: 2, h: 1, d: 4, e: 3 };
    const x0 = randomInputs(shape, 2, true, 3);
    const x: RetentionInputs = { ...x0, Q: new Float64Array(x0.Q.length) };
    const { Y, l } = referenceForward(x);
    expect(Array.from(Y).every((v) => v === 0)).toBe(true);
    expect(Array.from(l).every((v) => v === 0)).toBe(true);
    const g = referenceBackward(x, randomArray(Y.length, rng(4)));
    for (const arr of [g.dQ, g.dK, g.dV, g.dlogG!]) {
      expect(Array.from(arr).every((v) => v === 0)).toBe(true);
    }
  });

  it("zero rows only where q_i is zero; other rows are unaffected", () => {
    const shape = { b: 1, t: 4, hq: 1, h: 1, d: 2, e: 2 };
    const x0 = randomInputs(shape, 2, false, 11);
    const Q = Float64Array.from(x0.Q);
    Q[2 * 2] = 0;
    Q[2 * 2 + 1] = 0; // q_2 = 0
    const x = { ...x0, Q };
    const { Y } = referenceForward(x);
    const { Y: Y0 } = referenceForward(x0);
    expect([Y[4], Y[5]]).toEqual([0, 0]);
    for (const i of [0, 1, 3]) expect([Y[2 * i], Y[2 * i + 1]]).toEqual([Y0[2 * i], Y0[2 * i + 1]]);
  });

  it("no gate equals logG all zeros (forward and backward)", () => {
    const shape = { b: 2, t: 6, hq: 2, h: 1, d: 3, e: 2 };
    for (const deg of [2, 4]) {
      const x = randomInputs(shape, deg, false, 5 + deg);
      const xz = { ...x, logG: new Float64Array(2 * 6 * 1) };
      const f = referenceForward(x);
      const fz = referenceForward(xz);
      expect(Array.from(f.Y)).toEqual(Array.from(fz.Y));
      expect(Array.from(f.l)).toEqual(Array.from(fz.l));
      const dY = randomArray(f.Y.length, rng(deg));
      const g = referenceBackward(x, dY);
      const gz = referenceBackward(xz, dY);
      expect(g.dlogG).toBeNull();
      expect(gz.dlogG).not.toBeNull();
      expect(Array.from(g.dQ)).toEqual(Array.from(gz.dQ));
      expect(Array.from(g.dK)).toEqual(Array.from(gz.dK));
      expect(Array.from(g.dV)).toEqual(Array.from(gz.dV));
    }
  });

  it("grouped-query attention equals repeating the K/V heads (forward and backward)", () => {
    const b = 2, t = 5, hq = 4, h = 2, d = 3, e = 2;
    const x = randomInputs({ b, t, hq, h, d, e }, 2, true, 21);
    const xr: RetentionInputs = {
      ...x,
      shape: { b, t, hq, h: hq, d, e },
      K: repeatHeads(x.K, b, t, h, hq, d),
      V: repeatHeads(x.V, b, t, h, hq, e),
      logG: repeatHeads(x.logG!, b, t, h, hq, 1),
    };
    const f = referenceForward(x);
    const fr = referenceForward(xr);
    expect(Array.from(f.Y)).toEqual(Array.from(fr.Y));
    expect(Array.from(f.l)).toEqual(Array.from(fr.l));

    const dY = randomArray(f.Y.length, rng(22));
    const g = referenceBackward(x, dY);
    const gr = referenceBackward(xr, dY);
    expect(Array.from(g.dQ)).toEqual(Array.from(gr.dQ));
    // kv gradients of the GQA call are the sums over the group of the repeated call's
    expect(maxAbsError(g.dK, sumHeads(gr.dK, b, t, h, hq, d))).toBeLessThan(1e-13);
    expect(maxAbsError(g.dV, sumHeads(gr.dV, b, t, h, hq, e))).toBeLessThan(1e-13);
    expect(maxAbsError(g.dlogG!, sumHeads(gr.dlogG!, b, t, h, hq, 1))).toBeLessThan(1e-13);
  });

  it("strong gates (log gate -800 per step) stay finite: only the diagonal survives", () => {
    // exp(L_i)/exp(L_j) would be 0/0 here; exp(L_i - L_j) is exact.
    const shape = { b: 1, t: 4, hq: 1, h: 1, d: 2, e: 3 };
    const x0 = randomInputs(shape, 2, false, 9);
    const x = { ...x0, logG: new Float64Array(4).fill(-800) };
    const { Y } = referenceForward(x);
    expect(Array.from(Y)).toEqual(Array.from(x0.V));
    const g = referenceBackward(x, randomArray(Y.length, rng(10)));
    for (const arr of [g.dQ, g.dK, g.dV, g.dlogG!]) expect(Array.from(arr).every(Number.isFinite)).toBe(true);
  });

  it("the result does not depend on scale (scale^p cancels)", () => {
    const x = randomInputs({ b: 1, t: 6, hq: 2, h: 2, d: 4, e: 3 }, 4, true, 31);
    const y1 = referenceForward(x).Y;
    const y2 = referenceForward({ ...x, scale: 3.7 }).Y;
    expect(relativeError(y2, y1)).toBeLessThan(1e-14);
  });
});

// ----------------------------------------------------------------------------------------------
// gradients vs finite differences

interface Problem {
  readonly x: RetentionInputs;
  readonly W: Float64Array; // [b, t, hq, e] weights of the loss sum(Y * W)
}

const problemArb: fc.Arbitrary<Problem> = fc
  .record({
    b: fc.integer({ min: 1, max: 2 }),
    t: fc.integer({ min: 1, max: 7 }),
    h: fc.integer({ min: 1, max: 2 }),
    group: fc.integer({ min: 1, max: 2 }),
    d: fc.integer({ min: 1, max: 4 }),
    e: fc.integer({ min: 1, max: 4 }),
    deg: fc.constantFrom(2, 4),
    gated: fc.boolean(),
  })
  .chain(({ b, t, h, group, d, e, deg, gated }) => {
    const hq = h * group;
    const vals = (n: number, min: number, max: number) =>
      fc
        .array(
          // uniform on a grid of step (max-min)/2000; fc.double would mostly give tiny magnitudes
          fc.noBias(fc.integer({ min: 0, max: 2000 })).map((k) => min + ((max - min) * k) / 2000),
          { minLength: n, maxLength: n },
        )
        .map((a) => Float64Array.from(a));
    return fc.record({
      Q: vals(b * t * hq * d, -1, 1),
      K: vals(b * t * h * d, -1, 1),
      V: vals(b * t * h * e, -1, 1),
      logG: gated ? vals(b * t * h, -2, -0.05) : fc.constant(null),
      W: vals(b * t * hq * e, -1, 1),
    }).map(({ Q, K, V, logG, W }) => ({
      x: { shape: { b, t, hq, h, d, e }, deg, scale: 1 / Math.sqrt(d), Q, K, V, logG },
      W,
    }));
  });

function loss(x: RetentionInputs, W: Float64Array): number {
  return dotAll(referenceForward(x).Y, W);
}

/** Central finite difference of loss w.r.t. every element of input `name`. */
function finiteDifference(p: Problem, name: "Q" | "K" | "V" | "logG", step: number): Float64Array {
  const base = Float64Array.from(p.x[name]!);
  const out = new Float64Array(base.length);
  for (let k = 0; k < base.length; k++) {
    const plus = Float64Array.from(base);
    const minus = Float64Array.from(base);
    plus[k] += step;
    minus[k] -= step;
    const fp = loss({ ...p.x, [name]: plus }, p.W);
    const fm = loss({ ...p.x, [name]: minus }, p.W);
    out[k] = (fp - fm) / (2 * step);
  }
  return out;
}

/**
 * y_i = n_i / l_i is singular where l_i = 0 (q_i = 0, or q_i orthogonal to every k_j), and its
 * k-th derivatives grow like l_i^(-k/p). FD is only meaningful away from that, so require
 * l_i^(1/p) (an "effective |s_ij|") not to be tiny in any row.
 */
function wellConditioned(x: RetentionInputs): boolean {
  const { l } = referenceForward(x);
  for (let i = 0; i < l.length; i++) if (!(Math.pow(l[i], 1 / x.deg) > MIN_EFFECTIVE_S)) return false;
  return true;
}

const MIN_EFFECTIVE_S = 0.1;

const FD_STEP = 1e-5;
const FD_REL_TOL = 1e-6;
const FD_ABS_TOL = 1e-8; // noise floor for gradients that are exactly 0 (e.g. dQ, dK at t = 1)

describe("referenceBackward vs central finite differences", () => {
  it("matches FD of sum(Y * W) for every element of Q, K, V, logG", () => {
    fc.assert(
      fc.property(problemArb, (p) => {
        fc.pre(wellConditioned(p.x));
        const g = referenceBackward(p.x, p.W);
        const pairs: [string, Float64Array, Float64Array][] = [
          ["dQ", g.dQ, finiteDifference(p, "Q", FD_STEP)],
          ["dK", g.dK, finiteDifference(p, "K", FD_STEP)],
          ["dV", g.dV, finiteDifference(p, "V", FD_STEP)],
        ];
        if (p.x.logG !== null) {
          expect(g.dlogG).not.toBeNull();
          pairs.push(["dlogG", g.dlogG!, finiteDifference(p, "logG", FD_STEP)]);
        } else {
          expect(g.dlogG).toBeNull();
        }
        for (const [name, got, fd] of pairs) {
          let err2 = 0;
          let ref2 = 0;
          for (let k = 0; k < fd.length; k++) {
            err2 += (got[k] - fd[k]) ** 2;
            ref2 += fd[k] ** 2;
          }
          const err = Math.sqrt(err2);
          const tol = FD_REL_TOL * Math.sqrt(ref2) + FD_ABS_TOL;
          expect(
            err,
            `FC_SEED=${SEED}: ${name} differs from FD by ${err.toExponential(3)} (tol ${tol.toExponential(3)}), ` +
              `shape ${JSON.stringify(p.x.shape)} deg ${p.x.deg} gated ${p.x.logG !== null}`,
          ).toBeLessThanOrEqual(tol);
        }
      }),
      { seed: SEED, numRuns: 200 },
    );
  });

  it("dlogG_0 is 0: the first gate cancels in every L_i - L_j", () => {
    const x = randomInputs({ b: 2, t: 6, hq: 2, h: 1, d: 3, e: 3 }, 2, true, 41);
    const g = referenceBackward(x, randomArray(2 * 6 * 2 * 3, rng(42)));
    expect(Math.abs(g.dlogG![0])).toBeLessThan(1e-12);
    expect(Math.abs(g.dlogG![6])).toBeLessThan(1e-12); // batch 1, t = 0
  });

  it("y_i is degree-0 homogeneous in q_i, so dot(dq_i, q_i) = 0 for every row", () => {
    const b = 1, t = 6, hq = 2, h = 2, d = 4, e = 3;
    const x = randomInputs({ b, t, hq, h, d, e }, 4, true, 51);
    const g = referenceBackward(x, randomArray(b * t * hq * e, rng(52)));
    for (let r = 0; r < b * t * hq; r++) {
      let s = 0;
      for (let f = 0; f < d; f++) s += g.dQ[r * d + f] * x.Q[r * d + f];
      expect(Math.abs(s)).toBeLessThan(1e-12);
    }
  });
});

// ----------------------------------------------------------------------------------------------
// validation

describe("input validation", () => {
  const good = randomInputs({ b: 2, t: 4, hq: 2, h: 1, d: 4, e: 3 }, 2, true, 61);

  it("rejects wrong tensor lengths, naming the argument", () => {
    expect(() => referenceForward({ ...good, Q: new Float64Array(100) })).toThrow(
      "Q has length 100, expected b*t*hq*d = 64",
    );
    expect(() => referenceForward({ ...good, K: new Float64Array(31) })).toThrow(
      "K has length 31, expected b*t*h*d = 32",
    );
    expect(() => referenceForward({ ...good, V: new Float64Array(25) })).toThrow(
      "V has length 25, expected b*t*h*e = 24",
    );
    expect(() => referenceForward({ ...good, logG: new Float64Array(16) })).toThrow(
      "logG has length 16, expected b*t*h = 8",
    );
    expect(() => referenceBackward(good, new Float64Array(5))).toThrow("dY has length 5, expected b*t*hq*e = 48");
  });

  it("rejects deg that is not a positive even integer", () => {
    for (const deg of [0, 1, 3, -2, 2.5, NaN]) {
      expect(() => referenceForward({ ...good, deg })).toThrow(/deg must be a positive even integer/);
    }
    expect(() => referenceBackward({ ...good, deg: 3 }, new Float64Array(48))).toThrow(/deg/);
  });

  it("rejects hq not a multiple of h", () => {
    const x = randomInputs({ b: 1, t: 2, hq: 3, h: 2, d: 2, e: 2 }, 2, false, 62);
    expect(() => referenceForward(x)).toThrow(/hq \(3\) must be a multiple of shape\.h \(2\)/);
  });

  it("rejects non-positive or non-integer shape dimensions and a non-finite scale", () => {
    expect(() => referenceForward({ ...good, shape: { ...good.shape, t: 0 } })).toThrow(/shape\.t/);
    expect(() => referenceForward({ ...good, shape: { ...good.shape, d: 1.5 } })).toThrow(/shape\.d/);
    expect(() => referenceForward({ ...good, scale: Infinity })).toThrow(/scale/);
  });
});

describe("error measures", () => {
  it("relativeError and maxAbsError", () => {
    expect(relativeError([1, 2, 2], [1, 2, 2])).toBe(0);
    expect(relativeError([0, 0, 3], [0, 0, 4])).toBeCloseTo(0.25, 15);
    expect(relativeError([3, 4], [0, 0])).toBe(5); // ||b|| = 0 -> ||a||
    expect(relativeError([NaN, 0], [1, 0])).toBe(Infinity);
    expect(relativeError([Infinity, 0], [1, 0])).toBe(Infinity);
    expect(maxAbsError([1, 5, 3], [1, 2, 4])).toBe(3);
    expect(maxAbsError([1, NaN], [1, 2])).toBe(Infinity);
    expect(() => relativeError([1], [1, 2])).toThrow(/length/);
  });
});
