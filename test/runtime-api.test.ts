// The public runtime API without a GPU: argument validation (all of it runs before any GPU work),
// the host f16/bf16 conversions, the manifest lookups and the commands they suggest, and the clear
// errors when there is no addon, no driver or no device. Device tensors are exercised on the fake
// driver (test/fixtures/fake_libcuda.c) in a child process; kernels themselves run only in test/gpu/.
//
// The kernels looked up here come from a manifest this file generates into a temporary folder, so
// the tests do not depend on what generated/ holds.

import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generate, writeGenerated } from "../codegen/gen.ts";
import { roundArray, roundBF16, roundF16, type DType } from "../dsl/dtype.ts";
import { updateState } from "../dsl/kernels/update-state.ts";
import { backwardPlan } from "../dsl/plan-backward.ts";
import { decodePlan } from "../dsl/plan-decode.ts";
import { forwardPlan, type Problem } from "../dsl/plan.ts";
import { featureCount } from "../dsl/sympow.ts";
import { ensureNativeAddon } from "../runtime/build-native.ts";
import { decode, encode } from "../runtime/convert.ts";
import { cudaAvailable } from "../runtime/device.ts";
import { evalGrid, executeOnGpu, preparedPlan, preparePlan } from "../runtime/execute-gpu.ts";
import {
  ArgumentError,
  bf16Bits,
  bf16Value,
  Decoder,
  f16Bits,
  f16Value,
  GpuUnavailableError,
  MissingKernelError,
  powerRetention,
  powerRetentionBackward,
  Tensor,
  type RetentionSaved,
} from "../runtime/index.ts";
import { archFor, checkFatbin, findKernel, loadManifests } from "../runtime/kernels.ts";
import { REPO_ROOT } from "../runtime/native.ts";

const gpu = cudaAvailable();

// ---- a manifest of our own: deg 2, d = e = 16, chunk 16, f32 and f16 -----------------------------

const TMP = mkdtempSync(path.join(tmpdir(), "prt-runtime-api-"));
const GEN = path.join(TMP, "generated");
const KDIR = path.join(TMP, "kernels"); // stays empty: no fatbin is ever built here
const MANIFEST = path.join(GEN, "manifest.json");
const saveEnv = { PRT_MANIFEST: process.env.PRT_MANIFEST, PRT_KERNEL_DIR: process.env.PRT_KERNEL_DIR };

beforeAll(() => {
  const g = generate({
    selection: { degs: [2], ds: [16], es: null, chunks: [16], dtypes: ["f32", "f16"], archs: ["sm_80", "sm_90a"], kernels: null },
  });
  writeGenerated(GEN, g);
  process.env.PRT_MANIFEST = MANIFEST;
  process.env.PRT_KERNEL_DIR = KDIR;
}, 60_000);

