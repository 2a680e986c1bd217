// Random retention problems for property tests: sizes drawn by fast-check, inputs made from a
// seed inside the property (so a counterexample prints as a few numbers, not megabytes of data).
// Inputs are rounded to the problem's dtype before anyone sees them, so the float64 reference and
// the kernels read the same values.

import fc from "fast-check";
import { roundArray, type DType } from "../../dsl/dtype.ts";
import type { ForwardInputs, Problem } from "../../dsl/plan.ts";
import { referenceForward, type ReferenceForward } from "../../dsl/reference/power-retention.ts";
import { featureCount } from "../../dsl/sympow.ts";

/** The fast-check seed of every property: env FC_SEED, default 42. */
export function fcSeed(): number {
  const s = process.env.FC_SEED;
  if (s === undefined || s === "") return 42;
  const n = Number(s);
  if (!Number.isInteger(n)) throw new Error(`FC_SEED: expected an integer, received ${JSON.stringify(s)}`);
  return n;
}

/** fc.assert parameters: the fixed seed, and no shrinking unless FC_SHRINK=1 (each run costs up to a second). */
export function fcOptions(numRuns: number): fc.Parameters<unknown> {
  return { seed: fcSeed(), numRuns, endOnFailure: process.env.FC_SHRINK !== "1" };
}

/** A problem and how to fill it: the data comes from `seed`. */
export interface Case {
  readonly problem: Problem;
  readonly seed: number;
  /** Q, K, V are uniform in [-inputScale, inputScale]. */
  readonly inputScale: number;
  /** logG is uniform in [lo, hi] (when gated). */
  readonly gate: readonly [number, number];
}

export interface CaseOptions {
  readonly dtypes?: readonly DType[];
  readonly degs?: readonly number[];
  /** Head dims with weights (bigger ones rarer). d and e are drawn independently. */
  readonly dims?: readonly (readonly [dim: number, weight: number])[];
  readonly chunks?: readonly number[];
  readonly tMax?: number;
  readonly bMax?: number;
  /** kv heads and query heads per kv head are drawn so that hq, h are in this set. */
  readonly heads?: readonly number[];
  readonly gated?: readonly boolean[];
  readonly inputScale?: number;
  readonly gate?: readonly [number, number];
  readonly finalState?: boolean;
  /** Cap on b * hq * t * (work per token) so one case runs in well under a second on the interpreter. */
  readonly maxWork?: number;
}

export const DEFAULT_DIMS: readonly (readonly [number, number])[] = [[8, 4], [16, 4], [32, 2], [64, 1]];

/** Interpreter work of a forward call per (batch, query head, token): state read and write plus the chunk's attention. */
export function workPerToken(p: Pick<Problem, "d" | "e" | "deg" | "chunk" | "hq" | "h">): number {
  const D = featureCount(p.d, p.deg);
  return D * p.e * (1 + p.h / p.hq) + p.chunk * (p.d + p.e);
}

/** An arbitrary Case: sizes per the options (deg 4 only with d <= 16, so that D stays small). */
export function arbCase(o: CaseOptions = {}): fc.Arbitrary<Case> {
  const dims = o.dims ?? DEFAULT_DIMS;
  const dim = fc.oneof(...dims.map(([v, w]) => ({ arbitrary: fc.constant(v), weight: w })));
  const heads = o.heads ?? [1, 2, 4];
  const headPair = fc.constantFrom(...heads.flatMap((hq) => heads.filter((h) => hq % h === 0).map((h) => [hq, h] as const)));
  const shape = fc.record({
    dtype: fc.constantFrom(...(o.dtypes ?? (["f32", "f16", "bf16"] as const))),
    deg: fc.constantFrom(...(o.degs ?? [2, 4])),
    d: dim,
    e: dim,
    chunk: fc.constantFrom(...(o.chunks ?? [16, 32, 64])),
    b: fc.integer({ min: 1, max: o.bMax ?? 2 }),
    heads: headPair,
    gated: fc.constantFrom(...(o.gated ?? [true, false])),
    seed: fc.integer({ min: 0, max: 0x7fffffff }),
  });
  return shape
    .map((s) => (s.deg === 4 && s.d > 16 ? { ...s, d: 16 } : s))
    .chain((s) => {
      const [hq, h] = s.heads;
      const perToken = s.b * hq * workPerToken({ ...s, hq, h });
      const tMax = Math.max(1, Math.min(o.tMax ?? 300, Math.floor((o.maxWork ?? 3e7) / perToken)));
      return fc.integer({ min: 1, max: tMax }).map((t): Case => ({
        problem: {
          b: s.b, t, hq, h, d: s.d, e: s.e, deg: s.deg, chunk: s.chunk, dtype: s.dtype,
          scale: 1 / Math.sqrt(s.d), gated: s.gated, initialState: false, finalState: o.finalState ?? false,
        },
        seed: s.seed,
        inputScale: o.inputScale ?? 1,
        gate: o.gate ?? [-2, 0],
      }));
    });
}

/** Deterministic uniform numbers in [0, 1) (mulberry32). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let r = s;
    r = Math.imul(r ^ (r >>> 15), r | 1);
    r ^= r + Math.imul(r ^ (r >>> 7), r | 61);
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` numbers uniform in [lo, hi), rounded to `dtype`. */
export function uniform(rand: () => number, n: number, lo: number, hi: number, dtype: DType): Float32Array {
  const x = new Float64Array(n);
  for (let i = 0; i < n; i++) x[i] = lo + (hi - lo) * rand();
  return roundArray(x, dtype);
}

/** Inputs with every array already rounded to its dtype (Q, K, V to the problem's, logG to f32). */
export interface Inputs extends ForwardInputs {
  readonly Q: Float32Array;
  readonly K: Float32Array;
  readonly V: Float32Array;
  readonly logG?: Float32Array;
}

export function caseInputs(c: Case): Inputs {
  const { b, t, hq, h, d, e, dtype, gated } = c.problem;
  const r = rng(c.seed);
  const a = c.inputScale;
  const Q = uniform(r, b * t * hq * d, -a, a, dtype);
  const K = uniform(r, b * t * h * d, -a, a, dtype);
  const V = uniform(r, b * t * h * e, -a, a, dtype);
  return gated ? { Q, K, V, logG: uniform(r, b * t * h, c.gate[0], c.gate[1], "f32") } : { Q, K, V };
}

/** The float64 reference on the same (rounded) inputs. */
export function reference(p: Problem, x: ForwardInputs): ReferenceForward {
  return referenceForward({ shape: p, deg: p.deg, scale: p.scale, Q: x.Q, K: x.K, V: x.V, logG: p.gated ? x.logG! : null });
}

/** A short description of a case for messages and tables. */
export function describeCase(c: Case | Problem): string {
  const p = "problem" in c ? c.problem : c;
  const extra = "problem" in c ? ` seed=${c.seed} x${c.inputScale} gate=[${c.gate}]` : "";
  return `${p.dtype} p=${p.deg} b=${p.b} t=${p.t} hq=${p.hq} h=${p.h} d=${p.d} e=${p.e} c=${p.chunk}${p.gated ? " gated" : ""}${extra}`;
}
