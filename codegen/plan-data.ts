// The plans of dsl/plan*.ts as data, for runtimes that are not TypeScript (the native core's plan
// interpreter, hence Python). The TS builders stay the one source: `planData` runs them, at three
// sets of probe sizes per variant, and names every number they produce (a shape dim, a kernel
// param) by the expression over the problem's variables that gives it at all three probes; grids
// come from each kernel's own grid IR with its params substituted. `instantiatePlan` turns the data
// back into concrete buffers, launches and params for any sizes; test/plan-data.test.ts holds it
// equal to the TS plans at many sizes, so the two cannot drift.
//
// A variant is one combination of the flags a plan's structure depends on (which steps run, what
// is bound where, which buffers are inputs); sizes never change a variant's structure, except
// through the flag `oneChunk` (n == 1), which the runtime derives from t.

import type { Expr } from "../dsl/ir.ts";
import { tensorDims } from "../dsl/interpret.ts";
import { backwardPlan } from "../dsl/plan-backward.ts";
import { decodeBuffers, decodeFold, decodeSegments, decodeSegmentSteps, type DecodeProblem } from "../dsl/plan-decode.ts";
import { forwardPlan, type Problem, type ScheduleTable } from "../dsl/plan.ts";
import { offsetsOf, varlenBackwardPlan, varlenForwardPlan, varlenLayout } from "../dsl/plan-varlen.ts";
import { numel, stepKernel, type Plan, type PlanBuffer, type PlanStep } from "../dsl/plan-types.ts";
import { scheduleKey, specKey, type KernelDef, type Schedule, type Spec } from "../dsl/spec.ts";
import { KERNELS } from "../dsl/kernels/index.ts";
import {
  PLAN_FLAGS,
  PLAN_VARS,
  type ManifestPlan,
  type PlanDataBuffer,
  type PlanDataStep,
  type PlanExpr,
  type PlanKind,
  type PlanOp,
  type BufferInit,
  type PlanVariant,
} from "./manifest.ts";

export const kernelSymbol = (name: string, spec: Spec, sch: Schedule): string => `prt_${name}_${specKey(spec)}_${scheduleKey(sch)}`;

/** Where gen puts the kernels of a plan step: a chunk-free kernel (KernelDef.chunkFree) only under
 * the smallest chunk of the selection (`homeChunk`), since one compile serves every chunk of its
 * deg, d, e and dtype; its schedule is that spec's (`scheduleFor`). Other steps stay as they are. */
export function homeStep(step: PlanStep, homeChunk: number, scheduleFor: (k: KernelDef, spec: Spec) => Schedule): PlanStep {
  const def = KERNELS.find((k) => k.name === step.kernel.name);
  if (!def?.chunkFree || step.spec.chunk === homeChunk) return step;
  const spec = { ...step.spec, chunk: homeChunk };
  return { ...step, spec, schedule: scheduleFor(def, spec) };
}

// ---- expressions --------------------------------------------------------------------------------

/** Value of a plan expression for the given variables (integer ops on integers, as the C core does). */
export function evalPlanExpr(e: PlanExpr, vars: Readonly<Record<string, number>>): number {
  if (typeof e === "number") return e;
  if (typeof e === "string") {
    const v = vars[e];
    if (v === undefined) throw new Error(`plan expression: variable '${e}' has no value`);
    return v;
  }
  const [op, x, y] = e;
  const a = evalPlanExpr(x, vars), b = evalPlanExpr(y, vars);
  switch (op) {
    case "+": return a + b;
    case "-": return a - b;
    case "*": return a * b;
    case "//": return Math.floor(a / b);
    case "%": return a - Math.floor(a / b) * b;
    case "max": return Math.max(a, b);
    case "min": return Math.min(a, b);
  }
}

