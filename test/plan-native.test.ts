// The native plan interpreter (runtime/native/plans.cc, through libprt.so and the Python package's
// ctypes layer) on the fake driver: for many sizes and every flag combination, the launches it
// makes (kernel, grid, block, shared memory, stream, every argument: buffer pointers and typed
// params) and the buffers it zeroes are those of the TS plans (dsl/plan*.ts) built directly.

import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../codegen/gen.ts";
import { MANIFEST_FILE, parseManifest, type ManifestKernel } from "../codegen/manifest.ts";
import { homeStep, kernelSymbol, planSchedules } from "../codegen/plan-data.ts";
import { DEFAULT_SCHEDULES_FILE, DEFAULT_SELECTION, loadSchedules, scheduleForTable } from "../codegen/gen.ts";
import { backwardPlan } from "../dsl/plan-backward.ts";
import { decodePlan } from "../dsl/plan-decode.ts";
import { forwardPlan, type Problem } from "../dsl/plan.ts";
import { offsetsOf, varlenBackwardPlan, varlenForwardPlan, varlenLayout, type VarlenProblem } from "../dsl/plan-varlen.ts";
import { dtypeBytes } from "../dsl/dtype.ts";
import { stepKernel, type Plan, type PlanStep } from "../dsl/plan-types.ts";
import { specKey, type Spec } from "../dsl/spec.ts";
import { evalGrid } from "../runtime/execute-gpu.ts";
import { libprtPath, ensureLibprt } from "./helpers/libprt.ts";

