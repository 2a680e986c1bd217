// The algorithm of a call, when its caller names no chunk: the quadratic form (one window over the
// whole sequence: attention alone, O(t^2 (d + e)) per head) or the chunked form at a built chunk
// (attention inside chunks plus the state kernels, O(t (4 D e + c (d + e)))). Written once here; the
// Python package carries the same rule (runtime/python/prt/_manifest.py, choose_chunk) and a test
// holds the two equal.
//
// The crossover length comes from a table measured on the GPU (bench/algorithms.ts ->
// codegen/algorithms.json, which gen copies into the manifest as "algorithms"), keyed by the
// device's name and the spec without its chunk; a device or spec the table lacks takes the default
// below (the runtimes say so once). The quadratic form needs no state in or out.

/** One measured entry: the quadratic form up to `quadraticMaxT` tokens, else the chunked form at `chunk`. */
export interface AlgorithmEntry {
  readonly quadraticMaxT: number;
  readonly chunk: number;
}

/** device name -> "p<deg>_d<d>_e<e>_<dtype>" -> entry. */
export type AlgorithmTable = Readonly<Record<string, Readonly<Record<string, AlgorithmEntry>>>>;

export interface ChooseChunkArgs {
  readonly deg: number;
  readonly d: number;
  readonly e: number;
  readonly dtype: string;
  readonly t: number;
  readonly initialState: boolean;
  readonly finalState: boolean;
}

export const algorithmKey = (a: { deg: number; d: number; e: number; dtype: string }): string => `p${a.deg}_d${a.d}_e${a.e}_${a.dtype}`;

/** The least power of two >= max(x, 16), and the greatest <= max(x, 16) (by doubling: the same in every language). */
function nextPow2(x: number): number {
  let p = 16;
  while (p < x) p *= 2;
  return p;
}
function floorPow2(x: number): number {
  let p = 16;
  while (p * 2 <= x) p *= 2;
  return p;
}

/** Without a measurement: the quadratic form while its work, t (d + e) per token and head, stays
 * under the chunked form's state work 4 D e: t <= 4 D e / (d + e), as a power of two (d = e = 32:
 * 1024, 64: 4096, 128: 16384 at deg 2). Measured on the H100 on 2026-12-07 at d = e = 64
 * (bench/results/2026-12-07-3133459/crossover.txt): fwd+bwd, the quadratic form is faster at
 * 16 x 1024 (1.48 against 6.73 ms) and 4 x 4096 (4.04 against 6.72), slower at 1 x 8192 (4.46
 * against 3.69) and 1 x 16384 (13.8 against 7.3). */
export function defaultQuadraticMaxT(deg: number, d: number, e: number): number {
  let D = 1;
  for (let i = 0; i < deg; i++) D = (D * (d + i)) / (i + 1); // binomial(d + deg - 1, deg)
  return floorPow2((4 * D * e) / (d + e));
}

/** The chunk to run a call at: >= t (one window: the quadratic path, served by any built chunk's
 * chunk-free kernels) or one of `built`. `entry` is the table's for this device and spec, if any. */
export function chooseChunk(a: ChooseChunkArgs, built: readonly number[], entry?: AlgorithmEntry): number {
  if (built.length === 0) throw new Error(`chooseChunk: no built chunk for ${algorithmKey(a)}`);
  const maxT = entry?.quadraticMaxT ?? defaultQuadraticMaxT(a.deg, a.d, a.e);
  if (!a.initialState && !a.finalState && a.t <= maxT) return nextPow2(a.t);
  const sorted = [...built].sort((x, y) => x - y);
  if (entry && sorted.includes(entry.chunk)) return entry.chunk;
  return sorted[sorted.length - 1]!;
}