afterAll(() => {
  for (const [k, v] of Object.entries(saveEnv)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  rmSync(TMP, { recursive: true, force: true });
});

/** A tensor's metadata, without device memory: what validation reads. */
function meta(shape: number[], dtype: DType = "f32", extra: { device?: number; freed?: boolean } = {}): Tensor {
  return { shape, dtype, device: extra.device ?? 0, freed: extra.freed ?? false } as unknown as Tensor;
}

/** Q, K, V, logG metadata of a valid call (b=2, t=40, hq=4, h=2, d=e=16). */
function qkvg(dtype: DType = "f32") {
  return {
    Q: meta([2, 40, 4, 16], dtype),
    K: meta([2, 40, 2, 16], dtype),
    V: meta([2, 40, 2, 16], dtype),
    G: meta([2, 40, 2]),
  };
}

function thrown(f: () => unknown): Error {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected an error, none was thrown");
}

// ---- conversions ----------------------------------------------------------------------------------

describe("host f16 / bf16 conversion", () => {
  const same = (a: number, b: number): boolean => Object.is(a, b) || (a === 0 && b === 0) || (Number.isNaN(a) && Number.isNaN(b));

  it("encodes known values to their bit patterns", () => {
    expect(f16Bits(1)).toBe(0x3c00);
    expect(f16Bits(-2)).toBe(0xc000);
    expect(f16Bits(65504)).toBe(0x7bff);
    expect(f16Bits(65519)).toBe(0x7bff); // rounds down to the largest finite
    expect(f16Bits(65520)).toBe(0x7c00); // the tie rounds to even: infinity
    expect(f16Bits(Infinity)).toBe(0x7c00);
    expect(f16Bits(-0)).toBe(0x8000);
    expect(f16Bits(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(f16Bits(2 ** -25)).toBe(0x0000); // half of it: tie to even (0)
    expect(f16Bits(3 * 2 ** -26)).toBe(0x0001);
    expect(f16Bits(2 ** -14)).toBe(0x0400); // smallest normal
    expect(f16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie -> even
    expect(f16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(f16Value(f16Bits(NaN))).toBeNaN();
    expect(bf16Bits(1)).toBe(0x3f80);
    expect(bf16Bits(-1.5)).toBe(0xbfc0);
    expect(bf16Bits(1 + 2 ** -8)).toBe(0x3f80); // tie -> even
    expect(bf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(bf16Bits(3.4e38)).toBe(0x7f80); // above the largest finite bf16 by more than half an ulp
    expect(bf16Value(bf16Bits(NaN))).toBeNaN();
    expect(bf16Value(0x7f7f)).toBe(3.3895313892515355e38);
  });

  it("every finite f16 and bf16 bit pattern decodes and re-encodes to itself", () => {
    for (let h = 0; h < 65536; h++) {
      const v = f16Value(h);
      if (!Number.isNaN(v)) expect(f16Bits(v)).toBe(h);
      const w = bf16Value(h);
      if (!Number.isNaN(w)) expect(bf16Bits(w)).toBe(h);
    }
  });

  it("rounds like dsl/dtype.ts (roundF16, roundBF16) on doubles of every magnitude", () => {
    const anyDouble = fc.oneof(
      fc.double({ noNaN: true }),
      fc.double({ min: -70000, max: 70000, noNaN: true }),
      fc.double({ min: -1e-4, max: 1e-4, noNaN: true }),
      fc.float({ noNaN: true }).map(Number),
      fc.integer({ min: -(2 ** 30), max: 2 ** 30 }).map((i) => i * 2 ** -24), // many exact ties
    );
    fc.assert(
      fc.property(anyDouble, (x) => {
        expect(same(f16Value(f16Bits(x)), roundF16(x))).toBe(true);
        expect(same(bf16Value(bf16Bits(x)), roundBF16(x))).toBe(true);
      }),
      { seed: 42, numRuns: 20_000 },
    );
  });

  it("array encode / decode round trips equal roundArray for each dtype", () => {
    fc.assert(
      fc.property(fc.array(fc.double({ min: -1e5, max: 1e5, noNaN: true }), { maxLength: 64 }), fc.constantFrom<DType>("f32", "f16", "bf16"), (xs, dt) => {
        const raw = encode(xs, dt);
        expect(raw.byteLength).toBe(xs.length * (dt === "f32" ? 4 : 2));
        expect(Array.from(decode(raw, dt))).toEqual(Array.from(roundArray(xs, dt)));
      }),
      { seed: 42, numRuns: 500 },
    );
  });
});

// ---- validation -----------------------------------------------------------------------------------

describe("argument validation (before any GPU work)", () => {
  const cases: [string, () => unknown, string, RegExp][] = [];
  const add = (name: string, f: () => unknown, arg: string, msg: RegExp): void => void cases.push([name, f, arg, msg]);
  {
    const { Q, K, V, G } = qkvg();
    add("Q of rank 3", () => powerRetention(meta([2, 40, 4]), K, V, G), "Q", /Q: expected shape \[b, t, hq, d\], received \[2, 40, 4\]/);
    add("K's t differs", () => powerRetention(Q, meta([2, 39, 2, 16]), V, G), "K", /K: expected shape \[2, 40, h, 16\] \(\[b, t, h, d\] with b, t, d of Q\), received \[2, 39, 2, 16\]/);
    add("K's d differs", () => powerRetention(Q, meta([2, 40, 2, 8]), V, G), "K", /K: expected shape \[2, 40, h, 16\].*received \[2, 40, 2, 8\]/);
    add("V's h differs", () => powerRetention(Q, K, meta([2, 40, 1, 16]), G), "V", /V: expected shape \[2, 40, 2, e\].*received \[2, 40, 1, 16\]/);
    add("logG's shape", () => powerRetention(Q, K, V, meta([2, 40, 2, 1])), "logG", /logG: expected shape \[2, 40, 2\] \(\[b, t, h\]\), received \[2, 40, 2, 1\]/);
    add("K's dtype", () => powerRetention(Q, meta([2, 40, 2, 16], "f16"), V, G), "K", /K: expected dtype f32 \(the dtype of Q\), received f16/);
    add("V's dtype", () => powerRetention(Q, K, meta([2, 40, 2, 16], "bf16"), G), "V", /V: expected dtype f32 \(the dtype of Q\), received bf16/);
    add("logG not f32", () => powerRetention(Q, K, V, meta([2, 40, 2], "f16")), "logG", /logG: expected dtype f32 \(log gates are always f32\), received f16/);
    add("hq not a multiple of h", () => powerRetention(meta([2, 40, 3, 16]), K, V, G), "Q", /expected hq \(dim 2\) to be a multiple of K's h = 2 .*received hq = 3/);
    add("odd deg", () => powerRetention(Q, K, V, G, { deg: 3 }), "opts.deg", /opts.deg: expected a positive even integer \(2, 4, \.\.\.\), received 3/);
    add("deg 0", () => powerRetention(Q, K, V, G, { deg: 0 }), "opts.deg", /received 0/);
    add("chunk not a power of two", () => powerRetention(Q, K, V, G, { chunk: 48 }), "opts.chunk", /opts.chunk: expected a power of two >= 16, received 48/);
    add("chunk too small", () => powerRetention(Q, K, V, G, { chunk: 8 }), "opts.chunk", /received 8/);
    add("chunk past 2^32 that is no power of two", () => powerRetention(Q, K, V, G, { chunk: 2 ** 40 + 2 ** 36 }), "opts.chunk", /expected a power of two >= 16, received 1168231104512/);
    add("deg 1e300 (was a hang in binomial)", () => powerRetention(Q, K, V, G, { deg: 1e300 }), "opts.deg", /expected a positive even integer/);
    add("deg 16: a state over 1 GiB", () => powerRetention(Q, K, V, G, { deg: 16 }), "opts.deg", /need a state of D \* e = .* more than 268435456 \(1 GiB\)/);
    add("scale NaN", () => powerRetention(Q, K, V, G, { scale: NaN }), "opts.scale", /opts.scale: expected a finite number, received NaN/);
    add("K on another device", () => powerRetention(Q, meta([2, 40, 2, 16], "f32", { device: 1 }), V, G), "K", /K: expected a tensor on device 0 \(the device of Q\), received one on device 1/);
    add("logG on another device", () => powerRetention(Q, K, V, meta([2, 40, 2], "f32", { device: 1 })), "logG", /logG: expected a tensor on device 0.*device 1/);
    add("freed Q", () => powerRetention(meta([2, 40, 4, 16], "f32", { freed: true }), K, V, G), "Q", /Q: expected a live tensor, received one that was freed/);
    add("freed logG", () => powerRetention(Q, K, V, meta([2, 40, 2], "f32", { freed: true })), "logG", /logG: expected a live tensor, received one that was freed/);
    add("a Float32Array for V", () => powerRetention(Q, K, new Float32Array(4) as unknown as Tensor, G), "V", /V: expected a Tensor, received Float32Array/);
    add("K missing", () => powerRetention(Q, undefined as unknown as Tensor, V, G), "K", /K: expected a Tensor, received undefined/);
    const D = featureCount(16, 2);
    add(
      "initial state of the wrong D",
      () => powerRetention(Q, K, V, G, { initialState: { S: meta([2, 2, D - 1, 16]), Z: meta([2, 2, D]) } }),
      "opts.initialState.S",
      new RegExp(`opts.initialState.S: expected shape \\[2, 2, ${D}, 16\\] \\(\\[b, h, D, e\\] with D = ${D} features for d = 16, deg = 2\\), received \\[2, 2, ${D - 1}, 16\\]`),
    );
    add(
      "initial state in f16",
      () => powerRetention(Q, K, V, G, { initialState: { S: meta([2, 2, D, 16]), Z: meta([2, 2, D], "f16") } }),
      "opts.initialState.Z",
      /opts.initialState.Z: expected dtype f32, received f16/,
    );
    add(
      "initial state on another device",
      () => powerRetention(Q, K, V, G, { initialState: { S: meta([2, 2, D, 16], "f32", { device: 2 }), Z: meta([2, 2, D]) } }),
      "opts.initialState.S",
      /expected a tensor on device 0 \(the device of Q\), received one on device 2/,
    );
    add("Tensor.upload: too few elements", () => Tensor.upload([1, 2, 3], [2, 2], "f32"), "data", /Tensor.upload: data: expected 4 elements for shape \[2, 2\], received 3/);
    add("Tensor.upload: bad shape", () => Tensor.upload([], [2, 0], "f32"), "shape", /shape: expected a shape of positive integers, received \[2, 0\]/);
    add("Tensor.upload: bad dtype", () => Tensor.upload([1], [1], "f64" as DType), "dtype", /dtype: expected a dtype f32, f16 or bf16, received "f64"/);
    add("Tensor.upload: a string element", () => Tensor.upload([1, "a", 3] as unknown as number[], [3], "f32"), "data[1]", /Tensor.upload: data\[1\]: expected a number, received "a"/);
    add("Tensor.upload: null and objects", () => Tensor.upload([null, {}] as unknown as number[], [2], "f32"), "data[0]", /data\[0\]: expected a number, received null/);
    add("Tensor.upload: 1e6 as f16", () => Tensor.upload([1, 1e6], [2], "f16"), "data[1]", /data\[1\]: 1000000 overflows f16 \(finite values up to 65504\)/);
    add("Tensor.upload: 1e39 as bf16", () => Tensor.upload(new Float64Array([1e39]) as unknown as number[], [1], "bf16"), "data[0]", /1e\+39 overflows bf16/);
    add("peer's option names", () => powerRetention(Q, K, V, G, { chunk_size: 32, degree: 4 } as never), "opts.chunk_size", /opts.chunk_size: unknown option \(did you mean chunk\?\); expected some of deg, scale, chunk, initialState, returnState, schedules, syncEachLaunch, checkGates/);
    add("a misspelt option", () => powerRetention(Q, K, V, G, { chunks: 32 } as never), "opts.chunks", /opts.chunks: unknown option \(did you mean chunk\?\); expected some of deg, /);
    add("an option in another case", () => powerRetention(Q, K, V, G, { returnstate: true } as never), "opts.returnstate", /unknown option \(did you mean returnState\?\)/);
    add("an option like none", () => powerRetention(Q, K, V, G, { frobnicate: 1 } as never), "opts.frobnicate", /opts.frobnicate: unknown option; expected some of deg, /);
    add("returnState not a boolean", () => powerRetention(Q, K, V, G, { returnState: "yes" } as never), "opts.returnState", /opts.returnState: expected true or false, received "yes"/);
    add("checkGates not a boolean", () => powerRetention(Q, K, V, G, { checkGates: 1 } as never), "opts.checkGates", /opts.checkGates: expected true or false, received 1/);
    const gates = (g: number[]): Tensor => ({ ...meta([2, 40, 2]), download: () => Float32Array.from({ length: 160 }, (_, i) => g[i] ?? -0.5) }) as unknown as Tensor;
    // element 2 * 40 * 2 / 2 + 2 * 7 + 1 = [b=1, t=7, h=1]
    add("checkGates: a positive log gate", () => powerRetention(Q, K, V, gates(Object.assign([], { 95: 0.25 })), { checkGates: true }), "logG", /logG: expected log gates <= 0 \(the log of a forget gate in \(0, 1\]\), received logG\[b=1, t=7, h=1\] = 0.25/);
    add("checkGates: NaN", () => powerRetention(Q, K, V, gates(Object.assign([], { 0: NaN })), { checkGates: true }), "logG", /received logG\[b=0, t=0, h=0\] = NaN/);
    add("Decoder: unknown option", () => new Decoder({ b: 1, hq: 2, h: 1, d: 16, gated: false, chunk_size: 64 } as never), "opts.chunk_size", /new Decoder: opts.chunk_size: unknown option \(did you mean chunk\?\)/);
    add("Tensor.zeros: bad shape", () => Tensor.zeros([-1]), "shape", /Tensor.zeros: shape: expected a shape of positive integers/);
    add("Decoder: odd deg", () => new Decoder({ b: 1, hq: 2, h: 1, d: 16, deg: 5, gated: false }), "opts.deg", /new Decoder: opts.deg: expected a positive even integer/);
    add("Decoder: hq vs h", () => new Decoder({ b: 1, hq: 3, h: 2, d: 16, gated: false }), "opts.hq", /opts.hq: expected a multiple of opts.h = 2/);
    add("Decoder: e of 2^40", () => new Decoder({ b: 1, hq: 2, h: 1, d: 16, e: 2 ** 40, gated: false }), "opts.e", /new Decoder: opts.e: deg = 2, d = 16, e = 1099511627776 need a state/);
    add("Decoder: chunk", () => new Decoder({ b: 1, hq: 2, h: 1, d: 16, chunk: 24, gated: false }), "opts.chunk", /received 24/);
    add("Decoder: gated missing", () => new Decoder({ b: 1, hq: 2, h: 1, d: 16 } as never), "opts.gated", /opts.gated: expected true or false, received undefined/);
    add("Decoder: dtype", () => new Decoder({ b: 1, hq: 2, h: 1, d: 16, dtype: "fp8" as DType, gated: true }), "opts.dtype", /received "fp8"/);
  }

  it.each(cases)("%s", (_name, f, arg, msg) => {
    const e = thrown(f);
    expect(e).toBeInstanceOf(ArgumentError);
    expect((e as ArgumentError).argument).toBe(arg);
    expect(e.message).toMatch(msg);
  });

  it("checks the saved context and dY of the backward", () => {
    const { Q, K, V, G } = qkvg("f16");
    const saved = (over: Partial<RetentionSaved>): RetentionSaved =>
      ({
        problem: { b: 2, t: 40, hq: 4, h: 2, d: 16, e: 16, deg: 2, chunk: 16, dtype: "f16", scale: 0.25, gated: true, initialState: false, finalState: false },
        schedules: {}, Q, K, V, logG: G, initialState: null,
        Y: meta([2, 40, 4, 16], "f16"), lse: meta([2, 40, 4]), yS: meta([2, 40, 4, 16]), wS: meta([2, 40, 4]), Sin: meta([2, 2, 3, 136, 16]), Zin: meta([2, 2, 3, 136]),
        syncEachLaunch: false, free() {},
        ...over,
      }) as RetentionSaved;
    const dY = meta([2, 40, 4, 16], "f16");
    let e = thrown(() => powerRetentionBackward(saved({ lse: meta([2, 40, 4], "f32", { freed: true }) }), dY));
    expect(e.message).toMatch(/powerRetentionBackward: saved.lse: expected a live tensor, received one that was freed/);
    e = thrown(() => powerRetentionBackward(saved({ Q: meta([2, 40, 4, 16], "f16", { freed: true }) }), dY));
    expect(e.message).toMatch(/saved.Q: expected a live tensor/);
    e = thrown(() => powerRetentionBackward(saved({}), meta([2, 40, 4, 8], "f16")));
    expect(e.message).toMatch(/dY: expected shape \[2, 40, 4, 16\] \(the shape of Y\), received \[2, 40, 4, 8\]/);
    e = thrown(() => powerRetentionBackward(saved({}), meta([2, 40, 4, 16], "f32")));
    expect(e.message).toMatch(/dY: expected dtype f16 \(the dtype of Y\), received f32/);
    e = thrown(() => powerRetentionBackward(saved({}), meta([2, 40, 4, 16], "f16", { device: 1 })));
    expect(e.message).toMatch(/dY: expected a tensor on device 0/);
    e = thrown(() => powerRetentionBackward(saved({}), dY, { dState: { S: meta([2, 2, 136, 16]), Z: meta([2, 2, 136]) } }));
    expect(e.message).toMatch(/opts.dState: expected no state gradient: the forward was called without returnState/);
    e = thrown(() => powerRetentionBackward({} as RetentionSaved, dY));
    expect(e.message).toMatch(/saved: expected the 'saved' of a powerRetention result/);
  });

  it.skipIf(gpu.ok)("a valid call without a GPU fails with the no-GPU error, carrying cudaAvailable()'s reason", () => {
    if (gpu.ok) return;
    const { Q, K, V, G } = qkvg();
    const e = thrown(() => powerRetention(Q, K, V, G, { chunk: 16 }));
    expect(e).toBeInstanceOf(GpuUnavailableError);
    expect(e.message).toBe(`powerRetention: no usable CUDA GPU: ${gpu.reason}`);
    expect(thrown(() => Tensor.upload([1, 2], [2])).message).toBe(`Tensor.upload: no usable CUDA GPU: ${gpu.reason}`);
    expect(thrown(() => Tensor.zeros([2])).message).toMatch(/^Tensor.zeros: no usable CUDA GPU: /);
    expect(thrown(() => new Decoder({ b: 1, hq: 2, h: 1, d: 16, chunk: 16, gated: true })).message).toMatch(/^new Decoder: no usable CUDA GPU: /);
    const saved = { problem: { b: 2, t: 40, hq: 4, h: 2, d: 16, e: 16, deg: 2, chunk: 16, dtype: "f32", scale: 0.25, gated: true, initialState: false, finalState: false },
      schedules: {}, Q, K, V, logG: G, initialState: null, Y: meta([2, 40, 4, 16]), lse: meta([2, 40, 4]), yS: meta([2, 40, 4, 16]), wS: meta([2, 40, 4]),
      Sin: meta([2, 2, 3, 136, 16]), Zin: meta([2, 2, 3, 136]), syncEachLaunch: false, free() {} } as unknown as RetentionSaved;
    expect(thrown(() => powerRetentionBackward(saved, meta([2, 40, 4, 16]))).message).toMatch(/^powerRetentionBackward: no usable CUDA GPU: /);
  });
});

// ---- the manifest ------------------------------------------------------------------------------------

describe("kernel lookup in the manifest", () => {
  const problem: Problem = {
    b: 1, t: 70, hq: 2, h: 1, d: 16, e: 16, deg: 2, chunk: 16, dtype: "f32", scale: 0.25, gated: true, initialState: true, finalState: true,
  };

  it("finds every kernel of the forward, backward and decode plans, with arguments in the DSL's order", () => {
    for (const plan of [forwardPlan(problem), backwardPlan(problem), decodePlan(problem, 3, 40).plan, forwardPlan({ ...problem, t: 9, finalState: false })]) {
      const steps = preparePlan(plan);
      expect(steps.length).toBe(plan.steps.length);
      for (const s of steps) {
        expect(s.entry.symbol).toMatch(new RegExp(`^prt_${s.kernel.name}_p2_d16_e16_c16_f32_`));
        expect(s.entry.fatbin).toBe(path.join(KDIR, "p2_d16_e16_c16_f32.fatbin"));
        expect(s.entry.threads).toBe(32 * s.kernel.numWarps);
      }
    }
  });

  it("evaluates a kernel's grid for the step's params", () => {
    const spec = { deg: 2, d: 16, e: 16, chunk: 16, dtype: "f32" as const };
    // p = 2, factored: (chunk * column blocks of V, batch*head); at p = 4, (chunk * feature blocks, batch*head)
    const k = updateState.build(spec, updateState.schedule(spec));
    expect(evalGrid(k, { b: 3, t: 70, h: 2, n: 5 })).toEqual([5 * (16 / updateState.schedule(spec).blockD), 6, 1]);
    const spec4 = { ...spec, deg: 4 };
    const k4 = updateState.build(spec4, updateState.schedule(spec4));
    expect(evalGrid(k4, { b: 3, t: 70, h: 2, n: 5 })).toEqual([5 * Math.ceil(featureCount(16, 4) / updateState.schedule(spec4).blockD), 6, 1]);
    // the chunks are on x (2^31 - 1 programs), so t = 5e6 at chunk 64 (78125 chunks) is not a grid limit
    expect(evalGrid(k, { b: 1, t: 5e6, h: 1, n: 78125 })[0]).toBe(78125 * (16 / updateState.schedule(spec).blockD));
    expect(() => evalGrid(k, { b: 3, t: 70, h: 2 })).toThrow(/param 'n' expected a finite number/);
  });

  /** Run a suggested `npx retention gen ...` command as given, except: into `out`, and without
   * --compile (nvcc's part is CI's compile step). Returns the manifest it wrote. */
  function runGen(cmd: string, out: string): string {
    const args = cmd.split(" ").slice(2); // after `npx retention`
    args.splice(args.indexOf("--out"), 2, "--out", out);
    args.splice(args.indexOf("--compile"), 1);
    const r = spawnSync(process.execPath, [path.join(REPO_ROOT, "codegen", "bin.mjs"), ...args], { cwd: REPO_ROOT, encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    return path.join(out, "manifest.json");
  }

  it("a spec not in the manifest: the error gives a gen command that builds it", () => {
    const { Q, K, V, G } = qkvg("f16");
    const e = thrown(() => powerRetention(Q, K, V, G, { chunk: 32 }));
    expect(e).toBeInstanceOf(MissingKernelError);
    const cmd = (e as MissingKernelError).command;
    expect(cmd).toBe(`npx retention gen --deg 2 --d 16 --e 16 --chunk 32 --dtype f16 --out build/generated/p2_d16_e16_c32_f16 --build-dir ${KDIR} --compile`);
    expect(e.message).toBe(
      `the manifest ${MANIFEST} (PRT_MANIFEST) has no kernels attention, update_state, discounted_cumsum, query_state for spec p2_d16_e16_c32_f16; generate and compile them with \`${cmd}\``,
    );
    const extra = runGen(cmd, path.join(TMP, "extra-fwd"));
    const prev = process.env.PRT_MANIFEST;
    process.env.PRT_MANIFEST = `${MANIFEST}:${extra}`;
    try {
      const p: Problem = { ...problem, chunk: 32, dtype: "f16" };
      for (const plan of [forwardPlan(p), backwardPlan(p)]) expect(() => preparePlan(plan)).not.toThrow();
      // the call itself now gets past the lookup (to the GPU, or to the missing fatbin)
      expect(thrown(() => powerRetention(Q, K, V, G, { chunk: 32 })).message).not.toMatch(/ha(s|ve) no kernel/);
    } finally {
      process.env.PRT_MANIFEST = prev;
    }
  }, 60_000);

  it("a decoder whose specs are missing: one command per spec (the fold runs in f32), and they work", () => {
    const e = thrown(() => new Decoder({ b: 1, hq: 2, h: 1, d: 16, chunk: 32, dtype: "f16", gated: true }));
    expect(e).toBeInstanceOf(MissingKernelError);
    const cmd = (e as MissingKernelError).command;
    const parts = cmd.split(" && ");
    expect(parts).toEqual([
      `npx retention gen --deg 2 --d 16 --e 16 --chunk 32 --dtype f16 --out build/generated/p2_d16_e16_c32_f16 --build-dir ${KDIR} --compile`,
      `npx retention gen --deg 2 --d 16 --e 16 --chunk 32 --dtype f32 --out build/generated/p2_d16_e16_c32_f32 --build-dir ${KDIR} --compile`,
    ]);
    // the place searched once, then each spec's kernels, then the command (issue 27: the place came once per spec)
    expect(e.message).toBe(
      `the manifest ${MANIFEST} (PRT_MANIFEST) has no kernels cache_append, decode for spec p2_d16_e16_c32_f16; ` +
        `no kernels update_state, discounted_cumsum, state_copy for spec p2_d16_e16_c32_f32; generate and compile them with \`${cmd}\``,
    );
    const manifests = parts.map((c, i) => runGen(c, path.join(TMP, `extra-dec-${i}`)));
    const prev = process.env.PRT_MANIFEST;
    process.env.PRT_MANIFEST = [MANIFEST, ...manifests].join(":");
    try {
      const p = { b: 1, hq: 2, h: 1, d: 16, e: 16, deg: 2, chunk: 32, dtype: "f16" as const, scale: 0.25, gated: true };
      expect(() => preparePlan(decodePlan(p, 5, 70).plan)).not.toThrow();
      expect(thrown(() => new Decoder({ b: 1, hq: 2, h: 1, d: 16, chunk: 32, dtype: "f16", gated: true })).message).not.toMatch(/ha(s|ve) no kernel/);
    } finally {
      process.env.PRT_MANIFEST = prev;
    }
  }, 60_000);

  it("without PRT_KERNEL_DIR the command needs no --build-dir", () => {
    const prev = process.env.PRT_KERNEL_DIR;
    delete process.env.PRT_KERNEL_DIR;
    try {
      const e = thrown(() => powerRetention(meta([1, 5, 1, 24]), meta([1, 5, 1, 24]), meta([1, 5, 1, 24]), null, { deg: 4 }));
      expect((e as MissingKernelError).command).toBe("npx retention gen --deg 4 --d 24 --e 24 --chunk 64 --dtype f32 --out build/generated/p4_d24_e24_c64_f32 --compile");
    } finally {
      process.env.PRT_KERNEL_DIR = prev;
    }
  });

  it("a schedule not in the manifest: the error lists the ones it has and the gen command", () => {
    const { Q, K, V, G } = qkvg();
    const have = findKernel("attention", { deg: 2, d: 16, e: 16, chunk: 16, dtype: "f32" }, forwardPlan({ ...problem }).steps[0]!.schedule).schedule;
    const other = { ...have, numWarps: have.numWarps * 2 };
    const e = thrown(() => powerRetention(Q, K, V, G, { chunk: 16, schedules: { attention: other } }));
    expect(e).toBeInstanceOf(MissingKernelError);
    expect(e.message).toMatch(/^the manifest \S+ \(PRT_MANIFEST\) has no kernel attention for spec p2_d16_e16_c16_f32 under schedule w\d+_bd\d+_bt\d+_s\d+ \(only w\d+_[^)]*\); gen builds/);
    expect(e.message).toContain("npx retention gen --deg 2 --d 16 --e 16 --chunk 16 --dtype f32");
  });

  it("no manifest at all: says how to generate the default set", () => {
    const prev = process.env.PRT_MANIFEST;
    process.env.PRT_MANIFEST = path.join(TMP, "nowhere", "manifest.json");
    try {
      const { Q, K, V, G } = qkvg();
      const e = thrown(() => powerRetention(Q, K, V, G, { chunk: 16 }));
      expect(e).toBeInstanceOf(MissingKernelError);
      expect(e.message).toMatch(/no kernel manifest found .*nowhere.*`npx retention gen --out generated( --build-dir \S+)? --compile`/);
    } finally {
      process.env.PRT_MANIFEST = prev;
    }
  });

  it("executeOnGpu refuses an input the plan does not read (logG of an ungated plan), before any GPU work", () => {
    const m = (shape: number[]): Tensor => ({ ...meta(shape), bytes: shape.reduce((a, b) => a * b, 4) }) as unknown as Tensor;
    const [Q, K, V, G] = [m([1, 70, 2, 16]), m([1, 70, 1, 16]), m([1, 70, 1, 16]), m([1, 70, 1])];
    const e = thrown(() => executeOnGpu(forwardPlan({ ...problem, gated: false, initialState: false, finalState: false }), { Q, K, V, logG: G }));
    expect(e.message).toBe("plan input 'logG': given, but the plan does not read it (it starts as zeros: the problem is not gated); leave it out");
  });

  it("a missing fatbin: the error names the file and the build command", () => {
    const k = findKernel("query_state", { deg: 2, d: 16, e: 16, chunk: 16, dtype: "f16" }, loadManifests()[0]!.kernels.find((x) => x.name === "query_state" && x.spec.dtype === "f16")!.schedule);
    const e = thrown(() => checkFatbin(k));
    expect(e).toBeInstanceOf(MissingKernelError);
    expect(e.message).toBe(
      `the fatbin of kernel query_state (${k.symbol}) is missing: ${path.join(KDIR, "p2_d16_e16_c16_f16.fatbin")} does not exist; compile it with \`npx retention build --out ${GEN} --build-dir ${KDIR}\``,
    );
  });

  it("remembers a checked plan per problem until a manifest changes, and never a plan that failed its checks", () => {
    const key = JSON.stringify(["forward", problem]);
    const a = preparedPlan(key, (s) => forwardPlan(problem, s), (x) => x);
    expect(preparedPlan(key, (s) => forwardPlan(problem, s), (x) => x)).toBe(a); // the second call builds and checks nothing
    expect(a.steps.map((st) => st.kernel.name)).toEqual(forwardPlan(problem).steps.map((st) => st.kernel.name));
    const other = JSON.stringify(["forward", { ...problem, t: problem.t + 1 }]);
    expect(preparedPlan(other, (s) => forwardPlan({ ...problem, t: problem.t + 1 }, s), (x) => x)).not.toBe(a);
    // the manifest is rewritten (a regeneration): the plan is checked again against it
    const later = new Date(Date.now() + 5_000);
    utimesSync(MANIFEST, later, later);
    expect(preparedPlan(key, (s) => forwardPlan(problem, s), (x) => x)).not.toBe(a);
    // a spec the manifest lacks fails every time, not only the first
    const missing = { ...problem, d: 48, e: 48 };
    for (let i = 0; i < 2; i++) expect(() => preparedPlan(JSON.stringify(["forward", missing]), (s) => forwardPlan(missing, s), (x) => x)).toThrow(MissingKernelError);
  });

  it("a manifest that disagrees with the DSL kernel (arguments, grid, block) is reported as stale", () => {
    const variants: [string, (k: Record<string, any>) => void, RegExp][] = [
      ["args", (k) => void (k.args = [k.args[1], k.args[0], ...k.args.slice(2)]), /takes \(K, Q, V, .*\) but the DSL kernel takes \(Q, K, V, .*\): the generated code is stale/],
      ["grid", (k) => void (k.grid = ["1", ...k.grid.slice(1)]), /its grid is \(1, .*\) but the DSL kernel's is \(.*\): the generated code is stale/],
      ["threads", (k) => void (k.threads += 32), /it runs \d+ threads per block but the DSL kernel has \d+ warps: the generated code is stale; regenerate it with `npx retention gen/],
    ];
    const prev = process.env.PRT_MANIFEST;
    try {
      for (const [name, change, msg] of variants) {
        const m = JSON.parse(readFileSync(MANIFEST, "utf8"));
        change(m.kernels.find((k: { name: string; spec: { dtype: string } }) => k.name === "attention" && k.spec.dtype === "f32"));
        const stale = path.join(TMP, `stale-${name}`, "manifest.json");
        mkdirSync(path.dirname(stale), { recursive: true });
        writeFileSync(stale, JSON.stringify(m));
        process.env.PRT_MANIFEST = stale;
        expect(() => preparePlan(forwardPlan(problem)), name).toThrow(msg);
      }
    } finally {
      process.env.PRT_MANIFEST = prev;
    }
  });
});

// ---- without a GPU, in fresh processes (cudaAvailable() is decided once per process) --------------

const FAKE_SO = path.join(REPO_ROOT, "build", "test", "fake-libcuda-api.so");
function buildFake(): string | null {
  try {
    mkdirSync(path.dirname(FAKE_SO), { recursive: true });
    execFileSync("cc", ["-shared", "-fPIC", "-O1", "-o", FAKE_SO, path.join(REPO_ROOT, "test", "fixtures", "fake_libcuda.c")], { stdio: "pipe" });
    return null;
  } catch (e) {
    return `cannot compile the fake driver: ${(e as Error).message}`;
  }
}

/** Run a TypeScript snippet in a child process (tsx), with `env` added; it prints one JSON line last. */
function child(code: string, env: Record<string, string>): unknown {
  const file = path.join(TMP, `child-${Math.random().toString(36).slice(2)}.ts`);
  writeFileSync(file, code);
  const r = spawnSync(process.execPath, ["--import", "tsx", file], {
    cwd: REPO_ROOT,
    encoding: "utf8",
    env: { ...process.env, PRT_MANIFEST: MANIFEST, PRT_KERNEL_DIR: KDIR, ...env },
    timeout: 60_000,
  });
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}\n${r.stdout}`);
  const lines = r.stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]!);
}

const RUNTIME = JSON.stringify(path.join(REPO_ROOT, "runtime", "index.ts"));

/** A valid call (Q f32 [1, 20, 2, 16]) made without device memory, and a bad one: what each throws. */
const NO_GPU_SCRIPT = `
import { powerRetention, Tensor, cudaAvailable } from ${RUNTIME};
const meta = (shape, dtype = "f32") => ({ shape, dtype, device: 0, freed: false });
const err = (f) => { try { f(); return null; } catch (e) { return { name: e.name, message: e.message }; } };
console.log(JSON.stringify({
  available: cudaAvailable(),
  valid: err(() => powerRetention(meta([1, 20, 2, 16]), meta([1, 20, 1, 16]), meta([1, 20, 1, 16]), null, { chunk: 16 })),
  invalid: err(() => powerRetention(meta([1, 20, 2, 16]), meta([1, 20, 1, 16]), meta([1, 20, 1, 16]), null, { chunk: 12 })),
  upload: err(() => Tensor.upload([1, 2, 3], [3], "f16")),
}));
`;

interface NoGpuResult {
  available: { ok: boolean; reason?: string };
  valid: { name: string; message: string } | null;
  invalid: { name: string; message: string } | null;
  upload: { name: string; message: string } | null;
}

describe("without a GPU: a clear error, never a crash", () => {
  const fakeWhy = buildFake();
  if (fakeWhy) console.warn("fake-driver tests skipped: " + fakeWhy);

  function expectNoGpu(r: NoGpuResult, reason: RegExp): void {
    expect(r.available.ok).toBe(false);
    expect(r.available.reason).toMatch(reason);
    expect(r.valid?.name).toBe("GpuUnavailableError");
    expect(r.valid?.message).toBe(`powerRetention: no usable CUDA GPU: ${r.available.reason}`);
    expect(r.upload?.message).toBe(`Tensor.upload: no usable CUDA GPU: ${r.available.reason}`);
    // argument errors come first, GPU or not
    expect(r.invalid?.name).toBe("ArgumentError");
    expect(r.invalid?.message).toMatch(/opts.chunk: expected a power of two >= 16, received 12/);
  }

  it("without the native addon", () => {
    const r = child(NO_GPU_SCRIPT, { PRT_NATIVE_ADDON: path.join(TMP, "no-such-addon.node") }) as NoGpuResult;
    expectNoGpu(r, /the native addon is not built \(.*no-such-addon\.node is missing\); run `npm run build:native`/);
  }, 60_000);

  it("with the addon but no driver", () => {
    ensureNativeAddon();
    const r = child(NO_GPU_SCRIPT, { PRT_LIBCUDA: path.join(TMP, "no-such-libcuda.so.1") }) as NoGpuResult;
    expectNoGpu(r, /^no CUDA driver: .*no-such-libcuda\.so\.1 could not be loaded/);
  }, 60_000);

  it.skipIf(!!fakeWhy)("with a driver that has no device", () => {
    ensureNativeAddon();
    const r = child(NO_GPU_SCRIPT, { PRT_LIBCUDA: FAKE_SO, FAKE_CUDA_NO_DEVICE: "1" }) as NoGpuResult;
    expectNoGpu(r, /^no CUDA device: cuInit failed: CUDA_ERROR_NO_DEVICE/);
  }, 60_000);

  it.skipIf(!!fakeWhy)("on the fake driver: tensors round-trip, and a call gets as far as the missing fatbin, then the missing symbol", () => {
    ensureNativeAddon();
    const fakeFatbin = path.join(TMP, "fake-kernels", "p2_d16_e16_c16_f32.fatbin");
    const script = `
import { writeFileSync, mkdirSync } from "node:fs";
import path from "node:path";
import { powerRetention, Tensor } from ${RUNTIME};
import { loadNative } from ${JSON.stringify(path.join(REPO_ROOT, "runtime", "native.ts"))};
const err = (f) => { try { f(); return null; } catch (e) { return { name: e.name, message: e.message }; } };
const xs = [1, -2.5, 3.14159, 1e-6, 65519, 65000, -0.333333, 1 + 2 ** -11];
const trips = {};
for (const dt of ["f32", "f16", "bf16"]) {
  const t = Tensor.upload(xs, [2, 4], dt);
  trips[dt] = { values: Array.from(t.download()).map(String), bytes: t.bytes, shape: t.shape, dtype: t.dtype, device: t.device };
  t.free();
  trips[dt].freedDownload = err(() => t.download());
}
const empty = Tensor.empty([3], "bf16");
const zeros = Tensor.zeros([3], "f16");
const filled = { empty: Array.from(empty.download()).map(String), zeros: Array.from(zeros.download()) };
const freeBefore = loadNative().memInfo().free;
const Q = Tensor.upload(new Float32Array(1 * 20 * 2 * 16).fill(0.5), [1, 20, 2, 16]);
const K = Tensor.upload(new Float32Array(1 * 20 * 1 * 16).fill(0.5), [1, 20, 1, 16]);
const V = Tensor.upload(new Float32Array(1 * 20 * 1 * 16).fill(0.5), [1, 20, 1, 16]);
const missingFatbin = err(() => powerRetention(Q, K, V, null, { chunk: 16 }));
mkdirSync(path.dirname(${JSON.stringify(fakeFatbin)}), { recursive: true });
writeFileSync(${JSON.stringify(fakeFatbin)}, "FAKECUBIN\\n");
process.env.PRT_KERNEL_DIR = path.dirname(${JSON.stringify(fakeFatbin)});
const missingSymbol = err(() => powerRetention(Q, K, V, null, { chunk: 16 }));
const f16Q = Tensor.upload(new Float32Array(1 * 20 * 2 * 16), [1, 20, 2, 16], "f16");
const mixed = err(() => powerRetention(f16Q, K, V, null, { chunk: 16 }));
K.free();
const freedK = err(() => powerRetention(Q, K, V, null, { chunk: 16 }));
console.log(JSON.stringify({ trips, filled, missingFatbin, missingSymbol, mixed, freedK }));
`;
    const r = child(script, { PRT_LIBCUDA: FAKE_SO }) as Record<string, any>;
    for (const dt of ["f32", "f16", "bf16"] as const) {
      const t = r.trips[dt];
      expect(t.values).toEqual(Array.from(roundArray([1, -2.5, 3.14159, 1e-6, 65519, 65000, -0.333333, 1 + 2 ** -11], dt)).map(String));
      expect(t.bytes).toBe(8 * (dt === "f32" ? 4 : 2));
      expect(t).toMatchObject({ shape: [2, 4], dtype: dt, device: 0 });
      expect(t.freedDownload.message).toMatch(/Tensor\(.* \[2, 4\], freed\): use after free\(\)/);
    }
    expect(r.filled).toEqual({ empty: ["NaN", "NaN", "NaN"], zeros: [0, 0, 0] });
    expect(r.missingFatbin.name).toBe("MissingKernelError");
    expect(r.missingFatbin.message).toMatch(
      new RegExp(`the fatbin of kernel attention \\(prt_attention_p2_d16_e16_c16_f32_\\w+\\) is missing: ${path.join(KDIR, "p2_d16_e16_c16_f32.fatbin")} does not exist; compile it with \`npx retention build --out ${GEN} --build-dir ${KDIR}\``),
    );
    expect(r.missingSymbol.message).toMatch(/cuModuleGetFunction\(prt_attention_p2_d16_e16_c16_f32_\w+\) in .*fake-kernels\/p2_d16_e16_c16_f32\.fatbin failed: CUDA_ERROR_NOT_FOUND/);
    expect(r.mixed.message).toMatch(/powerRetention: K: expected dtype f16 \(the dtype of Q\), received f32/);
    expect(r.freedK.message).toMatch(/powerRetention: K: expected a live tensor, received one that was freed/);
  }, 60_000);
});

// ---- the whole GPU path on the interpreter-backed stand-in device (test/gpu/interp-device.ts) ------

describe("the GPU runtime path, end to end, on the interpreter stand-in device", () => {
  // The stand-in runs each launched kernel through the interpreter after checking block size,
  // shared memory (and its opt-in), argument kinds and grid; so the runtime's allocation, poisoning,
  // binding, argument order, conversions and read-back must reproduce dsl/execute-cpu.ts bit for bit.
  it("forward, backward and decode equal the CPU plans bit for bit, and free every buffer they allocate", () => {
    const at = (f: string): string => JSON.stringify(path.join(REPO_ROOT, f));
    const script = `
import { installInterpDevice } from ${at("test/gpu/interp-device.ts")};
import { powerRetention, powerRetentionBackward, Tensor, Decoder, releaseWorkspace } from ${at("runtime/index.ts")};
import { withManifestSchedules } from ${at("runtime/execute-gpu.ts")};
import { forwardPlan } from ${at("dsl/plan.ts")};
import { backwardPlan } from ${at("dsl/plan-backward.ts")};
import { executeOnCpu } from ${at("dsl/execute-cpu.ts")};
import { createDecodeState, decodeStepOnCpu } from ${at("dsl/plan-decode.ts")};
import { featureCount } from ${at("dsl/sympow.ts")};
const stats = installInterpDevice();
let seed = 12345;
const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
const r = (n, lo = -1, hi = 1) => Float32Array.from({ length: n }, () => lo + (hi - lo) * rand());
const same = (a, b) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
const results = {};
const made = [];
const up = (x, shape, dt) => { const t = Tensor.upload(x, shape, dt); made.push(t); return t; };
for (const [name, b, t, hq, h, dtype, gated, init, ret, noDState] of [
  ["f16 gqa gated init+state", 2, 37, 4, 2, "f16", true, true, true, false],
  ["f32 ungated short", 1, 11, 2, 1, "f32", false, false, false, false],
  ["f32 gated one chunk + state", 1, 16, 1, 1, "f32", true, false, true, false],
  // the state returned but no gradient for it: the backward still takes the forward's (chunked) path
  ["f32 gated one chunk + state, no state gradient", 1, 16, 1, 1, "f32", true, false, true, true],
]) {
  const d = 16, e = 16, D = featureCount(d, 2), chunk = 16;
  const x = { Q: r(b * t * hq * d), K: r(b * t * h * d), V: r(b * t * h * e), logG: gated ? r(b * t * h, -1, 0) : undefined };
  const S0 = r(b * h * D * e, 0, 0.1), Z0 = r(b * h * D, 0.5, 1);
  const Q = up(x.Q, [b, t, hq, d], dtype), K = up(x.K, [b, t, h, d], dtype), V = up(x.V, [b, t, h, e], dtype);
  const G = gated ? up(x.logG, [b, t, h], "f32") : null;
  const initialState = init ? { S: up(S0, [b, h, D, e], "f32"), Z: up(Z0, [b, h, D], "f32") } : undefined;
  const res = powerRetention(Q, K, V, G, { chunk, initialState, returnState: ret });
  made.push(res.Y);
  if (res.state) made.push(res.state.S, res.state.Z);
  const p = { b, t, hq, h, d, e, deg: 2, chunk, dtype, scale: 0.25, gated, initialState: init, finalState: ret };
  const inputs = { Q: x.Q, K: x.K, V: x.V, ...(gated ? { logG: x.logG } : {}), ...(init ? { S0, Z0 } : {}) };
  const cpu = executeOnCpu(forwardPlan(p, res.saved.schedules), inputs);
  const out = { Y: same(res.Y.download(), cpu.Y) };
  if (ret) Object.assign(out, { S: same(res.state.S.download(), cpu.Sfinal), Z: same(res.state.Z.download(), cpu.Zfinal) });
  const dYh = r(b * t * hq * e);
  const dY = up(dYh, [b, t, hq, e], dtype);
  const dS = r(b * h * D * e, -0.01, 0.01), dZ = r(b * h * D, -0.01, 0.01);
  const dState = ret && !noDState ? { S: up(dS, [b, h, D, e], "f32"), Z: up(dZ, [b, h, D], "f32") } : undefined;
  const g = powerRetentionBackward(res.saved, dY, dState ? { dState } : {});
  for (const k of ["dQ", "dK", "dV", "dlogG"]) if (g[k]) made.push(g[k]);
  if (g.dInitialState) made.push(g.dInitialState.S, g.dInitialState.Z);
  const { built } = withManifestSchedules((s) => backwardPlan(p, s), (v) => v, res.saved.schedules); // the forward's path
  const zero = (a) => a.map(() => 0);
  const cb = executeOnCpu(built, { ...inputs, ...cpu, dY: dYh, ...(ret ? { dSfinal: dState ? dS : zero(dS), dZfinal: dState ? dZ : zero(dZ) } : {}) });
  for (const k of ["dQ", "dK", "dV"]) out[k] = same(g[k].download(), cb[k]);
  out.dlogG = gated ? same(g.dlogG.download(), cb.dlogG) : g.dlogG === null;
  if (init) out.dS0 = same(g.dInitialState.S.download(), cb.dS0) && same(g.dInitialState.Z.download(), cb.dZ0);
  else out.noDS0 = g.dInitialState === undefined;
  res.saved.free();
  out.savedFreed = (() => { try { powerRetentionBackward(res.saved, dY); return "no error"; } catch (e) { return e.message; } })();
  results[name] = out;
}
// decode: f16 (the fold in f32), GQA, groups that cross folds
{
  const b = 1, hq = 2, h = 1, d = 16, e = 16, t = 45;
  const dec = new Decoder({ b, hq, h, d, chunk: 16, dtype: "f16", gated: true });
  const st = createDecodeState(dec.problem);
  let ok = true, lens = [];
  for (const n of [1, 1, 5, 16, 3, 1, 18]) {
    const q = r(b * n * hq * d), k = r(b * n * h * d), v = r(b * n * h * e), g = r(b * n * h, -1, 0);
    const y = dec.step(up(q, [b, n, hq, d], "f16"), up(k, [b, n, h, d], "f16"), up(v, [b, n, h, e], "f16"), up(g, [b, n, h], "f32"));
    made.push(y);
    const yc = decodeStepOnCpu(st, { q, k, v, logG: g }, dec.schedules);
    ok = ok && same(y.download(), yc);
    lens.push(dec.len);
  }
  const s = dec.download();
  results.decode = { y: ok, state: ["S", "Z", "Kc", "Vc", "Gc"].every((k) => same(s[k], st[k])), lens, len: s.len === st.len };
  // gates against the decoder's gated, both ways: an error naming logG, never a step that ignores them
  const err = (f) => { try { f(); return "no error"; } catch (e) { return \`\${e.name} \${e.argument}: \${e.message}\`; } };
  const x1 = [up(r(hq * d), [1, 1, hq, d], "f16"), up(r(h * d), [1, 1, h, d], "f16"), up(r(h * e), [1, 1, h, e], "f16")];
  const g1 = up(r(h, -1, 0), [1, 1, h], "f32");
  const plain = new Decoder({ b, hq, h, d, chunk: 16, dtype: "f16", gated: false });
  results.gates = { missing: err(() => dec.step(...x1, null)), given: err(() => plain.step(...x1, g1)), lens: [dec.len, plain.len] };
  plain.free();
  dec.free();
  results.decodeFreed = (() => { try { dec.step(made[0], made[1], made[2], null); return "no error"; } catch (e) { return e.message; } })();
}
// prefill with powerRetention (two whole chunks, so the cache starts empty), then decode from its state
{
  const b = 1, hq = 2, h = 1, d = 16, e = 16, t0 = 32, t = 40;
  const x = { Q: r(b * t * hq * d), K: r(b * t * h * d), V: r(b * t * h * e), logG: r(b * t * h, -1, 0) };
  const cut = (a, row, i0, i1) => a.slice(i0 * row, i1 * row);
  const pre = powerRetention(up(cut(x.Q, hq * d, 0, t0), [b, t0, hq, d], "f32"), up(cut(x.K, h * d, 0, t0), [b, t0, h, d], "f32"),
    up(cut(x.V, h * e, 0, t0), [b, t0, h, e], "f32"), up(cut(x.logG, h, 0, t0), [b, t0, h], "f32"), { chunk: 16, returnState: true });
  made.push(pre.Y, pre.state.S, pre.state.Z);
  pre.saved.free();
  const dec = new Decoder({ b, hq, h, d, chunk: 16, gated: true, initialState: pre.state });
  const y = dec.step(up(cut(x.Q, hq * d, t0, t), [b, t - t0, hq, d], "f32"), up(cut(x.K, h * d, t0, t), [b, t - t0, h, d], "f32"),
    up(cut(x.V, h * e, t0, t), [b, t - t0, h, e], "f32"), up(cut(x.logG, h, t0, t), [b, t - t0, h], "f32"));
  made.push(y);
  dec.free();
  const p = { b, t, hq, h, d, e, deg: 2, chunk: 16, dtype: "f32", scale: 0.25, gated: true, initialState: false, finalState: false };
  const whole = cut(executeOnCpu(forwardPlan(p), x).Y, hq * e, t0, t);
  const got = y.download();
  let num = 0, den = 0;
  for (let i = 0; i < got.length; i++) { num += (got[i] - whole[i]) ** 2; den += whole[i] ** 2; }
  results.prefill = Math.sqrt(num / den);
}
for (const t of made) t.free();
const held = stats.allocated;
releaseWorkspace();
results.workspace = held - stats.allocated; // the temporaries' shared buffer, kept between calls
results.leaked = stats.allocated;
results.launches = stats.launches;
results.kernels = [...stats.perKernel.keys()].sort();
console.log(JSON.stringify(results));
`;
    const r = child(script, {}) as Record<string, any>;
    if (process.env.PRT_DEBUG_CHILD) console.log(JSON.stringify(r));
    for (const name of ["f16 gqa gated init+state", "f32 ungated short", "f32 gated one chunk + state", "f32 gated one chunk + state, no state gradient"]) {
      const o = r[name];
      const { savedFreed, ...flags } = o;
      expect(flags, name).toEqual(Object.fromEntries(Object.keys(flags).map((k) => [k, true])));
      expect(savedFreed).toMatch(/powerRetentionBackward: saved.lse: expected a live tensor, received one that was freed/);
    }
    expect(r.decode).toEqual({ y: true, state: true, lens: [1, 2, 7, 7, 10, 11, 13], len: true });
    expect(r.gates.missing).toBe("ArgumentError logG: Decoder.step: logG: expected a [b, tn, h] f32 tensor (the decoder is gated), received null");
    expect(r.gates.given).toBe("ArgumentError logG: Decoder.step: logG: expected null (the decoder was created with gated: false), received a tensor");
    expect(r.gates.lens).toEqual([13, 0]); // neither refused call moved a decoder
    expect(r.decodeFreed).toMatch(/Decoder.step: decoder: expected a live decoder, received one that was freed/);
    expect(r.prefill).toBeLessThan(1e-5); // decode after a prefill = the whole sequence's forward (f32)
    expect(r.leaked).toBe(0);
    expect(r.workspace).toBe(1); // one shared buffer for every call's temporaries
    expect(r.kernels).toEqual([
      "attention", "attention_bwd_dkv", "attention_bwd_dkv_y", "attention_bwd_dq", "attention_bwd_dq_y", "attention_bwd_prep",
      "attention_bwd_prep_y", "attention_y", "cache_append", "combine_grads", "decode", "discounted_cumsum", "discounted_cumsum_bwd",
      "gate_grads_y", "query_state", "query_state_bwd_dq", "query_state_bwd_ds", "state_copy", "update_state", "update_state_bwd",
    ]);
  }, 120_000);
});

describe("archFor: the code a GPU runs from a fatbin", () => {
  it("takes sm_90a on Hopper when built, else sm_80 (its PTX on GPUs newer than 8.x), else nothing", () => {
    expect(archFor(90, ["sm_80", "sm_90a"])).toBe("sm_90a");
    expect(archFor(90, ["sm_80"])).toBe("sm_80"); // compute_80 PTX, compiled by the driver at load
    expect(archFor(86, ["sm_80", "sm_90a"])).toBe("sm_80");
    expect(archFor(100, ["sm_80", "sm_90a"])).toBe("sm_80"); // sm_90a code runs on 9.x only
    expect(archFor(90, ["sm_90a"])).toBe("sm_90a");
    expect(archFor(86, ["sm_90a"])).toBeNull();
    expect(archFor(75, ["sm_80", "sm_90a"])).toBeNull();
  });
});
