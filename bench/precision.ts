// Precision of the state path under each hi + lo split policy (dsl/kernels/common.ts, stateSplit),
// measured on the CPU interpreter against the float64 reference (SPEC.md "Accuracy").
//
// For each configuration (deg, d, e, chunk) and dtype (f16, bf16) it runs the forward plan, the
// backward plan and a decode after a prefill on stress inputs (normal, uniform, inputs x10, gates
// near -20, random logsigmoid gates, GQA, t not a multiple of the chunk, and the regression cases of
// test/backward.test.ts and test/forward.test.ts), under policies:
//   split        every f16/bf16 state operand a hi + lo pair (before this table existed)
//   <site>       that one site single-rounded, every other one split
//   fwd-single   every forward site single        bwd-single   every backward site single
//   all-single   every site single                table        the table in common.ts as it stands
// and prints the worst error per (policy, config, dtype, output). Errors are ||out - ref|| / ||ref||
// over the whole tensor, with the tests' denominators for the gradients that vanish with the gates
// (test/backward.test.ts): for dQ, dK and dlogG at least 1e-3 ||dV_ref||, and under strong gates at
// least the same inputs' ungated gradient's norm.
//
// --states f32,bf16 (issue 24 item 2): the same under each storage of the per-chunk states: f32 as
// the kernels keep them, or the state each chunk reads and its contribution (forward Sin, Zin, dS,
// dZ; backward dSin, dZin, ddS, ddZ) rounded to that dtype where a step writes them, every sum still
// f32 (the peer's and flash-linear-attention's bf16 chunk states). The decoder is not run then.
//
// Usage: node --import tsx bench/precision.ts [--configs p2_d32,p2_d64,p4_d16] [--dtypes f16,bf16]
//          [--policies split,all-single,...] [--states f32,bf16] [--seeds 2] [--json out.json]

import { writeFileSync } from "node:fs";
import { roundArray, type DType } from "../dsl/dtype.ts";
import { executeOnCpu, type CpuRunOptions } from "../dsl/execute-cpu.ts";
import { overrideStateSplit, STATE_SITES, stateSplit, type StateSite } from "../dsl/kernels/common.ts";
import { backwardPlan } from "../dsl/plan-backward.ts";
import { createDecodeState, decodeStepOnCpu } from "../dsl/plan-decode.ts";
import { forwardPlan, planInputs, type Problem } from "../dsl/plan.ts";
import { referenceBackward, referenceForward } from "../dsl/reference/power-retention.ts";
import type { Spec } from "../dsl/spec.ts";
import { rng } from "../test/helpers/problems.ts";

const arg = (name: string, dflt: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
};

// ------------------------------------------------------------------------------------------------
// Inputs

const normal = (r: () => number): number => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
const logsigmoid = (x: number): number => (x >= 0 ? -Math.log1p(Math.exp(-x)) : x - Math.log1p(Math.exp(x)));

type Dist = "normal" | "uniform";
interface Kind {
  readonly name: string;
  readonly dist: Dist;
  readonly amp: number;
  /** logG per token, or null: ungated. */
  readonly gate: ((r: () => number) => number) | null;
  /** Strong gates: the gradients are measured on the ungated gradients' scale too. */
  readonly strong?: boolean;
}

const KINDS: readonly Kind[] = [
  { name: "normal, logsigmoid(4 N) gates", dist: "normal", amp: 1, gate: (r) => logsigmoid(4 * normal(r)) },
  { name: "uniform, gates U[-2,0]", dist: "uniform", amp: 1, gate: (r) => -2 * r() },
  { name: "uniform, ungated", dist: "uniform", amp: 1, gate: null },
  { name: "uniform x10, gates U[-0.05,0]", dist: "uniform", amp: 10, gate: (r) => -0.05 * r() },
  { name: "normal x10, ungated", dist: "normal", amp: 10, gate: null },
  { name: "uniform, gates U[-21,-19]", dist: "uniform", amp: 1, gate: (r) => -19 - 2 * r(), strong: true },
  { name: "normal, gates U[-20,0]", dist: "normal", amp: 1, gate: (r) => -20 * r(), strong: true },
];

