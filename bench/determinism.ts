// Run-to-run determinism on the GPU: the forward and the backward, run RUNS times on the same
// inputs through the public API, must give bitwise identical outputs (no kernel uses atomics; every
// reduction has a fixed order). Prints one line per output with the number of differing elements.
//   node --import tsx bench/determinism.ts        env: SPEC=p2_d64_e64_c128_bf16 T=4103 RUNS=3
import { Tensor, powerRetention, powerRetentionBackward } from "../runtime/index.ts";
import type { DType } from "../dsl/dtype.ts";

const spec = process.env.SPEC ?? "p2_d64_e64_c128_bf16";
const m = /^p(\d+)_d(\d+)_e(\d+)_c(\d+)_(f32|f16|bf16)$/.exec(spec);
if (!m) throw new Error(`SPEC: expected like p2_d64_e64_c128_bf16, received ${spec}`);
const [deg, d, e, chunk] = m.slice(1, 5).map(Number) as [number, number, number, number];
const dtype = m[5] as DType;
const b = 2, hq = 4, h = 2, t = Number(process.env.T ?? chunk * 32 + 7), runs = Number(process.env.RUNS ?? 3);
const rnd = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + s * 78.233) * 1.3);
const up = (n: number[], s: number) => Tensor.upload(rnd(n.reduce((x, y) => x * y), s), n, dtype);
const Q = up([b, t, hq, d], 1), K = up([b, t, h, d], 2), V = up([b, t, h, e], 3), dY = up([b, t, hq, e], 5);
const G = Tensor.upload(rnd(b * t * h, 4).map((x) => -Math.abs(x) * 0.05), [b, t, h], "f32");

function once(): Record<string, Float32Array> {
  const { Y, saved, state } = powerRetention(Q, K, V, G, { deg, chunk, returnState: true });
  const g = powerRetentionBackward(saved, dY, { dState: { S: state!.S, Z: state!.Z } });
  return { Y: Y.download(), S: state!.S.download(), dQ: g.dQ.download(), dK: g.dK.download(), dV: g.dV.download(), dlogG: g.dlogG!.download() };
}

const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);
const first = once();
let bad = 0;
for (let r = 1; r < runs; r++) {
  const next = once();
  for (const [name, a] of Object.entries(first)) {
    const x = bits(a), y = bits(next[name]!);
    let diff = 0;
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) diff++;
    console.log(`${spec} t=${t} run ${r + 1} vs 1: ${name.padEnd(5)} ${x.length} elements, ${diff} differ`);
    bad += diff;
  }
}
console.log(bad === 0 ? `determinism ${spec}: bitwise identical over ${runs} runs` : `determinism ${spec}: ${bad} elements differ`);
process.exitCode = bad === 0 ? 0 : 1;
