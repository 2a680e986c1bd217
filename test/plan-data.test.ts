// The plans as data (codegen/plan-data.ts, what the native core and Python run) against the TS
// plans they were traced from: instantiated at many sizes and every flag combination, the data
// gives the same buffers, launches (symbol, grid, params, bindings) and outputs as dsl/plan*.ts
// built directly. Checked on the committed generated/manifest.json (what runtimes read) and on
// specs outside the default set (deg 4, e != d).

import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { DEFAULT_SCHEDULES_FILE, DEFAULT_SELECTION, loadSchedules, REPO_ROOT, scheduleForTable } from "../codegen/gen.ts";
import { MANIFEST_FILE, parseManifest, type ManifestPlan } from "../codegen/manifest.ts";
import { homeStep, instantiatePlan, kernelSymbol, planData, planSchedules, type ConcretePlan } from "../codegen/plan-data.ts";
import { backwardPlan } from "../dsl/plan-backward.ts";
import { decodePlan } from "../dsl/plan-decode.ts";
import { forwardPlan, type Problem, type ScheduleTable } from "../dsl/plan.ts";
import { offsetsOf, varlenBackwardPlan, varlenForwardPlan, varlenLayout } from "../dsl/plan-varlen.ts";
import { stepKernel, type Plan, type PlanStep } from "../dsl/plan-types.ts";
import { checkSpec, specKey, type Spec } from "../dsl/spec.ts";
import { evalGrid } from "../runtime/execute-gpu.ts";

type Home = (s: PlanStep) => PlanStep;

/** A TS plan in the concrete form instantiatePlan gives, its steps where gen put their kernels (`home`). */
function concrete(plan: Plan, home: Home = (s) => s): ConcretePlan {
  return {
    buffers: plan.buffers.map((b) => ({ name: b.name, dtype: b.dtype, shape: [...b.shape], init: b.init })),
    steps: plan.steps.map(home).map((s) => ({
      kernel: s.kernel.name,
      symbol: kernelSymbol(s.kernel.name, s.spec, s.schedule),
      grid: evalGrid(stepKernel(s), s.params),
      params: s.params,
      bind: s.bind,
    })),
    outputs: plan.outputs,
  };
}

const FLAGS = [0, 1, 2, 3, 4, 5, 6, 7].map((m) => ({ gated: m & 1, initialState: (m >> 1) & 1, finalState: (m >> 2) & 1 }));

function sizesFor(c: number): { b: number; t: number; hq: number; h: number; scale: number }[] {
  return [
    { b: 1, t: 1, hq: 1, h: 1, scale: 0.125 },
    { b: 2, t: c - 1, hq: 4, h: 2, scale: 0.5 },
    { b: 1, t: c, hq: 3, h: 1, scale: 1 },
    { b: 3, t: c + 1, hq: 2, h: 2, scale: 0.25 },
    { b: 2, t: 3 * c + 7, hq: 8, h: 4, scale: 0.3 },
    { b: 1, t: 5 * c, hq: 6, h: 2, scale: 2 },
  ];
}

