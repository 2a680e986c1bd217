// A property over the public API (runtime/index.ts): any argument, well-formed or not, gives a
// typed error that names the argument, or a result that matches the float64 reference; never a
// crash (an untyped error), a hang or a silently wrong answer. The "GPU" is the interpreter
// stand-in (test/gpu/interp-device.ts), so the whole runtime path runs: upload, plan, launch,
// read back. Calls start well-formed and get at most one thing wrong: a tensor replaced by
// something else (null, a number, an array, a look-alike object, a freed tensor, the wrong shape or
// dtype), an option of a wrong name, type or value (NaN, Inf, negative, huge), or a NaN in the data.
// The kernels are a manifest of its own (deg 2, d = e = 16, chunk 16 and 32, every dtype): a spec
// outside it must be a MissingKernelError.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generate, writeGenerated } from "../codegen/gen.ts";
import { roundArray, type DType } from "../dsl/dtype.ts";
import { referenceBackward, referenceForward, relativeError } from "../dsl/reference/power-retention.ts";
import { featureCount } from "../dsl/sympow.ts";
import { ArgumentError, Decoder, MissingKernelError, powerRetention, powerRetentionBackward, Tensor, type RetentionOptions } from "../runtime/index.ts";
import { installInterpDevice } from "./gpu/interp-device.ts";
import { TOL } from "./helpers/compare.ts";
import { fcSeed, rng, uniform } from "./helpers/problems.ts";

const TMP = mkdtempSync(path.join(tmpdir(), "prt-api-property-"));
const D = 16;
const CHUNKS = [16, 32];
const saved = { PRT_MANIFEST: process.env.PRT_MANIFEST, PRT_KERNEL_DIR: process.env.PRT_KERNEL_DIR, PRT_NATIVE_ADDON: process.env.PRT_NATIVE_ADDON };

beforeAll(() => {
  const dir = path.join(TMP, "generated");
  writeGenerated(dir, generate({ selection: { degs: [2], ds: [D], es: null, chunks: CHUNKS, dtypes: ["f32", "f16", "bf16"], archs: ["sm_80", "sm_90a"], kernels: null } }));
  process.env.PRT_MANIFEST = path.join(dir, "manifest.json");
  installInterpDevice(); // before anything loads the addon in this process
}, 60_000);

afterAll(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  rmSync(TMP, { recursive: true, force: true });
});

// ---- what a call may get wrong ------------------------------------------------------------------

const TENSORS = ["Q", "K", "V", "logG"] as const;
type Which = (typeof TENSORS)[number];
/** Something in place of a tensor. */
const badTensor = fc.constantFrom("null", "undefined", "number", "string", "object", "array", "float32array", "lookalike", "freed", "shape+1", "shape-dim", "shape+dim", "dtype");
/** Option values of every kind; some are valid (a result must then match the reference). */
const optValue = fc.constantFrom<unknown>(NaN, Infinity, -Infinity, -16, -2, 0, 1, 2, 3, 4, 2.5, 8, 16, 24, 32, 64, 2 ** 40, 1e300, 1e-20, 1e20, -0.5, "16", "yes", true, false, null, [], {});
const optKey = fc.constantFrom("deg", "chunk", "scale", "returnState", "syncEachLaunch", "chunk_size", "degree", "initial_state", "foo", "__proto__x");

type Mutation =
  | { kind: "none" }
  | { kind: "opt"; key: string; value: unknown }
  | { kind: "opts"; value: unknown }
  | { kind: "tensor"; which: Which; bad: string }
  | { kind: "nan"; which: "Q" | "K" | "logG"; at: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { arbitrary: fc.constant({ kind: "none" as const }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant("opt" as const), key: optKey, value: optValue }), weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant("opts" as const), value: fc.constantFrom<unknown>(null, 5, "chunk", [16], true) }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant("tensor" as const), which: fc.constantFrom(...TENSORS), bad: badTensor }), weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant("nan" as const), which: fc.constantFrom("Q" as const, "K" as const, "logG" as const), at: fc.nat() }), weight: 2 },
);

