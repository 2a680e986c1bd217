// Pieces of kernel code that several retention kernels share. Each is a trace-time helper: it
// emits DSL statements into the kernel being built, so its math stays in the DSL.

import { f32, range, select, type KernelBuilder, type TensorRef, type Tile, type Val } from "../builder.ts";
import type { Spec } from "../spec.ts";
import { stateFeatures } from "../spec.ts";

/** Load the log gates of one chunk and their in-chunk cumulative sum.
 * lam [c] = logG[t0] + ... + logG[t0+i] (positions past t read 0: a gate of 1);
 * G = lam[c-1], the whole chunk's log gate, as a scalar expression. */
export function chunkGates(k: KernelBuilder, logG: TensorRef, bi: Val, hi: Val, t0: Val, c: number): { lam: Tile; G: Val } {
  const g = k.reg("g", [c], "f32");
  const lam = k.reg("lam", [c], "f32");
  k.load(g, logG, [bi, range(t0, c), hi]);
  k.cumsum(lam, g, 0);
  return { lam, G: lam.at(c - 1) };
}

/** How many blocks of `bd` features cover D, and D rounded up to a whole block. */
export function featureBlocks(spec: Spec, bd: number): { count: number; padded: number } {
  const D = stateFeatures(spec);
  const count = Math.ceil(D / bd);
  return { count, padded: count * bd };
}

/** exp(x) that is 0 where x is -inf minus -inf (a row with no weight at all), instead of NaN. */
export function safeExpDiff(x: Val, m: Val): Val {
  return select(m.eq(f32(-Infinity)), f32(0), x.sub(m).exp());
}
