// The contract between `gen` and every runtime (TypeScript, the native core, Python): the manifest
// `gen` writes beside the sources (manifest.json, laid out by templates/manifest.json.hbs), with
// every kernel's spec, schedule, C symbol, argument order and launch shape, every source file with
// its hash, and the plans as data (codegen/plan-data.ts writes them, runtime/native/plans.cc and
// runtime/python/prt/_manifest.py read them); and the command that builds a spec no manifest has.
// codegen/ and runtime/ both import this folder (dsl/contract/) and never each other; it imports
// neither. test/contract.test.ts holds the C and Python readers to it (golden manifests, good and
// broken, read by all three) and the import graph to that rule.
// Deterministic: no timestamps, no absolute paths, stable key order.

import type { AlgorithmTable } from "../algorithm.ts";
import type { Schedule, Spec } from "../spec.ts";

/** 2: plans as data (`plans`). */
export const MANIFEST_FORMAT = 2;
export const MANIFEST_FILE = "manifest.json";

/** The archs gen lowers for and the fatbins hold code for (codegen/lower/rules.ts SMEM_LIMIT gives each its shared memory). */
export const ARCHS = ["sm_80", "sm_90a"] as const;
export type Arch = (typeof ARCHS)[number];

export type ManifestArg =
  | { readonly kind: "tensor"; readonly name: string; readonly dtype: string; readonly role: "in" | "out"; readonly dims: readonly string[] }
  | { readonly kind: "param"; readonly name: string; readonly type: "i32" | "f32" };

export interface ManifestKernel {
  readonly name: string;
  readonly specKey: string;
  readonly spec: Spec;
  readonly scheduleKey: string;
  readonly schedule: Schedule;
  readonly symbol: string;
  /** In call order: tensors (device pointers) then params. */
  readonly args: readonly ManifestArg[];
  /** Programs per grid axis as DSL expressions over params ($name); the runtime evaluates the IR's. */
  readonly grid: readonly [string, string, string];
  readonly threads: number;
  readonly smemBytes: number;
  /** Whether the dynamic shared memory fits each arch's per-block limit. */
  readonly fits: Readonly<Record<string, boolean>>;
  readonly source: string;
  readonly sourceSha256: string;
  readonly fatbin: string;
}

export interface ManifestFile {
  readonly source: string;
  readonly sha256: string;
  readonly fatbin: string;
  /** Headers of the folder the source includes (their hashes key incremental builds too). */
  readonly includes: readonly string[];
}

// ---- plans as data (codegen/plan-data.ts builds them from dsl/plan*.ts) ----------------------------

/**
 * An integer (or, for `scale`, real) expression over a plan's variables: a number, a variable's
 * name, or [op, a, b]. "//" is floor division and "%" its remainder; all values are non-negative.
 */
export type PlanExpr = number | string | readonly [PlanOp, PlanExpr, PlanExpr];
export type PlanOp = "+" | "-" | "*" | "//" | "%" | "max" | "min";
export type PlanKind = "forward" | "backward" | "decode" | "forward_varlen" | "backward_varlen";

/**
 * The variables a plan's expressions read. forward/backward: the caller's b, t, hq, h and scale,
 * and n = ceil(t / chunk), the chunk count. decode: b, hq, h, scale, tn (tokens of the call), and
 * per segment q0 (its first token), seg (its tokens), len0 (cache rows before it).
 * forward_varlen/backward_varlen (packed sequences, b = 1; dsl/plan-varlen.ts): t the packed
 * length, ns the sequences, nc the chunk slots of the aligned layout (varlenLayout), hq, h, scale;
 * their i32 inputs chunkSrc, chunkLen, seqChunk are the caller's, from the offsets (varlenTables).
 */
