// Exercise every kernel once on a small problem, for compute-sanitizer (memcheck, racecheck):
//   compute-sanitizer --tool memcheck node --import tsx bench/sanitize.ts
// Forward (multi-chunk, ragged tail, GQA, gated, initial + final state), backward with a state
// gradient, and a decoder across a fold. SPEC=p2_d64_e64_c64_bf16 style env var picks the spec.
import { Decoder, Tensor, powerRetention, powerRetentionBackward } from "../runtime/index.ts";
import type { DType } from "../dsl/dtype.ts";

const m = /^p(\d+)_d(\d+)_e(\d+)_c(\d+)_(f32|f16|bf16)$/.exec(process.env.SPEC ?? "p2_d32_e32_c64_bf16");
if (!m) throw new Error(`SPEC: expected like p2_d32_e32_c64_bf16, received ${process.env.SPEC}`);
const [deg, d, e, chunk] = m.slice(1, 5).map(Number) as [number, number, number, number];
const dtype = m[5] as DType;
const b = 1, t = chunk * 2 + 7, hq = 4, h = 2;
const rnd = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + s * 78.233) * 0.9);
const up = (n: number[], s: number, dt: DType = dtype) => Tensor.upload(rnd(n.reduce((x, y) => x * y), s), n, dt);
const Q = up([b, t, hq, d], 1), K = up([b, t, h, d], 2), V = up([b, t, h, e], 3);
const G = Tensor.upload(rnd(b * t * h, 4).map((x) => -Math.abs(x) * 0.1), [b, t, h], "f32");
const first = powerRetention(Q, K, V, G, { deg, chunk, returnState: true });
const { Y, saved, state } = powerRetention(Q, K, V, G, { deg, chunk, initialState: first.state!, returnState: true });
const dY = up([b, t, hq, e], 5);
const grads = powerRetentionBackward(saved, dY, { dState: { S: state!.S, Z: state!.Z } });
const dec = new Decoder({ b, hq, h, d, e, deg, chunk, dtype, gated: true });
const ys: Float32Array[] = [];
const steps = Number(process.env.DECODE_STEPS ?? chunk + 3); // across a fold by default
for (let i = 0; i < steps; i++) {
  const q = up([b, 1, hq, d], 10 + i), k = up([b, 1, h, d], 20 + i), v = up([b, 1, h, e], 30 + i);
  const g = Tensor.upload([-0.01, -0.02].slice(0, h), [b, 1, h], "f32");
  ys.push(dec.step(q, k, v, g).download());
}
const all = [Y.download(), grads.dQ.download(), grads.dK.download(), grads.dV.download(), grads.dlogG!.download(), ...ys];
if (all.some((a) => a.some((x) => !Number.isFinite(x)))) throw new Error("non-finite output");
console.log(`sanitize run ${process.env.SPEC ?? "p2_d32_e32_c64_bf16"}: forward, backward, ${steps} decode steps ok`);
