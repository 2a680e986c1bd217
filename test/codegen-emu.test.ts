// Generated CUDA == interpreter, on the CPU: every kernel of a spec is generated, compiled with g++
// against an emulation of the device primitives (test/codegen-emu/prt_tile.cuh: fibers for
// threads, warp rendezvous for shuffles, ldmatrix and mma.sync, deferred cp.async), run over its
// whole grid on random inputs, and compared with the interpreter on the same inputs. Threads run
// one at a time between rendezvous, in order and reversed, so a missing barrier changes the result.
// This checks the lowering (tilings, fragment layouts, pipelining, barriers, bounds) without a GPU;
// the GPU tests check the hardware.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DEFAULT_SCHEDULES_FILE, generate, loadSchedules, scheduleForTable, type Selection } from "../codegen/gen.ts";
import type { ManifestKernel } from "../codegen/manifest.ts";
import { roundArray, type DType } from "../dsl/dtype.ts";
import type { Kernel } from "../dsl/ir.ts";
import { interpret, tensorDims } from "../dsl/interpret.ts";
import { KERNELS } from "../dsl/kernels/index.ts";
import { varlenLayout } from "../dsl/plan-varlen.ts";
import { scheduleKey, specKey, type KernelDef, type Schedule, type Spec } from "../dsl/spec.ts";
import { buildEmulator, evalUniform, runEmulated } from "./codegen-emu/harness.ts";
import type { Target } from "../codegen/lir.ts";

/** Sizes of the launch: t = 70 spans two chunks of 64 with a ragged tail; hq = 2 h (grouped queries).
 * The varlen kernels see the 70 rows as 3 packed sequences of 37, 0 and 33 tokens (TABLES): 2 chunk
 * slots (nc), rows of w = 80 elements (two column blocks, the second ragged). */
const PARAMS_ = { b: 1, t: 70, h: 1, hq: 2, n: 2, scale: 0.35, tq: 3, q0: 0, tn: 3, len: 40, len0: 37, nfb: 2, window: 64, ns: 3, nc: 2, rows: 70, w: 80 };
const TABLES: Readonly<Record<string, readonly number[]>> = (() => {
  const lay = varlenLayout([0, 37, 37, 70], 64);
  if (lay.nc !== PARAMS_.nc || lay.ns !== PARAMS_.ns) throw new Error("TABLES: the layout does not match PARAMS");
  return { chunkSrc: lay.chunkSrc, chunkLen: lay.chunkLen, seqChunk: lay.seqChunk };
})();

/** Per-kernel params: the quadratic path's kernels (`_y`) have one window over the whole sequence. */
const paramsFor = (name: string, p: typeof PARAMS_): typeof PARAMS_ => (name.endsWith("_y") ? { ...p, window: 1 << 20 } : { ...p, window: p.window });

const PARAMS = PARAMS_;

/** Kernels that also run with hq = h: their loads for a group of one query head are hoisted out of a loop (query_state_bwd_ds). */
const ONE_QUERY_HEAD = ["query_state_bwd_ds"];

/** Relative RMS error allowed between the emulated CUDA and the interpreter, from the rounding
 * model: both round at the same points and differ only in the order of f32 sums, which moves an f32
 * result by about n 2^-24 (n up to a chunk, 128, of terms: 2^-17 = 7.6e-6, twice that allowed) and
 * can flip the following rounding to the dtype by one unit of its spacing (2^-7 relative for bf16,
 * 2^-10 for f16: every element flipped at worst). Observed worst (2026-12-03, the whole suite):
 * bf16 5.8e-3, f16 7.9e-4, f32 5.5e-6 (printed at the end of each run). */
const TOLERANCE: Record<DType, number> = { f32: 2 ** -16, f16: 2 ** -10, bf16: 2 ** -7 };

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let r = Math.imul(s ^ (s >>> 15), s | 1);
    r ^= r + Math.imul(r ^ (r >>> 7), r | 61);
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
  };
}

