// The TypeScript API's overhead (issue 25 item 5): powerRetention (+ powerRetentionBackward) per
// call against the same plans' launches alone, and Decoder.step, at the shapes the issue names.
//
// Usage: node --import tsx bench/api-overhead.ts [b:t ...]   (default 1:4096 1:16384 16:1024)
//   env: CHUNK (default: the library's choice), REPS=20, DECODE_B="1 16", DECODE_STEPS=200
// h = 8, d = e = 64, deg 2, gated, bf16. For each shape, fwd and fwd+bwd:
//   api_ms      one API call timed alone between CUDA events (median), what a caller waits for:
//               plan lookup, allocation, poisoning, launches, the final synchronize, frees;
//   host_ms     the same call's wall time on the host (performance.now, median);
//   launches_ms the plan's launches alone into buffers allocated once (bench/retention.ts's number);
//   ratio       api_ms / launches_ms (the target: within 5%).
// Decode: Decoder.step of one token at b in DECODE_B after a prompt of one chunk: device ms per step
// (events) and host ms per step. One JSON line per row, then a table.

import { performance } from "node:perf_hooks";
import { backwardPlan } from "../dsl/plan-backward.ts";
import { forwardPlan, type Problem } from "../dsl/plan.ts";
import { cudaAvailable } from "../runtime/device.ts";
import { withManifestSchedules } from "../runtime/execute-gpu.ts";
import { Decoder, powerRetention, powerRetentionBackward, Tensor } from "../runtime/index.ts";
import { autoChunk } from "../runtime/kernels.ts";
import { loadNative } from "../runtime/native.ts";
import { medianMs, Pool, randomNormal } from "./gpu-timing.ts";

const H = 8, D = 64;
const reps = Number(process.env.REPS ?? 20);
const cases = (process.argv.length > 2 ? process.argv.slice(2) : ["1:4096", "1:16384", "16:1024"]).map((a) => {
  const m = /^(\d+):(\d+)$/.exec(a);
  if (!m) throw new Error(`expected b:t, received '${a}'`);
  return [Number(m[1]), Number(m[2])] as const;
});
const gpu = cudaAvailable();
if (!gpu.ok) throw new Error(`api-overhead needs a GPU: ${gpu.reason}`);
const native = loadNative();

/** Median wall ms of `run` on the host over reps runs (after 3 warm-ups). */
function hostMs(run: () => void): number {
  for (let i = 0; i < 3; i++) run();
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    run();
    t.push(performance.now() - t0);
  }
  return t.sort((a, b) => a - b)[t.length >> 1]!;
}

