// A spec fixes everything a kernel is specialised on at generation time; a schedule fixes how
// the work is split (tile sizes, warps, pipeline stages). Kernels are functions of both, and the
// result must not depend on the schedule beyond rounding.

import { isDType, type DType } from "./dtype.ts";
import type { Kernel } from "./ir.ts";
import { featureCount } from "./sympow.ts";

export interface Spec {
  readonly deg: number; // even, >= 2
  readonly d: number; // head dim of Q and K
  readonly e: number; // head dim of V
  readonly chunk: number; // c, a power of two
  readonly dtype: DType; // of Q, K, V, Y and the mma operands
}

/** How one kernel's work is split. Every field is optional per kernel; unused ones are ignored. */
export interface Schedule {
  readonly numWarps: number;
  /** Features of the expansion handled per step (a block of D). */
  readonly blockD: number;
  /** Rows of a time tile (query or key block of the attention); divides the chunk where the kernel works per chunk or window of one chunk. */
  readonly blockT: number;
  /** Software-pipelining depth for the loops that stream tiles. */
  readonly stages: number;
  /** Blocks per SM the compiler must fit (the second argument of __launch_bounds__): absent or 1
   * leaves it up to 255 registers a thread; 2 caps them so two blocks share an SM, whose warps then
   * hide each other's latency (a kernel latency-bound at one block an SM). */
  readonly minBlocks?: number;
}

export interface KernelDef {
  readonly name: string;
  /** The default schedule for a spec (what `gen` uses without an autotune result). */
  readonly schedule: (spec: Spec) => Schedule;
  /** Candidate schedules the autotuner sweeps. */
  readonly scheduleSpace: (spec: Spec) => readonly Schedule[];
  readonly build: (spec: Spec, schedule: Schedule) => Kernel;
  /** The kernel's code and schedules do not depend on the spec's chunk (a window, if any, is a
   * runtime param): the kernel compiled for any chunk of its (deg, d, e, dtype) serves every chunk,
   * so a plan made of such kernels (the quadratic path) runs at any t on whatever chunk is built. */
  readonly chunkFree?: boolean;
  /** The kernel whose tuned schedule this one takes where a table has none of its own: a variant
   * with the same tiles and loop (the varlen scans take their dense kernels'). */
  readonly twin?: string;
}

/** The schedule `table` gives kernel `k` at `spec` (by "<kernel>/<specKey>", then by kernel name),
 * its twin's when it has none, else the kernel's default. */
export function tableSchedule(table: (key: string) => Schedule | undefined, k: KernelDef, spec: Spec): Schedule {
  const key = specKey(spec);
  const of = (name: string): Schedule | undefined => table(`${name}/${key}`) ?? table(name);
  return of(k.name) ?? (k.twin !== undefined ? of(k.twin) : undefined) ?? k.schedule(spec);
}

export function specKey(s: Spec): string {
  return `p${s.deg}_d${s.d}_e${s.e}_c${s.chunk}_${s.dtype}`;
}

export function scheduleKey(s: Schedule): string {
  return `w${s.numWarps}_bd${s.blockD}_bt${s.blockT}_s${s.stages}${(s.minBlocks ?? 1) > 1 ? `_m${s.minBlocks}` : ""}`;
}

// not n & (n - 1): bitwise operators truncate to 32 bits, so 2^40 + 2^36 would pass
const isPow2 = (n: number): boolean => Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;

/** The largest state a spec may have, in f32 elements per head (2^28: 1 GiB). */
export const MAX_STATE_ELEMENTS = 2 ** 28;

/** Throw an error naming the field, the expected and the received value. */
export function checkSpec(s: Spec): Spec {
  const bad = (field: string, expected: string, got: unknown): never => {
    throw new Error(`spec.${field}: expected ${expected}, received ${JSON.stringify(got)}`);
  };
  if (!Number.isInteger(s.deg) || s.deg < 2 || s.deg % 2 !== 0) bad("deg", "a positive even integer", s.deg);
  if (!Number.isInteger(s.d) || s.d < 1) bad("d", "a positive integer", s.d);
  if (!Number.isInteger(s.e) || s.e < 1) bad("e", "a positive integer", s.e);
  if (!isPow2(s.chunk) || s.chunk < 16) bad("chunk", "a power of two >= 16", s.chunk);
  if (!isDType(s.dtype)) bad("dtype", "one of f32, f16, bf16", s.dtype);
  const D = featureCount(s.d, s.deg);
  if (!(D * s.e <= MAX_STATE_ELEMENTS))
    throw new Error(`spec (deg ${s.deg}, d ${s.d}, e ${s.e}): the state would hold D * e = ${D.toPrecision(3)} * ${s.e} f32 per head (D = binomial(d + deg - 1, deg)), more than ${MAX_STATE_ELEMENTS} (1 GiB); lower deg or d`);
  return s;
}

/** D of the spec: features of the degree-deg expansion of a d-vector. */
export function stateFeatures(s: Spec): number {
  return featureCount(s.d, s.deg);
}