interface Case {
  readonly label: string;
  readonly problem: Problem;
  readonly Q: Float32Array;
  readonly K: Float32Array;
  readonly V: Float32Array;
  readonly logG: Float32Array | null;
  readonly dY: Float32Array;
  readonly strong: boolean;
}

function draw(n: number, r: () => number, dist: Dist, amp: number, dtype: DType): Float32Array {
  const x = new Float64Array(n);
  for (let i = 0; i < n; i++) x[i] = amp * (dist === "normal" ? normal(r) : 2 * r() - 1);
  return roundArray(x, dtype);
}

function makeCase(problem: Problem, kind: Kind, seed: number): Case {
  const { b, t, hq, h, d, e, dtype } = problem;
  const r = rng(seed);
  const gated = kind.gate !== null;
  const logG = kind.gate ? roundArray(Float64Array.from({ length: b * t * h }, () => kind.gate!(r)), "f32") : null;
  return {
    label: `${kind.name} seed=${seed} t=${t} hq=${hq} h=${h} b=${b}`,
    problem: { ...problem, gated },
    Q: draw(b * t * hq * d, r, kind.dist, kind.amp, dtype),
    K: draw(b * t * h * d, r, kind.dist, kind.amp, dtype),
    V: draw(b * t * h * e, r, kind.dist, kind.amp, dtype),
    logG,
    dY: draw(b * t * hq * e, r, kind.dist === "normal" ? "normal" : "uniform", 1, dtype),
    strong: kind.strong ?? false,
  };
}

// ------------------------------------------------------------------------------------------------
// Configurations

interface Config {
  readonly key: string;
  readonly deg: number;
  readonly d: number;
  readonly e: number;
  readonly chunk: number;
  /** Sequence lengths (each one not a multiple of the chunk) and head layouts [hq, h]. */
  readonly ts: readonly number[];
  readonly heads: readonly (readonly [number, number])[];
}

const CONFIGS: Readonly<Record<string, Config>> = {
  p2_d32: { key: "p2_d32", deg: 2, d: 32, e: 32, chunk: 16, ts: [83, 200], heads: [[2, 1], [1, 1]] },
  p2_d64: { key: "p2_d64", deg: 2, d: 64, e: 64, chunk: 16, ts: [75], heads: [[2, 1]] },
  p4_d16: { key: "p4_d16", deg: 4, d: 16, e: 16, chunk: 16, ts: [83, 131], heads: [[2, 1], [1, 1]] },
  p4_d32: { key: "p4_d32", deg: 4, d: 32, e: 32, chunk: 16, ts: [37], heads: [[1, 1]] },
};