/** The grid IR of a kernel over its params, with each param replaced by its plan expression. */
function substitute(e: Expr, params: Readonly<Record<string, PlanExpr>>, where: string): PlanExpr {
  const bin: Record<string, PlanOp> = {
    add: "+", sub: "-", mul: "*", idiv: "//", mod: "%", max: "max", min: "min",
  };
  switch (e.op) {
    case "const":
      if (e.type !== "i32") break;
      return e.value;
    case "param": {
      const p = params[e.name];
      if (p === undefined) throw new Error(`${where}: the grid reads param '${e.name}', which the plan step does not set`);
      return p;
    }
    case "cast":
      if (e.to === "i32") return substitute(e.a, params, where);
      break;
    case "binary": {
      const op = bin[e.fn];
      if (!op) break;
      const a = substitute(e.a, params, where), b = substitute(e.b, params, where);
      return typeof a === "number" && typeof b === "number" ? evalPlanExpr([op, a, b], {}) : [op, a, b];
    }
    default:
      break;
  }
  throw new Error(`${where}: the grid uses '${e.op}${"fn" in e ? " " + e.fn : ""}', which plan data cannot express (codegen/plan-data.ts lists what it can)`);
}

/**
 * The expression over `names` that gives values[i] under probes[i] for every probe: a constant, a
 * variable, a sum or product of two variables, or a variable times or plus a constant, whichever
 * single one fits. Throws when none or
 * several fit (a plan grew an expression this vocabulary lacks, or the probes are too alike).
 */
function recognize(values: readonly number[], probes: readonly Readonly<Record<string, number>>[], names: readonly string[], where: string): PlanExpr {
  if (values.every((v) => v === values[0])) return values[0]!;
  // simplest first: a variable, then a product, then a sum of two (with n == 1 in a one-chunk
  // variant, "b" and "b * n" both fit; the simpler one is meant)
  const products: PlanExpr[] = [], sums: PlanExpr[] = [];
  for (let i = 0; i < names.length; i++)
    for (let j = i; j < names.length; j++) products.push(["*", names[i]!, names[j]!]), sums.push(["+", names[i]!, names[j]!]);
  // last, a variable times or plus a constant (the varlen plans' aligned rows nc * chunk, row widths
  // hq * d, the ns + 1 offsets of seqChunk)
  const scaled: PlanExpr[] = names.flatMap((n) => {
    const k = values[0]! / probes[0]![n]!, a = values[0]! - probes[0]![n]!;
    return [...(Number.isInteger(k) && k > 1 ? [["*", n, k] as PlanExpr] : []), ...(Number.isInteger(a) && a !== 0 ? [["+", n, a] as PlanExpr] : [])];
  });
  let fits: PlanExpr[] = [];
  for (const level of [[...names], products, sums, scaled]) {
    fits = level.filter((c) => probes.every((p, i) => evalPlanExpr(c, p) === values[i]));
    if (fits.length === 1) return fits[0]!;
    if (fits.length > 1) break;
  }
  throw new Error(
    `${where}: takes the values ${values.join(", ")} at the probe sizes; ${fits.length ? `ambiguous (${fits.map((f) => JSON.stringify(f)).join(", ")})` : "no constant, variable, sum or product of two variables, or variable times or plus a constant fits"}`,
  );
}

// ---- probing the builders -----------------------------------------------------------------------

/** Three probe assignments of a kind's variables (pairwise different values so that each number is
 * traced back to one variable). t is derived from n so that n = ceil(t / c). */
function probes(kind: PlanKind, chunk: number, oneChunk: boolean): Record<string, number>[] {
  const base = [
    { b: 2, h: 3, hq: 15, scale: 0.3 },
    { b: 5, h: 2, hq: 4, scale: 0.7 },
    { b: 3, h: 4, hq: 8, scale: 1.9 },
  ];
  if (kind === "decode") {
    const seg = [
      { tn: 37, q0: 5, seg: 9, len0: 2 },
      { tn: 23, q0: 11, seg: 4, len0: 6 },
      { tn: 50, q0: 20, seg: 13, len0: 1 },
    ];
    return base.map((b, i) => ({ ...b, ...seg[i]! }));
  }
  const ts = oneChunk ? [chunk - 1, chunk / 2 + 1, 6] : [chunk * 6 + 5, chunk * 10 + 1, chunk * 12];
  return base.map((b, i) => ({ ...b, t: ts[i]!, n: Math.ceil(ts[i]! / chunk) }));
}

/** The varlen kinds' probes: three packings (lengths in chunks c: boundaries on and off chunk edges,
 * an empty sequence) with their variables t, ns, nc (and hq, h, scale as the dense probes vary them). */