const rows: Record<string, unknown>[] = [];
for (const [b, t] of cases) {
  const chunk = process.env.CHUNK ? Number(process.env.CHUNK) : autoChunk({ deg: 2, d: D, e: D, dtype: "bf16", t, initialState: false, finalState: false }, gpu.name, 128);
  const n = b * t * H;
  const Q = Tensor.upload(randomNormal(n * D, "f32", 1), [b, t, H, D], "bf16");
  const K = Tensor.upload(randomNormal(n * D, "f32", 2), [b, t, H, D], "bf16");
  const V = Tensor.upload(randomNormal(n * D, "f32", 3), [b, t, H, D], "bf16");
  const G = Tensor.upload(new Float32Array(n).map((_, i) => -Math.log1p(Math.exp(-(4 + Math.sin(i * 12.9898) * 1.5)))), [b, t, H], "f32");
  const dY = Tensor.upload(randomNormal(n * D, "f32", 4), [b, t, H, D], "bf16");
  const fwd = (): void => {
    const r = powerRetention(Q, K, V, G, { chunk });
    r.Y.free();
    r.saved.free();
  };
  const both = (): void => {
    const r = powerRetention(Q, K, V, G, { chunk });
    const g = powerRetentionBackward(r.saved, dY);
    for (const x of [r.Y, g.dQ, g.dK, g.dV, g.dlogG]) x?.free();
    r.saved.free();
  };
  // the launches alone, into buffers allocated once (bench/retention.ts)
  const p: Problem = { b, t, hq: H, h: H, d: D, e: D, deg: 2, chunk, dtype: "bf16", scale: 1 / 8, gated: true, initialState: false };
  const fplan = withManifestSchedules((s) => forwardPlan(p, s), (x) => x).built, bplan = withManifestSchedules((s) => backwardPlan(p, s), (x) => x).built;
  const pool = new Pool(reps);
  pool.alloc(fplan);
  pool.alloc(bplan);
  for (const [name, src] of [["Q", Q], ["K", K], ["V", V], ["logG", G], ["dY", dY]] as const) pool.bufs.get(name)!.copyFrom(src.buffer);
  const lf = pool.launcher(fplan), lb = pool.launcher(bplan);
  for (const [pass, api, launch] of [["fwd", fwd, lf], ["fwd+bwd", both, () => (lf(), lb())]] as const) {
    const api_ms = medianMs(api, reps), host_ms = hostMs(api), launches_ms = medianMs(launch, reps);
    const row = { b, t, chunk, pass, api_ms, host_ms, launches_ms, ratio: api_ms / launches_ms, device: gpu.name };
    rows.push(row);
    console.log(JSON.stringify(row));
  }
  pool.free();
  for (const x of [Q, K, V, G, dY]) x.free();
}

for (const b of (process.env.DECODE_B ?? "1 16").split(/\s+/).filter(Boolean).map(Number)) {
  const c = 128;
  const dec = new Decoder({ b, hq: H, h: H, d: D, e: D, chunk: c, dtype: "bf16", gated: true });
  const tok = (i: number) => [
    Tensor.upload(randomNormal(b * H * D, "f32", 10 + i), [b, 1, H, D], "bf16"),
    Tensor.upload(randomNormal(b * H * D, "f32", 20 + i), [b, 1, H, D], "bf16"),
    Tensor.upload(randomNormal(b * H * D, "f32", 30 + i), [b, 1, H, D], "bf16"),
    Tensor.upload(new Float32Array(b * H).fill(-0.02), [b, 1, H], "f32"),
  ] as const;
  const x = tok(0);
  const step = (): void => dec.step(x[0], x[1], x[2], x[3]).free();
  const steps = Number(process.env.DECODE_STEPS ?? 200);
  const a = native.eventCreate(), e = native.eventCreate();
  const dev: number[] = [], host: number[] = [];
  for (let i = 0; i < steps; i++) {
    native.synchronize();
    const t0 = performance.now();
    native.eventRecord(a);
    step();
    native.eventRecord(e);
    host.push(performance.now() - t0);
    dev.push(native.eventElapsedMs(a, e));
  }
  native.eventDestroy(a);
  native.eventDestroy(e);
  const med = (v: number[]): number => v.sort((p, q) => p - q)[v.length >> 1]!;
  const row = { decode_b: b, steps, device_ms_per_step: med(dev), host_ms_per_step: med(host), device: gpu.name };
  rows.push(row);
  console.log(JSON.stringify(row));
  dec.free();
  for (const y of x) y.free();
}

console.log("\n| b x t | pass | API ms (events) | host ms | launches ms | API / launches |\n| --- | --- | --- | --- | --- | --- |");
for (const r of rows) if ("pass" in r) console.log(`| ${r.b} x ${r.t} | ${r.pass} | ${(r.api_ms as number).toFixed(3)} | ${(r.host_ms as number).toFixed(3)} | ${(r.launches_ms as number).toFixed(3)} | ${(r.ratio as number).toFixed(2)} |`);
for (const r of rows) if ("decode_b" in r) console.log(`decode b = ${r.decode_b}: ${(r.device_ms_per_step as number).toFixed(4)} ms of device time per step, ${(r.host_ms_per_step as number).toFixed(4)} ms on the host`);