const call = fc.record({
  b: fc.integer({ min: 1, max: 2 }),
  t: fc.integer({ min: 1, max: 40 }),
  h: fc.integer({ min: 1, max: 2 }),
  g: fc.integer({ min: 1, max: 2 }),
  dtype: fc.constantFrom<DType>("f32", "f16", "bf16"),
  gated: fc.boolean(),
  chunk: fc.constantFrom(...CHUNKS),
  returnState: fc.boolean(),
  zeroState: fc.boolean(), // an initial state of zeros: the reference without one still applies
  seed: fc.integer({ min: 0, max: 0x7fffffff }),
  mutation,
});
type Call = typeof call extends fc.Arbitrary<infer T> ? T : never;

// ---- making and checking a call -------------------------------------------------------------------

const live: Tensor[] = [];
function up(data: ArrayLike<number>, shape: number[], dtype: DType): Tensor {
  const t = Tensor.upload(data, shape, dtype);
  live.push(t);
  return t;
}
function freeAll(): void {
  for (const t of live.splice(0)) t.free();
}

/** The replacement a `bad` names for tensor `x` (the original data `data` of shape `shape`). */
function replace(bad: string, x: Tensor, data: Float32Array, shape: number[], dtype: DType): unknown {
  switch (bad) {
    case "null": return null;
    case "undefined": return undefined;
    case "number": return 3;
    case "string": return "Q";
    case "object": return {};
    case "array": return Array.from(data);
    case "float32array": return data;
    case "lookalike": return { shape, dtype, device: 0, freed: false }; // passes for a Tensor by its fields
    case "freed": {
      const t = Tensor.upload(data, shape, dtype);
      t.free();
      return t;
    }
    case "shape+1": {
      const s = [...shape];
      s[s.length - 1]! += 1;
      return up(new Float32Array(s.reduce((a, b) => a * b, 1)), s, dtype);
    }
    case "shape-dim": return up(data, [shape.slice(0, -1).reduce((a, b) => a * b, 1) * shape[shape.length - 1]!], dtype);
    case "shape+dim": return up(data, [...shape, 1], dtype);
    case "dtype": return up(data, shape, dtype === "f32" ? "bf16" : "f32");
    default: return x;
  }
}

/** Runs `f`; an error must be typed and name one of `args` (any ArgumentError argument starting with one of them). */
function outcome<T>(f: () => T, args: readonly string[], specMissing: boolean, what: string): T | null {
  try {
    return f();
  } catch (e) {
    if (e instanceof MissingKernelError) {
      if (!specMissing) throw new Error(`${what}: MissingKernelError for a spec the manifest has: ${e.message} [FC_SEED=${fcSeed()}]`);
      return null;
    }
    if (!(e instanceof ArgumentError)) throw new Error(`${what}: an untyped error: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)} [FC_SEED=${fcSeed()}]`);
    const named = args.some((a) => e.argument === a || e.argument.startsWith(`${a}.`) || e.argument.startsWith(`${a}[`));
    if (!named) throw new Error(`${what}: the error names ${e.argument}, expected one of ${args.join(", ")}: ${e.message} [FC_SEED=${fcSeed()}]`);
    if (!e.message.includes(e.argument)) throw new Error(`${what}: the message does not name ${e.argument}: ${e.message}`);
    return null;
  }
}

/** `out` NaN exactly where `ref` is, and within `tol` of it elsewhere. */
function expectMatches(out: Float32Array, ref: ArrayLike<number>, tol: number, what: string): void {
  expect(out.length, what).toBe(ref.length);
  const a: number[] = [], b: number[] = [];
  for (let i = 0; i < out.length; i++) {
    if (Number.isNaN(ref[i]!)) {
      if (!Number.isNaN(out[i]!)) throw new Error(`${what}: element ${i} is ${out[i]}, the reference NaN [FC_SEED=${fcSeed()}]`);
      continue;
    }
    if (!Number.isFinite(out[i]!)) throw new Error(`${what}: element ${i} is ${out[i]}, the reference ${ref[i]} [FC_SEED=${fcSeed()}]`);
    a.push(out[i]!);
    b.push(ref[i]!);
  }
  const err = a.length ? relativeError(a, b) : 0;
  if (!(err <= tol)) throw new Error(`${what}: relative error ${err.toExponential(3)} > ${tol} [FC_SEED=${fcSeed()}]`);
}

/** scale^p cancels in y (and so in its gradients), but the float64 reference overflows for
 * scales like 1e300: where it is NaN without a NaN in the data, its answer at scale 1 is the one. */