function varlenProbes(chunk: number): { lengths: number[]; vars: Record<string, number> }[] {
  const c = chunk;
  const packs = [[5, c + 3, 4 * c], [1, 0, 2 * c, c - 1, 3 * c + 2, 7], [7 * c, 2 * c + 5]];
  const base = [{ h: 3, hq: 15, scale: 0.3 }, { h: 2, hq: 4, scale: 0.7 }, { h: 4, hq: 8, scale: 1.9 }];
  return packs.map((lengths, i) => {
    const lay = varlenLayout(offsetsOf(lengths), c);
    return { lengths, vars: { ...base[i]!, t: lengths.reduce((x, y) => x + y, 0), ns: lay.ns, nc: lay.nc } };
  });
}

function problemOf(spec: Spec, v: Readonly<Record<string, number>>, flags: Readonly<Record<string, number>>): Problem {
  return {
    b: v.b!, t: v.t!, hq: v.hq!, h: v.h!, d: spec.d, e: spec.e, deg: spec.deg, chunk: spec.chunk, dtype: spec.dtype, scale: v.scale!,
    gated: !!flags.gated, initialState: !!flags.initialState, finalState: !!flags.finalState,
  };
}

const decodeProblemOf = (spec: Spec, v: Readonly<Record<string, number>>, flags: Readonly<Record<string, number>>): DecodeProblem => {
  const { t: _t, initialState: _i, finalState: _f, ...rest } = problemOf(spec, { ...v, t: 1 }, flags);
  return rest;
};

/** Plans traced at each probe: same structure expected (names, kernels, bindings); numbers may differ. */
interface Traced {
  readonly buffers: readonly PlanBuffer[][];
  readonly steps: readonly PlanStep[][];
  readonly outputs: readonly string[];
}

function sameStructure(kind: string, a: readonly PlanBuffer[], b: readonly PlanBuffer[], sa: readonly PlanStep[], sb: readonly PlanStep[]): void {
  const key = (bs: readonly PlanBuffer[], ss: readonly PlanStep[]): string =>
    JSON.stringify([bs.map((x) => [x.name, x.dtype, x.init, x.shape.length]), ss.map((s) => [s.kernel.name, specKey(s.spec), scheduleKey(s.schedule), s.bind, Object.keys(s.params)])]);
  if (key(a, sa) !== key(b, sb))
    throw new Error(`${kind}: the plan's structure changes with the sizes inside one variant; plan data needs a flag for what changes it`);
}

/** `around`: buffers of the enclosing plan that the steps may bind too (the fold's steps bind the cache). */
function dataOf(kind: string, tr: Traced, ps: readonly Record<string, number>[], names: readonly string[], around: readonly PlanBuffer[][] = []): Pick<PlanVariant, "buffers" | "steps" | "outputs"> {
  for (let i = 1; i < ps.length; i++) sameStructure(kind, tr.buffers[0]!, tr.buffers[i]!, tr.steps[0]!, tr.steps[i]!);
  const buffers: PlanDataBuffer[] = tr.buffers[0]!.map((b, bi) => ({
    name: b.name,
    dtype: b.dtype as string,
    shape: b.shape.map((_, di) => recognize(tr.buffers.map((bs) => bs[bi]!.shape[di]!), ps, names, `${kind}: buffer ${b.name} dim ${di}`)),
    init: b.init as PlanDataBuffer["init"],
  }));
  const steps: PlanDataStep[] = tr.steps[0]!.map((s, si) => {
    const where = `${kind}: step ${si} (${s.kernel.name})`;
    const params: Record<string, PlanExpr> = {};
    for (const name of Object.keys(s.params)) params[name] = recognize(tr.steps.map((ss) => ss[si]!.params[name]!), ps, names, `${where}: param ${name}`);
    const kernel = stepKernel(s);
    const grid = kernel.grid.map((g) => substitute(g, params, where)) as [PlanExpr, PlanExpr, PlanExpr];
    // the bindings hold at every probe: same element count and dtype as the buffer (as preparePlan checks)
    tr.steps.forEach((ss, pi) => {
      const dims = tensorDims(kernel, ss[si]!.params);
      for (const t of kernel.tensors) {
        const buf = [...tr.buffers[pi]!, ...(around[pi] ?? [])].find((x) => x.name === s.bind[t.name]);
        if (!buf) throw new Error(`${where}: tensor '${t.name}' is bound to '${s.bind[t.name]}', which is not a plan buffer`);
        if (numel(dims.get(t.name)!) !== numel(buf.shape) || buf.dtype !== t.dtype)
          throw new Error(`${where}: tensor '${t.name}' is ${t.dtype} [${dims.get(t.name)}] but buffer '${buf.name}' is ${buf.dtype} [${buf.shape}]`);
      }
    });
    return {
      kernel: s.kernel.name, symbol: kernelSymbol(s.kernel.name, s.spec, s.schedule), grid, params, bind: { ...s.bind },
    };
  });
  return { buffers, steps, outputs: [...tr.outputs] };
}