/** The regression cases of test/backward.test.ts (p = 4) and the f16 state past f16's range of test/forward.test.ts. */
function regressionCases(dtype: DType): Case[] {
  const out: Case[] = [];
  const list: [Partial<Problem>, number, number, [number, number], boolean][] = [
    [{ b: 1, t: 4, hq: 2, h: 1, d: 8, e: 32, chunk: 64 }, 1346517476, 1, [-2, 0], true],
    [{ b: 2, t: 2, hq: 2, h: 2, d: 16, e: 64, chunk: 64 }, 961154744, 1, [-2, 0], true],
    [{ b: 2, t: 294, hq: 4, h: 1, d: 8, e: 8, chunk: 32 }, 526626514, 1, [-2, 0], true],
    [{ b: 1, t: 76, hq: 2, h: 1, d: 8, e: 32, chunk: 64 }, 4, 1, [-20, 0], true],
    [{ b: 1, t: 46, hq: 1, h: 1, d: 16, e: 8, chunk: 32 }, 25, 10, [-2, 0], false],
    [{ b: 1, t: 300, hq: 1, h: 1, d: 8, e: 16, chunk: 64 }, 5, 10, [0, 0], false],
  ];
  for (const [shape, seed, amp, [lo, hi], gated] of list) {
    const problem = { deg: 4, dtype, initialState: false, gated, ...shape } as Problem;
    const p = { ...problem, scale: 1 / Math.sqrt(problem.d) };
    const kind: Kind = { name: `regression x${amp} gate=[${lo},${hi}]${gated ? "" : " ungated"}`, dist: "uniform", amp, gate: gated ? (r) => lo + (hi - lo) * r() : null, strong: lo <= -20 };
    out.push({ ...makeCase(p, kind, seed), label: `${kind.name} d=${p.d} e=${p.e} c=${p.chunk} t=${p.t} hq=${p.hq} h=${p.h} b=${p.b}` });
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// Policies

const FWD_SITES: readonly StateSite[] = ["update_state.phi", "update_state.v", "query_state.phi", "query_state.S"];
const BWD_SITES: readonly StateSite[] = STATE_SITES.filter((s) => !FWD_SITES.includes(s));
/** Sites that are a split only for an f16 spec (f16 data as a bf16 operand; update_state.v only at p >= 4). */
const DATA_SITES: readonly StateSite[] = ["update_state.v", "query_state_bwd_dq.dy", "query_state_bwd_ds.dy", "update_state_bwd.v"];

type Policy = ((spec: Spec, site: StateSite) => boolean) | "table";
function policies(dtype: DType): Map<string, Policy> {
  const m = new Map<string, Policy>();
  m.set("split", () => true);
  for (const s of STATE_SITES) if (dtype === "f16" || !DATA_SITES.includes(s)) m.set(s, (_, site) => site !== s);
  m.set("fwd-single", (_, site) => !FWD_SITES.includes(site));
  m.set("bwd-single", (_, site) => !BWD_SITES.includes(site));
  m.set("all-single", () => false);
  m.set("table", "table");
  return m;
}

// ------------------------------------------------------------------------------------------------
// Measurement

const sumSq = (a: ArrayLike<number>, b?: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i]!)) return Infinity;
    const x = a[i]! - (b ? b[i]! : 0);
    s += x * x;
  }
  return s;
};

type Out = "Y" | "dQ" | "dK" | "dV" | "dlogG" | "decode";
const OUTS: readonly Out[] = ["Y", "dQ", "dK", "dV", "dlogG", "decode"];

interface Ref {
  readonly Y: Float64Array;
  readonly grads: Record<"dQ" | "dK" | "dV" | "dlogG", Float64Array>;
  /** Denominators per gradient (tests' floors). */
  readonly den: Record<"dQ" | "dK" | "dV" | "dlogG", number>;
}

function referenceOf(c: Case): Ref {
  const p = c.problem;
  const logG = c.logG ?? new Float32Array(p.b * p.t * p.h);
  const x = { shape: p, deg: p.deg, scale: p.scale, Q: c.Q, K: c.K, V: c.V, logG };
  const fwd = referenceForward(x);
  const g = referenceBackward(x, c.dY);
  const grads = { dQ: g.dQ, dK: g.dK, dV: g.dV, dlogG: g.dlogG! };
  const floor = 1e-3 * Math.sqrt(sumSq(g.dV));
  const open = c.strong ? referenceBackward({ ...x, logG: new Float32Array(logG.length) }, c.dY) : null;
  const den = {} as Ref["den"];
  for (const k of ["dQ", "dK", "dV", "dlogG"] as const) {
    let n = Math.sqrt(sumSq(grads[k]));
    if (k !== "dV") n = Math.max(n, floor);
    if (open) n = Math.max(n, Math.sqrt(sumSq(open[k]!)));
    den[k] = n;
  }
  return { Y: fwd.Y, grads, den };
}

/** The per-chunk state buffers of the chunked plans (what --states rounds). */
const STATE_BUFFERS = ["dS", "dZ", "Sin", "Zin", "dSin", "dZin", "ddS", "ddZ"];