const specs: DType[] = ["f16", "bf16", "f32"];
/** The worst relative RMS error seen per dtype and d, printed at the end (against TOLERANCE). */
const observed = new Map<string, { rel: number; where: string }>();
afterAll(() => {
  const rows = [...observed].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k.padEnd(9)} ${v.rel.toExponential(2)}  (tolerance ${TOLERANCE[k.split(" ")[0] as DType].toExponential(1)})  ${v.where}`);
  console.log(["emulated CUDA vs interpreter, worst relative RMS error:", ...rows].join("\n"));
});
const tmp = mkdtempSync(path.join(tmpdir(), "retention-emu-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe.each(specs)("generated CUDA == interpreter, d 32, chunk 64, %s", (dtype) => emulatedAgainstInterpreter({ deg: 2, d: 32, e: 32, chunk: 64, dtype }, null, PARAMS));

// The main spec's tilings have several units per warp, so the mma groups share fragments across
// slots (render-mma.ts: B once per k-step when the warps divide a row block's units).
const MAIN_SPEC = { deg: 2, d: 64, e: 64, chunk: 128, dtype: "bf16" } as const;
const STATE_KERNELS = ["update_state", "query_state", "query_state_bwd_dq", "query_state_bwd_ds", "update_state_bwd"];
describe("generated CUDA == interpreter, d 64, chunk 128, bf16 (the kernels with mma groups)", () =>
  emulatedAgainstInterpreter(MAIN_SPEC, STATE_KERNELS, { ...PARAMS, t: 140, n: 2, window: 128 }));

// The attention kernels at the main spec: several key blocks per window (t = 300 over blocks of 128),
// forward and backward.
const ATTENTION_KERNELS = ["attention", "attention_y", "attention_bwd_prep", "attention_bwd_dq", "attention_bwd_dkv", "attention_bwd_prep_y", "attention_bwd_dq_y", "attention_bwd_dkv_y", "gate_grads_y"];
describe("generated CUDA == interpreter, d 64, chunk 128, bf16, attention", () =>
  emulatedAgainstInterpreter(MAIN_SPEC, ATTENTION_KERNELS, { ...PARAMS, t: 300, n: 3, window: 128 }));
// ... and under the schedules the default set ships with (codegen/schedules.json, the H200 sweep)
// where they differ from the defaults (other warps and feature blocks, so other tilings)
const TUNED = loadSchedules(DEFAULT_SCHEDULES_FILE);
const retuned = STATE_KERNELS.filter((name) => {
  const t = TUNED.get(`${name}/${specKey(MAIN_SPEC)}`);
  return t !== undefined && scheduleKey(t) !== scheduleKey(KERNELS.find((k) => k.name === name)!.schedule(MAIN_SPEC));
});
describe.skipIf(retuned.length === 0)("generated CUDA == interpreter, d 64, chunk 128, bf16, tuned schedules", () =>
  emulatedAgainstInterpreter(MAIN_SPEC, retuned, { ...PARAMS, t: 140, n: 2 }, scheduleForTable(TUNED)));

// ... and update_state_bwd over 16 warps (in its sweep: one slot per warp, no B sharing)
describe("generated CUDA == interpreter, d 64, chunk 128, bf16, update_state_bwd over 16 warps", () =>
  emulatedAgainstInterpreter(MAIN_SPEC, ["update_state_bwd"], { ...PARAMS, t: 140, n: 2 }, (k, s) =>
    k.name === "update_state_bwd" ? { numWarps: 16, blockD: 0, blockT: s.chunk, stages: 2 } : k.schedule(s)));

// ... with non-finite values of V on and off the diagonal blocks: the forward's diagonal block votes
// and takes its masked path (dsl/kernels/attention.ts), whose NaN columns must be the interpreter's
const NON_FINITE_V: readonly [number, number][] = [[150, 5], [131, 9], [20, 7], [299, 63]]; // (token, column), h = 1
describe("generated CUDA == interpreter, d 64, chunk 128, bf16, attention with non-finite V", () =>
  emulatedAgainstInterpreter(MAIN_SPEC, ["attention", "attention_y"], { ...PARAMS, t: 300, n: 3, window: 128 }, undefined, (inputs) => {
    const v = inputs["V"]!;
    NON_FINITE_V.forEach(([t, c], i) => (v[t * MAIN_SPEC.e + c] = [Infinity, -Infinity, NaN, Infinity][i]!));
  }));

// ... and the backward's with non-finite K and Q: a diagonal block votes and zeroes them in place
// before the mma that multiplies the masked ds by them (dsl/kernels/attention-bwd.ts)
describe("generated CUDA == interpreter, d 64, chunk 128, bf16, attention backward with non-finite K and Q", () =>
  emulatedAgainstInterpreter(MAIN_SPEC, ["attention_bwd_dq", "attention_bwd_dkv", "attention_bwd_dq_y", "attention_bwd_dkv_y"],
    { ...PARAMS, t: 300, n: 3, window: 128 }, undefined, (inputs) => {
      NON_FINITE_V.forEach(([t, c], i) => {
        inputs["K"]![t * MAIN_SPEC.d + c] = [Infinity, NaN, -Infinity, Infinity][i]!; // h = 1
        inputs["Q"]![(t * 2 + 1) * MAIN_SPEC.d + ((c + 3) % MAIN_SPEC.d)] = [NaN, Infinity, Infinity, -Infinity][i]!; // hq = 2: head 1
      });
    }));

function emulatedAgainstInterpreter(
  spec: { deg: number; d: number; e: number; chunk: number; dtype: DType }, only: readonly string[] | null, PARAMS: typeof PARAMS_,
  scheduleFor?: (k: KernelDef, s: Spec) => Schedule, poke?: (inputs: Record<string, Float32Array>) => void,
): void {
  const { dtype } = spec;
  const selection: Selection = { degs: [spec.deg], ds: [spec.d], es: null, chunks: [spec.chunk], dtypes: [dtype], archs: ["sm_80", "sm_90a"], kernels: only };
  const g = generate({ selection, scheduleFor });
  const dir = mkdtempSync(path.join(tmp, `${dtype}-`));
  const bins = new Map<Target, string>();
  const emulator = (target: Target): string => bins.get(target) ?? (bins.set(target, buildEmulator(g, dir, target)), bins.get(target)!);
  const source = g.files.get(g.manifest.files[0]!.source)!;

  // the sm_90a body where it differs from sm_80's (render-cuda.ts: one function, an #if per target)
  const targetsOf = (symbol: string): Target[] =>
    new RegExp(`${symbol}\\([^{]*\\{\\n#if defined\\(__CUDA_ARCH_FEAT_SM90_ALL\\)`).test(source) ? ["sm_80", "sm_90a"] : ["sm_80"];
  it.each(g.manifest.kernels.map((mk, i) => [mk.name, targetsOf(mk.symbol).join(", "), i] as const))("%s (%s)", (name, _targets, index) => {
    const def = KERNELS.find((x) => x.name === name)!;
    const mk = g.manifest.kernels[index]!;
    const kernel = def.build(spec, mk.schedule);
    const base = paramsFor(name, PARAMS);
    for (const target of targetsOf(mk.symbol))
      for (const params of ONE_QUERY_HEAD.includes(name) ? [base, { ...base, hq: base.h }] : [base]) check(kernel, mk, index, params, target);
  }, 600_000);

  /** The kernel's outputs from the emulated CUDA against the interpreter's, for one launch. */
  function check(kernel: Kernel, mk: ManifestKernel, index: number, params: typeof PARAMS, target: Target): void {
    const name = kernel.name;
    const dims = tensorDims(kernel, params);
    const rand = rng(1234 + index);
    const inputs: Record<string, Float32Array> = {};
    for (const t of kernel.tensors) {
      const n = dims.get(t.name)!.reduce((a, b) => a * b, 1);
      const gate = /^(logG|Gc)$/.test(t.name);
      inputs[t.name] =
        t.dtype === "i32"
          ? roundArray(TABLES[t.name]!, "i32")
          : t.role === "in"
          ? roundArray(Array.from({ length: n }, () => (gate ? -rand() : 2 * rand() - 1)), t.dtype)
          : new Float32Array(n).fill(NaN);
    }
    poke?.(inputs);
    const want = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, v.slice()]));
    interpret(kernel, { tensors: want, params });
    const grid = kernel.grid.map((e) => evalUniform(e, params)) as [number, number, number];
    for (const reverse of [false, true]) {
      const got = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, v.slice()]));
      runEmulated(emulator(target), dir, index, mk, grid, got, params, reverse);
      for (const t of kernel.tensors.filter((x) => x.role === "out")) {
        const a = got[t.name]!, b = want[t.name]!;
        let num = 0, den = 0, maxAbs = 0, nanMismatch = 0, compared = 0;
        for (let i = 0; i < a.length; i++) {
          if (Number.isNaN(a[i]!) || Number.isNaN(b[i]!)) {
            if (Number.isNaN(a[i]!) !== Number.isNaN(b[i]!)) nanMismatch++;
            continue;
          }
          compared++;
          if (a[i] === b[i]) continue; // equal infinities too
          const d = a[i]! - b[i]!;
          num += d * d;
          den += b[i]! * b[i]!;
          maxAbs = Math.max(maxAbs, Math.abs(d));
        }
        const rel = Math.sqrt(num / Math.max(den, 1e-30));
        const what = `${name} ${t.name} ${target} hq=${params.hq} (${reverse ? "threads reversed" : "threads in order"}): rel RMS ${rel.toExponential(2)}, max abs ${maxAbs.toExponential(2)}, NaN mismatches ${nanMismatch}`;
        expect(nanMismatch, what).toBe(0);
        // outputs start as NaN: a kernel that wrote nothing would compare nothing and pass
        expect(compared, `${what}: elements compared`).toBeGreaterThan(0);
        const key = `${dtype} ${spec.d === 32 ? "d32" : "d64"}`;
        if (!(rel <= (observed.get(key)?.rel ?? -1))) observed.set(key, { rel, where: `${name} ${t.name} ${target}` });
        expect(rel, what).toBeLessThanOrEqual(TOLERANCE[dtype]);
      }
    }
  }
}