export const PLAN_VARS: Readonly<Record<PlanKind, readonly string[]>> = {
  forward: ["b", "t", "hq", "h", "n", "scale"],
  backward: ["b", "t", "hq", "h", "n", "scale"],
  decode: ["b", "hq", "h", "tn", "q0", "seg", "len0", "scale"],
  forward_varlen: ["t", "hq", "h", "ns", "nc", "scale"],
  backward_varlen: ["t", "hq", "h", "ns", "nc", "scale"],
};

/**
 * The flags a plan's structure depends on, each 0 or 1: gated (logG given), initialState (S0/Z0
 * given), finalState (Sfinal/Zfinal wanted), oneChunk (n == 1, derived by the runtime).
 */
export const PLAN_FLAGS: Readonly<Record<PlanKind, readonly string[]>> = {
  forward: ["gated", "initialState", "finalState", "oneChunk"],
  backward: ["gated", "initialState", "finalState", "oneChunk"],
  decode: ["gated"],
  forward_varlen: ["gated", "initialState", "finalState"],
  backward_varlen: ["gated", "initialState", "finalState"],
};

export type BufferInit = "input" | "nan" | "zeros";

export interface PlanDataBuffer {
  readonly name: string;
  readonly dtype: string;
  /** Row-major dims. */
  readonly shape: readonly PlanExpr[];
  /** input: the caller's memory; nan: written by the plan before it is read (poisoned in debug
   * runs); zeros: zeroed first; { flag, then, else }: one of those by a flag (e.g. logG is an input
   * when gated, else zeros). */
  readonly init: BufferInit | { readonly flag: string; readonly then: BufferInit; readonly else: BufferInit };
}

export interface PlanDataStep {
  readonly kernel: string;
  /** The manifest kernel launched (its `args` give the argument order, `threads` and `smemBytes` the block). */
  readonly symbol: string;
  readonly grid: readonly [PlanExpr, PlanExpr, PlanExpr];
  /** Kernel params by name (a step may set more than the kernel reads). */
  readonly params: Readonly<Record<string, PlanExpr>>;
  /** Kernel tensor -> plan buffer. */
  readonly bind: Readonly<Record<string, string>>;
}

export interface PlanVariant {
  /** The flag combinations this variant is for. */
  readonly when: readonly Readonly<Record<string, number>>[];
  readonly buffers: readonly PlanDataBuffer[];
  /** forward/backward: the launches in order. decode: the launches of one segment. */
  readonly steps: readonly PlanDataStep[];
  /** The buffers a caller reads back. */
  readonly outputs: readonly string[];
  /** forward/backward: every kernel of the variant is chunk-free (KernelDef.chunkFree), so with one
   * window (oneChunk) it serves any t: a runtime asked for a chunk no manifest has (the quadratic
   * path, chunk >= t) takes this variant of any built chunk of the same deg, d, e and dtype. */
  readonly anyChunk?: boolean;
  /** decode only: after a segment that fills the cache, these steps fold it into the state; the
   * buffers are added to the call's once when any segment folds. */
  readonly fold?: { readonly buffers: readonly PlanDataBuffer[]; readonly steps: readonly PlanDataStep[] };
}

/**
 * One plan of one spec. A decode call of tn tokens on a cache of len0 rows (capacity c = chunk)
 * runs segments: q0 = 0, then while q0 < tn: seg = min(tn - q0, c - len0); the segment's steps;
 * if len0 + seg == c the fold's steps and len0 = 0, else len0 += seg; q0 += seg
 * (dsl/plan-decode.ts decodeSegments).
 */
export interface ManifestPlan {
  readonly kind: PlanKind;
  /** The spec whose problem it computes (its steps may launch kernels of other specs, e.g. f32 folds). */
  readonly spec: string;
  readonly vars: readonly string[];
  readonly flags: readonly string[];
  readonly variants: readonly PlanVariant[];
}