/** Every combination of the given flags, as 0/1 records in a fixed order. */
function flagCombos(names: readonly string[]): Record<string, number>[] {
  return Array.from({ length: 1 << names.length }, (_, m) => Object.fromEntries(names.map((n, i) => [n, (m >> i) & 1])));
}

/**
 * The schedule table a spec's plans use: each kernel's schedule from `scheduleFor` (gen's, so the
 * symbols exist), except a kernel that a plan runs under two specs with different schedules
 * keeps its default (the rule of runtime/execute-gpu.ts withManifestSchedules).
 */
export function planSchedules(spec: Spec, scheduleFor: (k: KernelDef, spec: Spec) => Schedule): ScheduleTable {
  const p: Problem = problemOf(spec, probes("forward", spec.chunk, false)[0]!, { gated: 1, initialState: 1, finalState: 1 });
  // and the one-window form (t <= chunk, no state: the quadratic path's chunk-free kernels)
  const q: Problem = problemOf(spec, probes("forward", spec.chunk, true)[0]!, { gated: 1, initialState: 0, finalState: 0 });
  // and a packed call (the varlen plans: the copies and the varlen scans)
  const pack = varlenProbes(spec.chunk)[0]!;
  const packed = { ...problemOf(spec, { ...pack.vars, b: 1 }, { gated: 1, initialState: 1, finalState: 1 }), cuSeqlens: offsetsOf(pack.lengths) };
  const steps = [...forwardPlan(p).steps, ...backwardPlan(p).steps, ...forwardPlan(q).steps, ...backwardPlan(q).steps,
    ...varlenForwardPlan(packed).steps, ...varlenBackwardPlan(packed).steps,
    ...decodeSegmentSteps(p, 3, 0, 3, 0), ...decodeFold(p).steps];
  const table: Record<string, Schedule> = {};
  for (const s of steps) {
    const def = KERNELS.find((k) => k.name === s.kernel.name) ?? s.kernel;
    table[`${def.name}/${specKey(s.spec)}`] = scheduleFor(def, s.spec); // per spec: the fold runs f32 kernels
  }
  return table;
}

/**
 * Variants that differ only in which buffers are inputs (gated: logG, initialState: S0/Z0, ...)
 * become one, whose `init` reads the flag: { flag, then, else }. Keeps the manifest small and
 * shows which flags change the launches.
 */
type OneVariant = Omit<PlanVariant, "when"> & { readonly when: Readonly<Record<string, number>> };

