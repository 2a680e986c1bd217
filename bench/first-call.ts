// First-call latency: from process start to the first powerRetention result back on the host
// (module load, driver init, fatbin load, allocation, launches, copy back). Run it in a fresh process:
//   node --import tsx bench/first-call.ts
import { performance } from "node:perf_hooks";
import { Tensor, powerRetention } from "../runtime/index.ts";

const atImport = performance.now();
const b = 1, t = 1024, h = 8, d = 64;
const rnd = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + s) * 0.8);
const Q = Tensor.upload(rnd(b * t * h * d, 1), [b, t, h, d], "bf16");
const K = Tensor.upload(rnd(b * t * h * d, 2), [b, t, h, d], "bf16");
const V = Tensor.upload(rnd(b * t * h * d, 3), [b, t, h, d], "bf16");
const G = Tensor.upload(new Float32Array(b * t * h).fill(-0.02), [b, t, h], "f32");
const { Y } = powerRetention(Q, K, V, G, { deg: 2, chunk: 128 });
const y = Y.download();
const done = performance.now();
if (y.some((v) => !Number.isFinite(v))) throw new Error("first call produced a non-finite output");
console.log(JSON.stringify({ first_call_ms: done, imports_ms: atImport, call_ms: done - atImport, t, note: "ms since process start (performance.timeOrigin)" }));