/** Round the per-chunk states a step wrote to `dtype` (f32: nothing). */
const storeStates = (dtype: DType): CpuRunOptions =>
  dtype === "f32" ? {} : {
    afterStep: (step, mem) => {
      for (const name of new Set(Object.values(step.bind)))
        if (STATE_BUFFERS.includes(name)) {
          const m = mem.get(name)!;
          m.set(roundArray(m, dtype));
        }
    },
  };

/** Forward then backward plans (as backwardOnCpu, keeping Y), the per-chunk states stored as `states`. */
function runPlans(c: Case, states: DType = "f32"): { Y: Float32Array; dQ: Float32Array; dK: Float32Array; dV: Float32Array; dlogG: Float32Array } {
  const p = c.problem;
  const given = planInputs(p, { Q: c.Q, K: c.K, V: c.V, ...(c.logG ? { logG: c.logG } : {}), dY: c.dY }, ["dY"]);
  const fwd = executeOnCpu(forwardPlan(p), given, storeStates(states));
  const bwd = executeOnCpu(backwardPlan(p), { ...given, ...fwd }, storeStates(states));
  return { Y: fwd.Y!, dQ: bwd.dQ!, dK: bwd.dK!, dV: bwd.dV!, dlogG: bwd.dlogG! };
}

const rowsOf = (x: ArrayLike<number>, b: number, t: number, t0: number, tn: number, w: number): Float32Array => {
  const out = new Float32Array(b * tn * w);
  for (let bi = 0; bi < b; bi++) for (let i = 0; i < tn * w; i++) out[bi * tn * w + i] = x[(bi * t + t0) * w + i]!;
  return out;
};

/** Prefill the whole chunks with the forward plan (finalState), decode the rest in calls of 1, 7, 3
 * tokens; the decoded rows' error against the reference's. Null when t < one chunk. */
function decodeError(c: Case, refY: Float64Array): number | null {
  const p = c.problem;
  const nf = Math.floor(p.t / p.chunk) * p.chunk, rest = p.t - nf;
  if (nf === 0 || rest === 0) return null;
  const { b, hq, h, d, e } = p;
  const part = (t0: number, tn: number) => ({
    Q: rowsOf(c.Q, b, p.t, t0, tn, hq * d), K: rowsOf(c.K, b, p.t, t0, tn, h * d), V: rowsOf(c.V, b, p.t, t0, tn, h * e),
    ...(c.logG ? { logG: rowsOf(c.logG, b, p.t, t0, tn, h) } : {}),
  });
  const pre = executeOnCpu(forwardPlan({ ...p, t: nf, finalState: true }), planInputs({ ...p, t: nf, finalState: true }, part(0, nf), []));
  const { t: _t, initialState: _i, finalState: _f, ...dp } = p;
  const st = createDecodeState(dp, { S: pre.Sfinal!, Z: pre.Zfinal! });
  const Y = new Float32Array(b * rest * hq * e);
  const sizes = [1, 7, 3];
  for (let t0 = 0, call = 0; t0 < rest; call++) {
    const tn = Math.min(sizes[call % sizes.length]!, rest - t0);
    const x = part(nf + t0, tn);
    const y = decodeStepOnCpu(st, { q: x.Q, k: x.K, v: x.V, logG: x.logG ?? null });
    for (let bi = 0; bi < b; bi++) Y.set(y.subarray(bi * tn * hq * e, (bi + 1) * tn * hq * e), (bi * rest + t0) * hq * e);
    t0 += tn;
  }
  const ref = rowsOf(refY, b, p.t, nf, rest, hq * e);
  return Math.sqrt(sumSq(Y, ref) / sumSq(ref));
}

interface Worst {
  err: number;
  where: string;
}