function mergeVariants(vs: readonly OneVariant[]): PlanVariant[] {
  const shape = (v: OneVariant): string => JSON.stringify({ ...v, when: null, buffers: v.buffers.map((b) => ({ ...b, init: null })) });
  const groups = new Map<string, OneVariant[]>();
  for (const v of vs) groups.set(shape(v), [...(groups.get(shape(v)) ?? []), v]);
  const out: PlanVariant[] = [];
  for (const g of groups.values()) {
    const flags = Object.keys(g[0]!.when);
    const inits = g[0]!.buffers.map((_, bi): PlanDataBuffer["init"] | null => {
      const per = g.map((v) => v.buffers[bi]!.init as string);
      if (per.every((x) => x === per[0])) return per[0] as BufferInit;
      // one flag decides it: init = flag ? a : b over the whole group
      for (const f of flags) {
        const on = new Set(g.filter((v) => v.when[f]).map((v) => v.buffers[bi]!.init as string));
        const off = new Set(g.filter((v) => !v.when[f]).map((v) => v.buffers[bi]!.init as string));
        if (on.size === 1 && off.size === 1) return { flag: f, then: [...on][0] as BufferInit, else: [...off][0] as BufferInit };
      }
      return null;
    });
    if (inits.some((x) => x === null)) {
      out.push(...g.map((v) => ({ ...v, when: [v.when] })));
      continue;
    }
    out.push({ ...g[0]!, when: g.map((v) => v.when), buffers: g[0]!.buffers.map((b, bi) => ({ ...b, init: inits[bi]! })) });
  }
  return out;
}

/** The forward, backward and decode plans of a spec as data (see the file comment). `home` maps a
 * step to where gen put its kernel (homeStep; identity by default). */
export function planData(spec: Spec, sched: ScheduleTable = {}, home: (s: PlanStep) => PlanStep = (s) => s): ManifestPlan[] {
  const out: ManifestPlan[] = [];
  const homed = (p: Plan): Plan => ({ ...p, steps: p.steps.map(home) });
  for (const kind of ["forward", "backward"] as const) {
    const names = PLAN_VARS[kind];
    const variants = flagCombos(PLAN_FLAGS[kind]).map((when) => {
      const ps = probes(kind, spec.chunk, !!when.oneChunk);
      const plans: Plan[] = ps.map((v) => homed((kind === "forward" ? forwardPlan : backwardPlan)(problemOf(spec, v, when), sched)));
      const tr = { buffers: plans.map((p) => [...p.buffers]), steps: plans.map((p) => [...p.steps]), outputs: plans[0]!.outputs };
      const anyChunk = !!when.oneChunk && plans[0]!.steps.every((s) => KERNELS.find((k) => k.name === s.kernel.name)?.chunkFree === true);
      return { when, ...dataOf(`${kind} ${JSON.stringify(when)}`, tr, ps, names), ...(anyChunk ? { anyChunk } : {}) };
    });
    out.push({ kind, spec: specKey(spec), vars: names, flags: PLAN_FLAGS[kind], variants: mergeVariants(variants) });
  }
  for (const kind of ["forward_varlen", "backward_varlen"] as const) {
    const names = PLAN_VARS[kind], probed = varlenProbes(spec.chunk), ps = probed.map((x) => x.vars);
    const build = kind === "forward_varlen" ? varlenForwardPlan : varlenBackwardPlan;
    const variants = flagCombos(PLAN_FLAGS[kind]).map((when) => {
      const plans = probed.map(({ lengths, vars }) => homed(build({ ...problemOf(spec, { ...vars, b: 1 }, when), cuSeqlens: offsetsOf(lengths) }, sched)));
      const tr = { buffers: plans.map((p) => [...p.buffers]), steps: plans.map((p) => [...p.steps]), outputs: plans[0]!.outputs };
      return { when, ...dataOf(`${kind} ${JSON.stringify(when)}`, tr, ps, names) };
    });
    out.push({ kind, spec: specKey(spec), vars: names, flags: PLAN_FLAGS[kind], variants: mergeVariants(variants) });
  }
  const names = PLAN_VARS.decode;
  const variants = flagCombos(PLAN_FLAGS.decode).map((when) => {
    const ps = probes("decode", spec.chunk, false);
    const dp = ps.map((v) => decodeProblemOf(spec, v, when));
    const seg: Traced = {
      buffers: dp.map((p, i) => decodeBuffers(p, ps[i]!.tn!)),
      steps: dp.map((p, i) => decodeSegmentSteps(p, ps[i]!.tn!, ps[i]!.q0!, ps[i]!.seg!, ps[i]!.len0!, sched)),
      outputs: ["Y", "S", "Z", "Kc", "Vc", "Gc"],
    };
    const folds = dp.map((p) => decodeFold(p, sched));
    const fold: Traced = { buffers: folds.map((f) => f.buffers), steps: folds.map((f) => f.steps), outputs: [] };
    const where = `decode ${JSON.stringify(when)}`;
    const f = dataOf(`${where} fold`, fold, ps, names, seg.buffers as PlanBuffer[][]);
    return { when, ...dataOf(`${where} segment`, seg, ps, names), fold: { buffers: f.buffers, steps: f.steps } };
  });
  out.push({ kind: "decode", spec: specKey(spec), vars: names, flags: PLAN_FLAGS.decode, variants: mergeVariants(variants) });
  return out;
}