function sameY<T extends { scale: number }>(inputs: T & Parameters<typeof referenceForward>[0], refY: Float64Array): Float64Array {
  return refY.some((v) => Number.isNaN(v)) ? referenceForward({ ...inputs, scale: 1 }).Y : refY;
}

function describeCall(c: Call): string {
  return `b=${c.b} t=${c.t} hq=${c.h * c.g} h=${c.h} ${c.dtype} c=${c.chunk}${c.gated ? " gated" : ""}${c.returnState ? " returnState" : ""}${c.zeroState ? " S0=0" : ""} ${JSON.stringify(c.mutation, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v))}`;
}

function checkForwardBackward(c: Call): void {
  const what = describeCall(c);
  const { b, t, h, dtype, gated, seed } = c, hq = h * c.g, m = c.mutation;
  const r = rng(seed);
  const sh = { Q: [b, t, hq, D], K: [b, t, h, D], V: [b, t, h, D], logG: [b, t, h] };
  const data = {
    Q: uniform(r, b * t * hq * D, -1, 1, dtype),
    K: uniform(r, b * t * h * D, -1, 1, dtype),
    V: uniform(r, b * t * h * D, -1, 1, dtype),
    logG: uniform(r, b * t * h, -1, 0, "f32"),
  };
  if (m.kind === "nan") data[m.which][m.at % data[m.which].length] = NaN;
  const x: Record<Which, unknown> = {
    Q: up(data.Q, sh.Q, dtype), K: up(data.K, sh.K, dtype), V: up(data.V, sh.V, dtype), logG: gated ? up(data.logG, sh.logG, "f32") : null,
  };
  if (m.kind === "tensor") {
    if (m.which === "logG" && !gated && ["null", "undefined"].includes(m.bad)) return; // that is just an ungated call
    x[m.which] = replace(m.bad, x[m.which] as Tensor, data[m.which], sh[m.which], m.which === "logG" ? "f32" : dtype);
  }
  const ungated = x.logG === null || x.logG === undefined; // a null logG is an ungated call, not a bad one
  const Df = featureCount(D, 2);
  let opts: Record<string, unknown> = { chunk: c.chunk, returnState: c.returnState };
  if (c.zeroState) opts.initialState = { S: up(new Float32Array(b * h * Df * D), [b, h, Df, D], "f32"), Z: up(new Float32Array(b * h * Df), [b, h, Df], "f32") };
  if (m.kind === "opt") opts[m.key] = m.value;
  const optsArg: unknown = m.kind === "opts" ? m.value : opts;
  if (m.kind === "opts") opts = {};
  const deg = (opts.deg ?? 2) as number, chunk = opts.chunk as number;
  const specMissing = deg !== 2 || !CHUNKS.includes(chunk) || m.kind === "tensor"; // a reshaped V is a valid call of another e
  const args = m.kind === "opt" ? [`opts.${m.key}`, ...(m.key === "deg" ? ["opts.initialState"] : [])] : m.kind === "opts" ? ["opts"] : m.kind === "tensor" ? [...TENSORS, "opts.initialState"] : [];

  const res = outcome(() => powerRetention(x.Q as Tensor, x.K as Tensor, x.V as Tensor, x.logG as Tensor | null, optsArg as RetentionOptions), args, specMissing, what);
  if (!res) return;
  live.push(res.Y, res.saved.lse, res.saved.yS, res.saved.wS, ...(res.saved.Sin ? [res.saved.Sin, res.saved.Zin!] : []));
  if (res.state) live.push(res.state.S, res.state.Z);
  const scale = (opts.scale ?? 1 / Math.sqrt(D)) as number;
  const inputs = { shape: { b, t, hq, h, d: D, e: D }, deg, scale, Q: data.Q, K: data.K, V: data.V, logG: ungated ? null : data.logG };
  const refY = referenceForward(inputs).Y;
  expectMatches(res.Y.download(), m.kind === "nan" ? refY : sameY(inputs, refY), TOL[dtype], `${what}: Y`);
  expect(res.state !== undefined, `${what}: a state exactly when returnState`).toBe(opts.returnState === true);
  if (m.kind === "nan") return; // gradients through a NaN are NaN wherever it reaches: not a tolerance question

  const dY = uniform(rng(seed ^ 0x5eed), b * t * hq * D, -1, 1, dtype);
  const g = powerRetentionBackward(res.saved, up(dY, [b, t, hq, D], dtype));
  live.push(g.dQ, g.dK, g.dV, ...(g.dlogG ? [g.dlogG] : []), ...(g.dInitialState ? [g.dInitialState.S, g.dInitialState.Z] : []));
  const bwdIn = { ...inputs, logG: inputs.logG ?? new Float32Array(b * t * h) };
  const ref = referenceBackward(sameY(inputs, refY) === refY ? bwdIn : { ...bwdIn, scale: 1 }, dY);
  // dQ, dK, dlogG keep an absolute accuracy when they vanish (test/backward.test.ts): relative to 1e-3 |dV| then
  const norm = (a: ArrayLike<number>): number => Math.sqrt(Array.from(a).reduce((s, v) => s + v * v, 0));
  const floor = 1e-3 * norm(ref.dV);
  for (const [name, got, want] of [["dQ", g.dQ, ref.dQ], ["dK", g.dK, ref.dK], ["dV", g.dV, ref.dV], ["dlogG", g.dlogG, ref.dlogG]] as const) {
    if (!got || !want) continue;
    const out = got.download(), n = norm(want);
    if (name === "dV" || n >= floor) expectMatches(out, want, 2 * TOL[dtype], `${what}: ${name}`);
    else expect(norm(out.map((v, i) => v - want[i]!)) / floor, `${what}: ${name} vs 1e-3 |dV|`).toBeLessThanOrEqual(2 * TOL[dtype]);
  }
}

