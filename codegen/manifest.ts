// The manifest `gen` writes beside the sources (manifest.json, laid out by
// templates/manifest.json.hbs): every kernel with its spec,
// schedule, C symbol, argument order and launch shape, and every source file with its hash. The
// runtime reads it to find a kernel's fatbin and symbol; `retention build` reads it to compile.
// Deterministic: no timestamps, no absolute paths, stable key order.

import { printExpr } from "../dsl/print.ts";
import type { Schedule, Spec } from "../dsl/spec.ts";
import type { LKernel } from "./lir.ts";
import { SMEM_LIMIT } from "./lower/rules.ts";

export const MANIFEST_FORMAT = 1;
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

export interface Manifest {
  readonly format: number;
  readonly generator: string;
  readonly archs: readonly Arch[];
  readonly nvccFlags: readonly string[];
  readonly headers: readonly { readonly file: string; readonly sha256: string }[];
  readonly files: readonly ManifestFile[];
  readonly kernels: readonly ManifestKernel[];
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
  const m = JSON.parse(text) as Manifest;
  if (m.format !== MANIFEST_FORMAT) throw new Error(`${where}: manifest format ${m.format}, expected ${MANIFEST_FORMAT}; regenerate with \`retention gen\``);
  return m;
}