export interface Manifest {
  readonly format: number;
  readonly generator: string;
  /** The measured algorithm table (dsl/algorithm.ts, codegen/algorithms.json). */
  readonly algorithms: AlgorithmTable;
  readonly archs: readonly Arch[];
  readonly nvccFlags: readonly string[];
  readonly headers: readonly { readonly file: string; readonly sha256: string }[];
  readonly files: readonly ManifestFile[];
  readonly kernels: readonly ManifestKernel[];
  readonly plans: readonly ManifestPlan[];
}


/** The spec's flags of the command that generates and compiles it (`retention gen`); every
 * runtime's missing-kernel error names it (runtime/kernels.ts genCommand, plans.cc gen_command,
 * _manifest.Spec.gen_command: test/contract.test.ts holds the three equal). */
export function genSpecFlags(spec: Spec): string {
  return `--deg ${spec.deg} --d ${spec.d} --e ${spec.e} --chunk ${spec.chunk} --dtype ${spec.dtype}`;
}

/** The plan kinds a manifest may hold. */
export const PLAN_KINDS = Object.keys(PLAN_VARS) as PlanKind[];

/** The fields every reader relies on, with their JSON types: each kernel entry's and each plan's.
 * The native core and the Python package check the same ones where they read them
 * (test/contract.test.ts gives all three readers the same broken manifests). */
export const KERNEL_FIELDS = {
  name: "string", symbol: "string", specKey: "string", spec: "object", schedule: "object", args: "array", threads: "number", smemBytes: "number",
  source: "string", fatbin: "string",
} as const;
export const PLAN_FIELDS = { kind: "string", spec: "string", flags: "array", variants: "array" } as const;

const jsonType = (v: unknown): string => (Array.isArray(v) ? "array" : v === null ? "null" : typeof v);

/** A manifest's text, checked against the contract: the format, the lists every reader starts from
 * (files, kernels, plans, nvccFlags, archs) and the fields of each kernel and plan (KERNEL_FIELDS,
 * PLAN_FIELDS); errors name the file, the entry and the field, and say how to regenerate. */
export function parseManifest(text: string, where: string): Manifest {
  const regen = "regenerate it with `retention gen --out <its folder>`";
  let m: Manifest;
  try {
    m = JSON.parse(text) as Manifest;
  } catch (e) {
    throw new Error(`${where}: not valid JSON (${(e as Error).message}); ${regen}`);
  }
  if (typeof m !== "object" || m === null || Array.isArray(m)) throw new Error(`${where}: expected a JSON object; ${regen}`);
  if (m.format !== MANIFEST_FORMAT) throw new Error(`${where}: manifest format ${JSON.stringify(m.format)}, expected ${MANIFEST_FORMAT}; ${regen}`);
  for (const key of ["files", "kernels", "plans", "nvccFlags", "archs"] as const)
    if (!Array.isArray(m[key])) throw new Error(`${where}: '${key}' is missing or not a list; ${regen}`);
  const fields = (what: string, entry: unknown, want: Readonly<Record<string, string>>): void => {
    if (jsonType(entry) !== "object") throw new Error(`${where}: ${what}: expected an object, received ${JSON.stringify(entry)}; ${regen}`);
    for (const [f, t] of Object.entries(want)) {
      const got = jsonType((entry as Record<string, unknown>)[f]);
      if (got !== t) throw new Error(`${where}: ${what}: field '${f}' is ${got === "undefined" ? "missing" : `a ${got}`}, expected a ${t}; ${regen}`);
    }
  };
  m.kernels.forEach((k, i) => fields(`kernel ${i} (${JSON.stringify((k as { symbol?: unknown } | null)?.symbol ?? null)})`, k, KERNEL_FIELDS));
  m.plans.forEach((p, i) => {
    fields(`plan ${i}`, p, PLAN_FIELDS);
    if (!PLAN_KINDS.includes(p.kind)) throw new Error(`${where}: plan ${i}: kind ${JSON.stringify(p.kind)}, expected one of ${PLAN_KINDS.join(", ")}; ${regen}`);
  });
  return m;
}