// ---- instantiation --------------------------------------------------------------------------------

/** A problem as plan variables and flags: forward/backward need b t hq h scale (n derived) and the
 * flags gated initialState finalState; the varlen kinds t hq h ns nc scale and the same flags;
 * decode needs b hq h scale, tn and len0 (cache rows in use). */
export interface PlanSizes {
  readonly vars: Readonly<Record<string, number>>;
  readonly flags: Readonly<Record<string, number>>;
}

export interface ConcreteStep {
  readonly kernel: string;
  readonly symbol: string;
  readonly grid: readonly [number, number, number];
  readonly params: Readonly<Record<string, number>>;
  readonly bind: Readonly<Record<string, string>>;
}

export interface ConcretePlan {
  readonly buffers: readonly { name: string; dtype: string; shape: number[]; init: string }[];
  readonly steps: readonly ConcreteStep[];
  readonly outputs: readonly string[];
}

/** The variant of a plan for these flags (oneChunk derived for forward/backward). */
export function selectVariant(plan: ManifestPlan, flags: Readonly<Record<string, number>>): PlanVariant {
  const v = plan.variants.find((x) => x.when.some((w) => plan.flags.every((f) => w[f] === (flags[f] ?? 0))));
  if (!v) throw new Error(`${plan.kind} plan of ${plan.spec}: no variant for flags ${JSON.stringify(flags)}`);
  return v;
}

/** A buffer's init under these flags. */
export function initOf(init: PlanDataBuffer["init"], flags: Readonly<Record<string, number>>): "input" | "nan" | "zeros" {
  return typeof init === "string" ? init : flags[init.flag] ? init.then : init.else;
}

/** What the native core's interpreter does (runtime/native/plans.cc), in TypeScript: the concrete plan. */
export function instantiatePlan(plan: ManifestPlan, chunk: number, sizes: PlanSizes): ConcretePlan {
  const vars: Record<string, number> = { ...sizes.vars };
  const flags: Record<string, number> = { ...sizes.flags };
  if (plan.kind === "forward" || plan.kind === "backward") {
    vars.n = Math.ceil(vars.t! / chunk);
    flags.oneChunk = vars.n === 1 ? 1 : 0;
  }
  const v = selectVariant(plan, flags);
  const buf = (bs: readonly PlanDataBuffer[], at: Record<string, number>) =>
    bs.map((b) => ({ name: b.name, dtype: b.dtype, shape: b.shape.map((d) => evalPlanExpr(d, at)), init: initOf(b.init, flags) }));
  const step = (s: PlanDataStep, at: Record<string, number>): ConcreteStep => ({
    kernel: s.kernel, symbol: s.symbol,
    grid: s.grid.map((g) => evalPlanExpr(g, at)) as unknown as [number, number, number],
    params: Object.fromEntries(Object.entries(s.params).map(([k, e]) => [k, evalPlanExpr(e, at)])),
    bind: s.bind,
  });
  if (plan.kind !== "decode") return { buffers: buf(v.buffers, vars), steps: v.steps.map((s) => step(s, vars)), outputs: v.outputs };
  const steps: ConcreteStep[] = [];
  const segs = decodeSegments(vars.len0!, vars.tn!, chunk);
  for (const sg of segs) {
    const at = { ...vars, q0: sg.q0, seg: sg.seg, len0: sg.len0 };
    steps.push(...v.steps.map((s) => step(s, at)));
    if (sg.fold) steps.push(...v.fold!.steps.map((s) => step(s, at)));
  }
  const buffers = buf(v.buffers, vars);
  if (segs.some((s) => s.fold)) buffers.push(...buf(v.fold!.buffers, vars));
  return { buffers, steps, outputs: v.outputs };
}