function main(): void {
  const configs = arg("configs", "p2_d32,p2_d64,p4_d16").split(",").map((k) => {
    const c = CONFIGS[k];
    if (!c) throw new Error(`--configs: unknown ${k} (known: ${Object.keys(CONFIGS).join(", ")})`);
    return c;
  });
  const dtypes = arg("dtypes", "f16,bf16").split(",") as DType[];
  const seeds = Number(arg("seeds", "2"));
  const only = arg("policies", "");
  const jsonOut = arg("json", "");
  const storages = arg("states", "f32").split(",") as DType[];
  const decodePolicies = new Set(["split", "update_state.phi", "fwd-single", "all-single", "table"]);
  const results: { policy: string; config: string; dtype: DType; out: Out; err: number; where: string; runs: number }[] = [];
  const t0 = Date.now();

  for (const cfg of [...configs, ...(configs.some((c) => c.deg === 4) ? [{ key: "p4_regr" } as Config] : [])]) {
    for (const dtype of dtypes) {
      const cases: Case[] = [];
      if (cfg.key === "p4_regr") cases.push(...regressionCases(dtype));
      else
        for (const [ki, kind] of KINDS.entries())
          for (let s = 0; s < seeds; s++) {
            const t = cfg.ts[(ki + s) % cfg.ts.length]!, [hq, h] = cfg.heads[(ki + s) % cfg.heads.length]!;
            const problem: Problem = {
              b: 1, t, hq, h, d: cfg.d, e: cfg.e, deg: cfg.deg, chunk: cfg.chunk, dtype,
              scale: 1 / Math.sqrt(cfg.d), gated: true, initialState: false,
            };
            cases.push(makeCase(problem, kind, 1000 * ki + 17 * s + cfg.deg * 7 + cfg.d));
          }
      const refs = cases.map(referenceOf);
      for (const [pname0, pol] of policies(dtype)) for (const states of storages) {
        if (only && !only.split(",").includes(pname0)) continue;
        const pname = states === "f32" ? pname0 : `${pname0}, ${states} states`;
        overrideStateSplit(pol === "table" ? null : pol);
        const worst = new Map<Out, Worst & { runs: number }>();
        const note = (o: Out, err: number, where: string): void => {
          const w = worst.get(o) ?? { err: 0, where: "", runs: 0 };
          w.runs++;
          if (!(err <= w.err)) Object.assign(w, { err, where });
          worst.set(o, w);
        };
        for (const [i, c] of cases.entries()) {
          const r = refs[i]!;
          const got = runPlans(c, states);
          note("Y", Math.sqrt(sumSq(got.Y, r.Y) / sumSq(r.Y)), c.label);
          for (const g of ["dQ", "dK", "dV", "dlogG"] as const) note(g, Math.sqrt(sumSq(got[g], r.grads[g])) / r.den[g], c.label);
          if (decodePolicies.has(pname0) && states === "f32") {
            const de = decodeError(c, r.Y);
            if (de !== null) note("decode", de, c.label);
          }
        }
        const cells = OUTS.map((o) => (worst.has(o) ? worst.get(o)!.err.toExponential(1) : "-"));
        console.log(`${pname.padEnd(24)} ${cfg.key.padEnd(8)} ${dtype.padEnd(5)} ${cells.map((x) => x.padStart(8)).join(" ")}   (${cases.length} cases, ${((Date.now() - t0) / 1000).toFixed(0)} s)`);
        for (const o of OUTS) {
          const w = worst.get(o);
          if (w) results.push({ policy: pname, config: cfg.key, dtype, out: o, err: w.err, where: w.where, runs: w.runs });
        }
      }
      overrideStateSplit(null);
    }
  }
  console.log(`\ncolumns: ${OUTS.join(" ")}; table policy for reference:`);
  for (const deg of [2, 4])
    for (const dtype of dtypes) {
      const spec: Spec = { deg, d: 16, e: 16, chunk: 16, dtype };
      console.log(`  p${deg} ${dtype}: single at ${STATE_SITES.filter((s) => !stateSplit(spec, s)).join(", ") || "(none)"}`);
    }
  if (jsonOut) writeFileSync(jsonOut, JSON.stringify(results, null, 1));
}

main();
