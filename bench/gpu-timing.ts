// What the GPU bench scripts share: CUDA-event timing, random (never zero) inputs, NaN checks.

import type { DType } from "../dsl/dtype.ts";
import { bf16Bits, f16Bits } from "../runtime/convert.ts";
import { DeviceBuffer } from "../runtime/device.ts";
import { loadNative } from "../runtime/native.ts";
import { dtypeBytes } from "../dsl/dtype.ts";
import { numel, type Plan } from "../dsl/plan-types.ts";
import { preparePlan } from "../runtime/execute-gpu.ts";
import { launchKernel, loadKernel } from "../runtime/kernels.ts";

/** Median ms of `run` over `reps` repeats after 3 warm-up runs, timed with CUDA events. */
export function medianMs(run: () => void, reps: number): number {
  const native = loadNative();
  const a = native.eventCreate(), b = native.eventCreate();
  for (let i = 0; i < 3; i++) run();
  native.synchronize();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    native.eventRecord(a);
    run();
    native.eventRecord(b);
    times.push(native.eventElapsedMs(a, b));
  }
  native.eventDestroy(a);
  native.eventDestroy(b);
  times.sort((x, y) => x - y);
  return times[times.length >> 1]!;
}

/** n draws of N(0, scale^2) from `seed`, as device bits of `dtype` (u16 for f16/bf16). */
export function randomNormal(n: number, dtype: DType, seed: number, scale = 1): Uint16Array | Float32Array {
  let x = Math.imul(seed, 2654435761) >>> 0 || 1;
  const normal = (): number => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const u = x / 2 ** 32, w = ((Math.imul(x, 22695477) + 1) >>> 0) / 2 ** 32;
    return scale * Math.sqrt(-2 * Math.log(u + 1e-12)) * Math.cos(2 * Math.PI * w);
  };
  if (dtype === "f32") return Float32Array.from({ length: n }, normal);
  const enc = dtype === "bf16" ? bf16Bits : f16Bits;
  return Uint16Array.from({ length: n }, () => enc(normal()));
}

/** Whether a device buffer of `dtype` holds a NaN (an element no kernel wrote reads as NaN after poisoning). */
export function hasNaN(buf: DeviceBuffer, dtype: DType): boolean {
  const words = new Uint32Array(Math.ceil(buf.bytes / 4));
  buf.download(words);
  if (dtype === "f32") return new Float32Array(words.buffer).some((v) => Number.isNaN(v));
  const h = new Uint16Array(words.buffer, 0, buf.bytes / 2);
  return dtype === "bf16" ? h.some((v) => (v & 0x7f80) === 0x7f80 && (v & 0x7f) !== 0) : h.some((v) => (v & 0x7c00) === 0x7c00 && (v & 0x3ff) !== 0);
}

/** Runs plans over one pool of device buffers (a name is one buffer across plans). */
export class Pool {
  constructor(private readonly reps: number = 20) {}
  readonly bufs = new Map<string, DeviceBuffer>();
  alloc(plan: Plan): void {
    for (const b of plan.buffers) {
      if (this.bufs.has(b.name)) continue;
      const buf = DeviceBuffer.alloc(numel(b.shape) * dtypeBytes(b.dtype));
      if (b.init === "zeros") buf.zero();
      else buf.poison();
      this.bufs.set(b.name, buf);
    }
  }
  launcher(plan: Plan): () => void {
    const prepared = preparePlan(plan);
    const fns = prepared.map((p) => loadKernel(p.entry));
    return () =>
      prepared.forEach((p, i) => launchKernel(fns[i]!, p.entry, p.kernel, p.grid, p.step.params, (t) => this.bufs.get(p.step.bind[t]!)!.ptr, p.what));
  }
  /** Median ms of each launch of the plan alone (PROFILE=1). */
  profile(plan: Plan): { kernel: string; grid: string; ms: number }[] {
    const prepared = preparePlan(plan);
    const fns = prepared.map((p) => loadKernel(p.entry));
    return prepared.map((p, i) => ({
      kernel: p.kernel.name,
      grid: p.grid.join("x") + ` smem=${p.entry.smemBytes}`,
      ms: medianMs(() => launchKernel(fns[i]!, p.entry, p.kernel, p.grid, p.step.params, (t) => this.bufs.get(p.step.bind[t]!)!.ptr, p.what), this.reps),
    }));
  }
  hasNaN(name: string): boolean {
    return hasNaN(this.bufs.get(name)!, name === "dlogG" || name === "lse" ? "f32" : "bf16");
  }
  free(): void {
    for (const b of this.bufs.values()) b.free();
    this.bufs.clear();
  }
}