/** Check every plan of one spec's data against the TS builders. */
function checkSpecPlans(spec: Spec, plans: readonly ManifestPlan[], sched: ScheduleTable, home: Home = (s) => s): number {
  const of = (kind: string): ManifestPlan => {
    const p = plans.find((x) => x.kind === kind && x.spec === specKey(spec));
    if (!p) throw new Error(`no ${kind} plan for ${specKey(spec)}`);
    return p;
  };
  let checked = 0;
  for (const s of sizesFor(spec.chunk))
    for (const f of FLAGS) {
      const p: Problem = { ...s, d: spec.d, e: spec.e, deg: spec.deg, chunk: spec.chunk, dtype: spec.dtype, gated: !!f.gated, initialState: !!f.initialState, finalState: !!f.finalState };
      const sizes = { vars: s, flags: f };
      expect(instantiatePlan(of("forward"), spec.chunk, sizes), `forward ${JSON.stringify(sizes)}`).toEqual(concrete(forwardPlan(p, sched), home));
      expect(instantiatePlan(of("backward"), spec.chunk, sizes), `backward ${JSON.stringify(sizes)}`).toEqual(concrete(backwardPlan(p, sched), home));
      checked += 2;
    }
  // packed sequences: lengths on and off chunk edges, empty and one-token sequences
  const c = spec.chunk;
  for (const lengths of [[1], [c], [3, 0, c + 1], [c - 1, 1, 2 * c, 0], [5 * c + 3, 7, c]])
    for (const f of FLAGS) {
      const cu = offsetsOf(lengths);
      const s = { hq: 4, h: 2, scale: 0.4 };
      const p = { ...s, b: 1, t: cu[cu.length - 1]!, d: spec.d, e: spec.e, deg: spec.deg, chunk: c, dtype: spec.dtype, gated: !!f.gated, initialState: !!f.initialState, finalState: !!f.finalState, cuSeqlens: cu };
      const lay = varlenLayout(cu, c);
      const sizes = { vars: { ...s, t: p.t, ns: lay.ns, nc: lay.nc }, flags: f };
      expect(instantiatePlan(of("forward_varlen"), c, sizes), `forward_varlen ${JSON.stringify(lengths)} ${JSON.stringify(f)}`).toEqual(concrete(varlenForwardPlan(p, sched), home));
      expect(instantiatePlan(of("backward_varlen"), c, sizes), `backward_varlen ${JSON.stringify(lengths)} ${JSON.stringify(f)}`).toEqual(concrete(varlenBackwardPlan(p, sched), home));
      checked += 2;
    }
  for (const gated of [0, 1])
    for (const len0 of [0, 1, c / 2, c - 1])
      for (const tn of [1, 2, c - 1, c, 2 * c + 3]) {
        const s = { b: 2, hq: 4, h: 2, scale: 0.4 };
        const dp = { ...s, d: spec.d, e: spec.e, deg: spec.deg, chunk: c, dtype: spec.dtype, gated: !!gated };
        const sizes = { vars: { ...s, tn, len0 }, flags: { gated } };
        expect(instantiatePlan(of("decode"), c, sizes), `decode ${JSON.stringify(sizes)}`).toEqual(concrete(decodePlan(dp, len0, tn, sched).plan, home));
        checked++;
      }
  return checked;
}

describe("plans as data", () => {
  it("the committed manifest's plans equal the TS plans at many sizes and every flag combination", () => {
    const m = parseManifest(readFileSync(path.join(REPO_ROOT, "generated", MANIFEST_FILE), "utf8"), MANIFEST_FILE);
    const tuned = scheduleForTable(loadSchedules(DEFAULT_SCHEDULES_FILE));
    const specs = [...new Map(m.kernels.map((k) => [k.specKey, k.spec])).values()];
    expect(specs.length).toBeGreaterThan(0);
    // every spec of the default set has its three plans, each launching only kernels the manifest has
    const symbols = new Set(m.kernels.map((k) => k.symbol));
    for (const spec of specs) for (const kind of ["forward", "backward", "decode", "forward_varlen", "backward_varlen"]) expect(m.plans.some((p) => p.kind === kind && p.spec === specKey(spec))).toBe(true);
    for (const p of m.plans) for (const v of p.variants) for (const s of [...v.steps, ...(v.fold?.steps ?? [])]) expect(symbols.has(s.symbol), s.symbol).toBe(true);
    // chunk-free kernels live under the smallest chunk of the default set (codegen/plan-data.ts homeStep)
    const home = (s: PlanStep): PlanStep => homeStep(s, Math.min(...DEFAULT_SELECTION.chunks), tuned);
    for (const spec of specs) expect(checkSpecPlans(spec, m.plans, planSchedules(spec, tuned), home)).toBeGreaterThan(100);
  }, 300_000);

  it("holds outside the default set: deg 4, e != d, chunk 16", () => {
    for (const spec of [checkSpec({ deg: 4, d: 16, e: 16, chunk: 32, dtype: "bf16" }), checkSpec({ deg: 2, d: 32, e: 64, chunk: 16, dtype: "f32" })]) {
      const sched = planSchedules(spec, (k, s) => k.schedule(s));
      checkSpecPlans(spec, planData(spec, sched), sched);
    }
  }, 300_000);

  it("merges variants that differ only in which buffers are inputs, and names the flag", () => {
    const spec = checkSpec({ deg: 2, d: 32, e: 32, chunk: 64, dtype: "bf16" });
    const [fwd] = planData(spec);
    expect(fwd!.variants.length).toBeLessThan(16);
    const logG = fwd!.variants[0]!.buffers.find((b) => b.name === "logG")!;
    expect(logG.init).toEqual({ flag: "gated", then: "input", else: "zeros" });
    // every flag combination has exactly one variant
    for (const f of FLAGS)
      for (const oneChunk of [0, 1]) expect(fwd!.variants.filter((v) => v.when.some((w) => JSON.stringify(w) === JSON.stringify({ ...f, oneChunk }))).length).toBe(1);
  });
});