const MANIFEST = path.join(REPO_ROOT, "generated", MANIFEST_FILE);
const tmp = mkdtempSync(path.join(tmpdir(), "prt-plan-native-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function setup(): string | undefined {
  if (spawnSync("python3", ["--version"]).status !== 0) return "python3 is not on PATH";
  try {
    ensureLibprt();
    execFileSync("cc", ["-shared", "-fPIC", "-O1", "-o", path.join(tmp, "fake-libcuda.so"), path.join(REPO_ROOT, "test", "fixtures", "fake_libcuda.c")], { stdio: "pipe" });
  } catch (e) {
    return `cannot build libprt.so or the fake driver: ${(e as Error).message}`;
  }
  return undefined;
}

const skip = setup();
if (skip) console.warn("native plan tests skipped: " + skip);

interface CaseResult {
  buffers: { name: string; role: number; bytes: number; ptr: number }[];
  workspace: number;
  steps: string[];
}
interface Case {
  kind: "forward" | "backward" | "decode" | "forward_varlen" | "backward_varlen";
  spec: Spec;
  problem: { b: number; t: number; hq: number; h: number; scale: number; gated: number; initial_state: number; final_state: number; len0: number; ns?: number; nc?: number };
  outputsInWorkspace?: boolean;
}

/** Run the cases through the native interpreter on the fake driver; returns each case's buffers and launch log. */
function runNative(cases: readonly Case[]): { result: CaseResult; log: Record<string, unknown>[] }[] {
  const kdir = path.join(tmp, "kernels");
  mkdirSync(kdir, { recursive: true });
  const m = parseManifest(readFileSync(MANIFEST, "utf8"), MANIFEST);
  for (const f of m.files) writeFileSync(path.join(kdir, f.fatbin), "FAKECUBIN\n");
  const job = {
    manifest: MANIFEST,
    kernelDir: kdir,
    cases: cases.map((c, i) => ({
      kind: c.kind, spec: [c.spec.deg, c.spec.d, c.spec.e, c.spec.chunk, c.spec.dtype], problem: c.problem, log: path.join(tmp, `log-${i}.jsonl`),
      outputsInWorkspace: !!c.outputsInWorkspace,
    })),
  };
  for (const c of job.cases) rmSync(c.log, { force: true });
  const r = spawnSync("python3", [path.join(REPO_ROOT, "runtime", "python", "tests", "run_plan_fake.py")], {
    input: JSON.stringify(job),
    encoding: "utf8",
    env: { ...process.env, PRT_LIB: libprtPath(), PRT_LIBCUDA: path.join(tmp, "fake-libcuda.so") },
    maxBuffer: 64 << 20,
  });
  if (r.status !== 0) throw new Error(`run_plan_fake.py failed (${r.status}):\n${r.stderr}`);
  const results = JSON.parse(r.stdout) as CaseResult[];
  return results.map((result, i) => ({
    result,
    log: existsSync(job.cases[i]!.log) ? readFileSync(job.cases[i]!.log, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) : [],
  }));
}

const f32bits = (x: number): number => new Uint32Array(new Float32Array([x]).buffer)[0]!;

/** What the fake driver must have seen for the TS plan: the memsets of its zeroed buffers, then each
 * launch (chunk-free kernels from the smallest chunk of the default set, where gen puts them). */
function expectedLog(plan: Plan, kernels: ReadonlyMap<string, ManifestKernel>, ptrOf: (name: string) => number, home: (s: PlanStep) => PlanStep = (s) => s): Record<string, unknown>[] {
  const hex = (v: number | bigint): string => "0x" + v.toString(16);
  const out: Record<string, unknown>[] = [];
  for (const b of plan.buffers)
    if (b.init === "zeros") {
      const bytes = b.shape.reduce((a, x) => a * x, 1) * dtypeBytes(b.dtype);
      if (bytes) out.push({ memset: hex(ptrOf(b.name)), value: 0, words: Math.ceil(bytes / 4), stream: "0x5000" });
    }
  for (const s of plan.steps.map(home)) {
    const grid = evalGrid(stepKernel(s), s.params);
    if (grid[0] * grid[1] * grid[2] === 0) continue;
    const sym = kernelSymbol(s.kernel.name, s.spec, s.schedule);
    const k = kernels.get(sym);
    if (!k) throw new Error(`${sym} is not in the manifest`);
    const args = k.args.map((a) => {
      if (a.kind === "tensor") return hex(ptrOf(s.bind[a.name]!));
      const v = s.params[a.name]!;
      return hex(a.type === "f32" ? f32bits(v) : v >>> 0);
    });
    out.push({ fn: sym, grid, block: [k.threads, 1, 1], smem: k.smemBytes, stream: "0x5000", args });
  }
  return out;
}

describe.skipIf(!!skip)("native plan interpreter on the fake driver", () => {
  const m = parseManifest(readFileSync(MANIFEST, "utf8"), MANIFEST);
  const kernels = new Map(m.kernels.map((k) => [k.symbol, k]));
  const tuned = scheduleForTable(loadSchedules(DEFAULT_SCHEDULES_FILE));

  it("launches what the TS plans launch: forward, backward, decode, packed sequences, every flag combination, several sizes", () => {
    const cases: (Case & { plan: Plan })[] = [];
    for (const key of ["p2_d64_e64_c128_bf16", "p2_d32_e32_c64_f32"]) {
      const spec = m.kernels.find((k) => k.specKey === key)!.spec;
      const sched = planSchedules(spec, tuned);
      const c = spec.chunk;
      for (const size of [{ b: 1, t: 5, hq: 2, h: 1 }, { b: 2, t: 3 * c + 7, hq: 4, h: 2 }, { b: 1, t: c, hq: 1, h: 1 }])
        for (let mask = 0; mask < 8; mask++) {
          const flags = { gated: mask & 1, initial_state: (mask >> 1) & 1, final_state: (mask >> 2) & 1 };
          const p: Problem = { ...size, d: spec.d, e: spec.e, deg: spec.deg, chunk: c, dtype: spec.dtype, scale: 0.3, gated: !!flags.gated, initialState: !!flags.initial_state, finalState: !!flags.final_state };
          const problem = { ...size, scale: 0.3, ...flags, len0: 0 };
          cases.push({ kind: "forward", spec, problem, plan: forwardPlan(p, sched), outputsInWorkspace: mask === 5 });
          cases.push({ kind: "backward", spec, problem, plan: backwardPlan(p, sched) });
        }
      // packed sequences: boundaries on and off chunk edges, an empty and a one-token sequence
      for (const lengths of [[5], [c, 0, 2 * c + 3, 1], [c - 1, c + 1]])
        for (let mask = 0; mask < 8; mask++) {
          const flags = { gated: mask & 1, initial_state: (mask >> 1) & 1, final_state: (mask >> 2) & 1 };
          const cu = offsetsOf(lengths), t = cu[cu.length - 1]!, lay = varlenLayout(cu, c);
          const p: VarlenProblem = { b: 1, t, hq: 4, h: 2, d: spec.d, e: spec.e, deg: spec.deg, chunk: c, dtype: spec.dtype, scale: 0.3, gated: !!flags.gated, initialState: !!flags.initial_state, finalState: !!flags.final_state, cuSeqlens: cu };
          const problem = { b: 1, t, hq: 4, h: 2, scale: 0.3, ...flags, len0: 0, ns: lay.ns, nc: lay.nc };
          cases.push({ kind: "forward_varlen", spec, problem, plan: varlenForwardPlan(p, sched) });
          cases.push({ kind: "backward_varlen", spec, problem, plan: varlenBackwardPlan(p, sched) });
        }
      for (const [len0, tn] of [[0, 1], [c - 1, 1], [3, 2 * c + 5], [5, c - 5]] as const)
        for (const gated of [0, 1]) {
          const dp = { b: 2, hq: 4, h: 2, d: spec.d, e: spec.e, deg: spec.deg, chunk: c, dtype: spec.dtype, scale: 0.25, gated: !!gated };
          const problem = { b: 2, t: tn, hq: 4, h: 2, scale: 0.25, gated, initial_state: 0, final_state: 0, len0 };
          cases.push({ kind: "decode", spec, problem, plan: decodePlan(dp, len0, tn, sched).plan });
        }
    }
    const runs = runNative(cases);
    runs.forEach(({ result, log }, i) => {
      const c = cases[i]!;
      const label = `${c.kind} ${specKey(c.spec)} ${JSON.stringify(c.problem)}`;
      expect(result.buffers.map((b) => b.name), label).toEqual(c.plan.buffers.map((b) => b.name));
      const ptr = new Map(result.buffers.map((b) => [b.name, b.ptr]));
      expect(log, label).toEqual(expectedLog(c.plan, kernels, (n) => ptr.get(n)!, (st) => homeStep(st, Math.min(...DEFAULT_SELECTION.chunks), tuned)));
      // inputs are the caller's; temporaries (and outputs left to it) lie inside the workspace, 256-aligned, apart
      const ws = result.buffers.filter((b) => b.role === 2 || (b.role === 1 && c.outputsInWorkspace)).sort((a, b) => a.ptr - b.ptr);
      ws.forEach((b, j) => {
        expect((b.ptr - result.workspace) % 256).toBe(0);
        if (j + 1 < ws.length) expect(b.ptr + b.bytes).toBeLessThanOrEqual(ws[j + 1]!.ptr);
      });
    });
    expect(runs.length).toBeGreaterThan(100);
  }, 300_000);

  it("takes a one-window problem at a chunk no manifest has (the quadratic path) through the one-window variant of the smallest built chunk, whose kernels are chunk-free", () => {
    const built = m.kernels.find((k) => k.specKey === "p2_d64_e64_c64_bf16")!.spec;
    const sched = planSchedules(built, tuned);
    const cases: (Case & { plan: Plan })[] = [];
    for (const gated of [0, 1])
      for (const t of [700, 1024]) {
        const spec = { ...built, chunk: 1024 };
        const p: Problem = { b: 2, t, hq: 4, h: 2, d: 64, e: 64, deg: 2, chunk: 1024, dtype: "bf16", scale: 0.3, gated: !!gated, initialState: false };
        // the TS plan at chunk 1024, its kernels resolved to the built chunk and its schedules (what runtime/kernels.ts does)
        const problem = { b: 2, t, hq: 4, h: 2, scale: 0.3, gated, initial_state: 0, final_state: 0, len0: 0 };
        for (const kind of ["forward", "backward"] as const) {
          const plan = (kind === "forward" ? forwardPlan : backwardPlan)(p, sched);
          const resolved = { ...plan, steps: plan.steps.map((s) => homeStep(s, built.chunk, tuned)) };
          expect(plan.steps.map((s) => s.kernel.name)).toEqual(kind === "forward" ? ["attention_y"] : ["attention_bwd_prep_y", "attention_bwd_dq_y", "attention_bwd_dkv_y", "gate_grads_y"]);
          cases.push({ kind, spec, problem, plan: resolved });
        }
      }
    runNative(cases).forEach(({ result, log }, i) => {
      const c = cases[i]!;
      const ptr = new Map(result.buffers.map((b) => [b.name, b.ptr]));
      expect(result.buffers.map((b) => b.name)).toEqual(c.plan.buffers.map((b) => b.name));
      expect(log).toEqual(expectedLog(c.plan, kernels, (n) => ptr.get(n)!));
    });
  }, 120_000);
});
