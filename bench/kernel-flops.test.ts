// The FLOP counts of bench/kernel-flops.ts (the TFLOP/s of bench/retention.ts's PROFILE lines): by
// hand at the issue-23 shapes, and every kernel of the plans either counted or null on purpose.
import { describe, expect, it } from "vitest";
import { backwardPlan } from "../dsl/plan-backward.ts";
import { forwardPlan, type Problem } from "../dsl/plan.ts";
import { stepKernel } from "../dsl/plan-types.ts";
import { causalPairs, kernelFlops, NOT_COUNTED } from "./kernel-flops.ts";

const problem = (b: number, t: number, chunk: number, hq = 8, h = 8): Problem =>
  ({ b, t, hq, h, d: 64, e: 64, deg: 2, chunk, dtype: "bf16", scale: 1 / 8, gated: true, initialState: false });

describe("kernel FLOPs", () => {
  it("counts the causal pairs of each window", () => {
    expect(causalPairs(4, 4)).toBe(10);
    expect(causalPairs(4, 16)).toBe(10); // a window past t is the whole sequence
    expect(causalPairs(10, 4)).toBe(10 + 10 + 3); // two full windows and one of 2 tokens
  });

  it("counts the quadratic path's attention kernels per pair (b=4 t=4096)", () => {
    const p = problem(4, 4096, 4096), pairs = 4 * 8 * (4096 * 4097) / 2;
    expect(kernelFlops("attention_y", p)).toBe(pairs * 2 * 128);
    expect(kernelFlops("attention_bwd_prep_y", p)).toBeNull(); // dy . y per row: no pair is scored
    expect(kernelFlops("attention_bwd_dq_y", p)).toBe(pairs * 2 * (128 + 64));
    expect(kernelFlops("attention_bwd_dkv_y", p)).toBe(pairs * 2 * 256);
    expect(kernelFlops("gate_grads_y", p)).toBeNull();
  });

  it("counts the chunked path's kernels (b=1 t=16384 chunk 128, grouped heads)", () => {
    const p = problem(1, 16384, 128, 8, 2), D = 2080; // binomial(65, 2)
    expect(kernelFlops("attention", p)).toBe(8 * 128 * (128 * 129 / 2) * 256);
    expect(kernelFlops("update_state", p)).toBe(2 * D * 64 * 16384 * 2); // per kv head
    expect(kernelFlops("query_state", p)).toBe(2 * D * 64 * 16384 * 8); // per query head
    expect(kernelFlops("query_state_bwd_dq", p)).toBe(2 * D * 64 * 16384 * 8);
    expect(kernelFlops("query_state_bwd_ds", p)).toBe(2 * D * 64 * 16384 * 8);
    expect(kernelFlops("update_state_bwd", p)).toBe(4 * D * 64 * 16384 * 2);
    expect(kernelFlops("discounted_cumsum", p)).toBeNull();
    expect(kernelFlops("no_such_kernel", p)).toBeNull();
  });

  it("has a count or a deliberate null for every kernel of the plans", () => {
    for (const p of [problem(16, 1024, 1024), problem(1, 16384, 128), problem(2, 300, 64, 4, 2)]) {
      const names = [...forwardPlan(p).steps, ...backwardPlan(p).steps].map((s) => stepKernel(s).name);
      for (const n of names) expect(kernelFlops(n, p) !== null || NOT_COUNTED.has(n), n).toBe(true);
    }
  });
});