// ---- the properties -------------------------------------------------------------------------------

describe("the public API on any argument: a typed error naming it, or the reference's answer", () => {
  it("powerRetention and powerRetentionBackward", () => {
    fc.assert(
      fc.property(call, (c) => {
        try {
          checkForwardBackward(c);
        } finally {
          freeAll();
        }
      }),
      { seed: fcSeed(), numRuns: 150, endOnFailure: true },
    );
  }, 60_000);

  it("Tensor.upload: a tensor holding the data rounded to its dtype, or an error naming data, shape or dtype", () => {
    const element = fc.oneof(fc.double(), fc.constantFrom<unknown>(1e6, -1e39, NaN, Infinity, "1", null, undefined, [1], {}, true, 1n));
    const shape = fc.oneof(
      fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 3 }),
      fc.array(fc.constantFrom<unknown>(0, -1, 2.5, NaN, Infinity, 2 ** 53, 2 ** 31, "2", null), { minLength: 0, maxLength: 3 }),
      fc.constantFrom<unknown>(null, 4, "4", {}),
    );
    const dtype = fc.constantFrom<unknown>("f32", "f16", "bf16", "f64", "F32", null, 16);
    const data = fc.oneof(fc.array(element, { maxLength: 12 }), fc.constantFrom<unknown>(null, 5, "1234", {}, new Float32Array(4), new Float64Array([1, 2, 3, 70000])));
    fc.assert(
      fc.property(data, shape, dtype, (d, s, dt) => {
        const what = `Tensor.upload(${String(d)}, ${JSON.stringify(s)}, ${String(dt)})`;
        const t = outcome(() => Tensor.upload(d as number[], s as number[], dt as DType), ["data", "shape", "dtype"], false, what);
        if (!t) return;
        try {
          expect(Array.from(t.download()), what).toEqual(Array.from(roundArray(d as ArrayLike<number>, dt as DType)));
          expect([...t.shape], what).toEqual(s);
        } finally {
          t.free();
        }
      }),
      { seed: fcSeed(), numRuns: 400 },
    );
  });

  it("Decoder: construction and steps, against the whole sequence's reference", () => {
    const decoderCall = fc.record({
      h: fc.integer({ min: 1, max: 2 }),
      g: fc.integer({ min: 1, max: 2 }),
      dtype: fc.constantFrom<DType>("f32", "f16", "bf16"),
      gated: fc.boolean(),
      chunk: fc.constantFrom(...CHUNKS),
      steps: fc.array(fc.integer({ min: 1, max: 20 }), { minLength: 1, maxLength: 4 }),
      seed: fc.integer({ min: 0, max: 0x7fffffff }),
      bad: fc.oneof(
        { arbitrary: fc.constant(null), weight: 3 },
        { arbitrary: fc.record({ key: fc.constantFrom("b", "hq", "h", "d", "e", "deg", "chunk", "dtype", "scale", "gated", "chunk_size", "foo"), value: optValue }), weight: 3 },
        { arbitrary: fc.record({ which: fc.constantFrom(...TENSORS), bad: badTensor, step: fc.nat() }), weight: 3 },
      ),
    });
    fc.assert(
      fc.property(decoderCall, (c) => {
        const what = `decoder ${JSON.stringify(c, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v))}`;
        const { h, dtype, gated, seed } = c, hq = h * c.g;
        const opts: Record<string, unknown> = { b: 1, hq, h, d: D, chunk: c.chunk, dtype, gated };
        const optBad = c.bad && "key" in c.bad ? c.bad : null;
        const tensorBad = c.bad && "which" in c.bad ? c.bad : null;
        if (optBad) opts[optBad.key] = optBad.value;
        const specMissing = (opts.deg ?? 2) !== 2 || !CHUNKS.includes(opts.chunk as number) || opts.d !== D || (opts.e ?? opts.d) !== D;
        const peers: Record<string, string[]> = { h: ["hq"], hq: ["h"], d: ["e"], e: ["d"] }; // relational checks name either side
        const names = optBad ? [optBad.key, ...(peers[optBad.key] ?? [])].map((k) => `opts.${k}`) : [];
        const dec = outcome(() => new Decoder(opts as never), names, specMissing, what);
        if (!dec) return;
        if (dec.problem.b > 1) return dec.free(); // a valid larger batch: constructed (stepping a batch is in runtime-api.test.ts)
        try {
          const p = dec.problem, b = p.b;
          const t = c.steps.reduce((a, n) => a + n, 0);
          const r = rng(seed);
          const all = {
            Q: uniform(r, b * t * p.hq * p.d, -1, 1, p.dtype), K: uniform(r, b * t * p.h * p.d, -1, 1, p.dtype),
            V: uniform(r, b * t * p.h * p.e, -1, 1, p.dtype), logG: uniform(r, b * t * p.h, -1, 0, "f32"),
          };
          const ys: Float32Array[] = [];
          let t0 = 0;
          for (const [i, n] of c.steps.entries()) {
            const cut = (a: Float32Array, row: number): Float32Array => a.slice(t0 * row, (t0 + n) * row);
            const sh = { Q: [b, n, p.hq, p.d], K: [b, n, p.h, p.d], V: [b, n, p.h, p.e], logG: [b, n, p.h] };
            const part = { Q: cut(all.Q, p.hq * p.d), K: cut(all.K, p.h * p.d), V: cut(all.V, p.h * p.e), logG: cut(all.logG, p.h) };
            const x: Record<Which, unknown> = { Q: up(part.Q, sh.Q, p.dtype), K: up(part.K, sh.K, p.dtype), V: up(part.V, sh.V, p.dtype), logG: p.gated ? up(part.logG, sh.logG, "f32") : null };
            const spoil = tensorBad && tensorBad.step % c.steps.length === i;
            if (spoil) x[tensorBad.which] = replace(tensorBad.bad, x[tensorBad.which] as Tensor, part[tensorBad.which], sh[tensorBad.which], tensorBad.which === "logG" ? "f32" : p.dtype);
            const y = outcome(() => dec.step(x.Q as Tensor, x.K as Tensor, x.V as Tensor, x.logG as Tensor | null), spoil ? [...TENSORS] : [], false, `${what} step ${i}`);
            if (!y) {
              if (!spoil && !(tensorBad?.which === "logG" && !p.gated)) throw new Error(`${what}: step ${i} failed without a bad argument`);
              return; // the decoder is not advanced by a failed step; the rest of the sequence is not comparable
            }
            live.push(y);
            ys.push(y.download());
            t0 += n;
          }
          const got = new Float32Array(ys.reduce((a, y) => a + y.length, 0));
          ys.reduce((off, y) => (got.set(y, off), off + y.length), 0);
          const inputs = { shape: { b, t, hq: p.hq, h: p.h, d: p.d, e: p.e }, deg: p.deg, scale: p.scale, Q: all.Q, K: all.K, V: all.V, logG: p.gated ? all.logG : null };
          expectMatches(got, sameY(inputs, referenceForward(inputs).Y), TOL[p.dtype], `${what}: y`);
        } finally {
          dec.free();
          freeAll();
        }
      }),
      { seed: fcSeed(), numRuns: 120, endOnFailure: true },
    );
  }, 60_000);
});
