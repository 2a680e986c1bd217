// The useful floating-point work of each kernel launch of the retention plans, for TFLOP/s per
// kernel (bench/retention.ts, PROFILE=1). Counted from the math each DSL kernel computes
// (dsl/kernels/*.ts), not from what its lowering executes: masked, padded or recomputed products are
// not counted, and a kernel whose work is not products (the scans, the gradient combines) gets null
// rather than an invented number.
//
// Attention kernels: per visible (query, key) pair of a window (j <= i, both in one window of
// `window` tokens: the chunk, or t on the quadratic path), per query head, 2 FLOPs per multiply-add of
//   attention[_y]           q k^T (d), P v (e)                                  2 (d + e)
//   attention_bwd_prep      q k^T (d), dy v^T (e)                               2 (d + e)
//   attention_bwd_dq[_y]    q k^T (d), dy v^T (e), ds k (d)                     2 (2d + e)
//   attention_bwd_dkv[_y]   k q^T (d), v dy^T (e), P^T dy (e), ds^T q (d)       2 (2d + 2e)
// (the pair's exponentials, logarithms and selects are not counted).
// State kernels, D = binomial(d + deg - 1, deg) features, per token:
//   update_state            phi(k)^T v into the chunk's state, per kv head      2 D e
//   query_state             phi(q)^T Sin, per query head                        2 D e
//   query_state_bwd_dq      Sin_m dy_i, per query head                          2 D e
//   query_state_bwd_ds      phi(q'') dy^T into dSin, per query head             2 D e
//   update_state_bwd        dv = phi(k')^T U and U v, per kv head               4 D e
// The normaliser's products (length D, not D e: under 2% at e = 64) and expandGrad's O(D d) terms
// are not counted. discounted_cumsum[_bwd] (a memory-bound scan of the states), combine_grads and
// gate_grads_y (sums of partial gradients), attention_bwd_prep_y (dy . y per row, no pair is
// scored: a memory-bound pass): null.

import { stateFeatures } from "../dsl/spec.ts";
import type { Problem } from "../dsl/plan.ts";

/** Visible (query, key) pairs per query head and batch entry in windows of `window` tokens. */
export function causalPairs(t: number, window: number): number {
  const w = Math.min(window, t), r = t % w;
  return Math.floor(t / w) * ((w * (w + 1)) / 2) + (r * (r + 1)) / 2;
}

/** The attention kernels' window: the chunk, or the whole sequence on the quadratic path (chunk >= t). */
export const attentionWindow = (p: Problem): number => (p.chunk >= p.t ? p.t : p.chunk);

const ATTENTION_PER_PAIR: Record<string, (d: number, e: number) => number> = {
  attention: (d, e) => 2 * (d + e),
  attention_bwd_prep: (d, e) => 2 * (d + e),
  attention_bwd_dq: (d, e) => 2 * (2 * d + e),
  attention_bwd_dkv: (d, e) => 2 * (2 * d + 2 * e),
};

/** [multiplier of 2 D e per token, heads it runs over]. */
const STATE_PER_TOKEN: Record<string, [number, "h" | "hq"]> = {
  update_state: [1, "h"],
  query_state: [1, "hq"],
  query_state_bwd_dq: [1, "hq"],
  query_state_bwd_ds: [1, "hq"],
  update_state_bwd: [2, "h"],
};

/** The plans' kernels that get null on purpose (bench/kernel-flops.test.ts holds every other kernel of
 * the plans to a count, so a new kernel cannot go uncounted unnoticed). */
export const NOT_COUNTED: ReadonlySet<string> = new Set(["discounted_cumsum", "discounted_cumsum_bwd", "combine_grads", "gate_grads_y", "attention_bwd_prep_y"]);

/** Useful FLOPs of one launch of `kernel` (a DSL kernel name, as the profile reports it) on problem
 * `p`, or null where none are attributed (see the header). */
export function kernelFlops(kernel: string, p: Problem): number | null {
  if (NOT_COUNTED.has(kernel)) return null;
  const base = kernel.endsWith("_y") ? kernel.slice(0, -2) : kernel;
  const attn = ATTENTION_PER_PAIR[base];
  if (attn) return p.b * p.hq * causalPairs(p.t, attentionWindow(p)) * attn(p.d, p.e);
  const st = STATE_PER_TOKEN[kernel];
  if (st) {
    const D = stateFeatures({ deg: p.deg, d: p.d, e: p.e, chunk: p.chunk, dtype: p.dtype });
    return st[0] * 2 * D * p.e * p.b * p.t * (st[1] === "h" ? p.h : p.hq);
  }
  return null;
}
