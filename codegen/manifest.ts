// The manifest `gen` writes beside the sources (manifest.json, laid out by
// templates/manifest.json.hbs): every kernel with its spec,
// schedule, C symbol, argument order and launch shape, and every source file with its hash. The
// runtime reads it to find a kernel's fatbin and symbol; `retention build` reads it to compile.
// Deterministic: no timestamps, no absolute paths, stable key order.

import { printExpr } from "../dsl/print.ts";
import type { Schedule, Spec } from "../dsl/spec.ts";
import type { LKernel } from "./lir.ts";
import type { AlgorithmTable } from "../dsl/algorithm.ts";
import { SMEM_LIMIT } from "./lower/rules.ts";

/** 2: plans as data (`plans`). */
export const MANIFEST_FORMAT = 2;
export const MANIFEST_FILE = "manifest.json";

export type Arch = keyof typeof SMEM_LIMIT;
export const ARCHS = Object.keys(SMEM_LIMIT) as Arch[];

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

export function manifestArgs(k: LKernel): ManifestArg[] {
  return [
    ...k.tensors.map((t): ManifestArg => ({ kind: "tensor", name: t.name, dtype: t.dtype, role: t.role, dims: t.dims.map(printExpr) })),
    ...k.params.map((p): ManifestArg => ({ kind: "param", name: p.name, type: p.type })),
  ];
}

export function fitsByArch(smemBytes: number, archs: readonly Arch[]): Record<string, boolean> {
  return Object.fromEntries(archs.map((a) => [a, smemBytes <= SMEM_LIMIT[a]]));
}

export function parseManifest(text: string, where: string): Manifest {
  const regen = "regenerate it with `retention gen --out <its folder>`";
  let m: Manifest;
  try {
    m = JSON.parse(text) as Manifest;
  } catch (e) {
    throw new Error(`${where}: not valid JSON (${(e as Error).message}); ${regen}`);
  }
  if (typeof m !== "object" || m === null) throw new Error(`${where}: expected a JSON object; ${regen}`);
  if (m.format !== MANIFEST_FORMAT) throw new Error(`${where}: manifest format ${m.format}, expected ${MANIFEST_FORMAT}; ${regen}`);
  // what build and the runtimes read first: the file list and the kernels
  for (const key of ["files", "kernels", "nvccFlags", "archs"] as const)
    if (!Array.isArray(m[key])) throw new Error(`${where}: '${key}' is missing or not a list; ${regen}`);
  return m;
}
