// A stand-in for the native addon that runs on the CPU: device memory is host memory, and a launch
// runs the DSL kernel behind the launched symbol (found through the manifests) in the interpreter,
// after checking what a real launch would check (block size, dynamic shared memory and its opt-in
// attribute, argument count and kinds, grid). With it, the whole GPU path of the runtime (allocate,
// poison, bind, order arguments, launch, read back, convert) runs without a GPU, and its results
// must equal dsl/execute-cpu.ts's bit for bit. It never stands in for a real GPU test: the
// generated CUDA is not involved.
//
// Use: call installInterpDevice() before anything loads the addon (loadNative / cudaAvailable) in
// the process; it points PRT_NATIVE_ADDON at a tiny CommonJS file that hands out this object, and
// PRT_KERNEL_DIR at placeholder fatbins.

import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { dtypeBytes } from "../../dsl/dtype.ts";
import { interpret, tensorDims } from "../../dsl/interpret.ts";
import type { Kernel } from "../../dsl/ir.ts";
import { KERNELS } from "../../dsl/kernels/index.ts";
import { decode, encode } from "../../runtime/convert.ts";
import { POISON_NAN } from "../../runtime/device.ts";
import { evalGrid } from "../../runtime/execute-gpu.ts";
import { loadManifests, type ManifestKernel } from "../../runtime/kernels.ts";
import type { KernelArg, PrtNative } from "../../runtime/native.ts";

const DEFAULT_SMEM = 48 * 1024;
const MAX_SMEM_OPTIN = 232448; // sm_90

class MockCudaError extends Error {
  readonly code = "PRT_ECUDA";
}

interface Region {
  readonly base: bigint;
  readonly bytes: Uint8Array;
}

interface Fn {
  readonly entry: ManifestKernel;
  readonly kernel: Kernel;
  maxDynamicSmem: number;
}

export interface InterpDeviceStats {
  launches: number;
  allocated: number;
  /** memsets with the NaN pattern (runtime/device.ts POISON_NAN): buffers poisoned. */
  poisoned: number;
  readonly perKernel: Map<string, number>;
}

function makeDevice(stats: InterpDeviceStats): PrtNative {
  const regions = new Map<bigint, Region>();
  let next = 0x7f0000000000n;
  let lastLaunch = "";
  const modules = new Map<bigint, string>();
  const fns = new Map<bigint, Fn>();
  const events = new Map<bigint, number>();
  let handle = 1n;
  const built = new Map<string, Kernel>();

  /** The region holding [ptr, ptr + len), and the offset of ptr in it. */
  const at = (op: string, ptr: bigint, len: number): [Region, number] => {
    for (const r of regions.values()) {
      const off = ptr - r.base;
      if (off >= 0n && off < BigInt(Math.max(1, r.bytes.length))) {
        if (Number(off) + len > r.bytes.length)
          throw new MockCudaError(`${op}: ${len} bytes at 0x${ptr.toString(16)} run past the end of an allocation of ${r.bytes.length} (CUDA_ERROR_INVALID_VALUE)`);
        return [r, Number(off)];
      }
    }
    throw new MockCudaError(`${op}: 0x${ptr.toString(16)} is not device memory (CUDA_ERROR_INVALID_VALUE)`);
  };
  const bytesOf = (v: ArrayBufferView): Uint8Array => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);

  const dev: PrtNative = {
    abiVersion: 1,
    init() {},
    lastError: () => "",
    driverVersion: () => 13000,
    deviceCount: () => 1,
    deviceName: () => "CPU interpreter (mock device)",
    deviceComputeCapability: () => [9, 0],
    deviceSmCount: () => 1,
    deviceAttribute: () => 0,
    memAlloc(bytes) {
      const n = Number(bytes);
      const base = next;
      next += BigInt(Math.ceil(Math.max(1, n) / 256) * 256 + 256);
      regions.set(base, { base, bytes: new Uint8Array(n) });
      stats.allocated++;
      return base;
    },
    memFree(ptr) {
      if (ptr === 0n) return;
      if (!regions.delete(ptr)) throw new MockCudaError(`cuMemFree(0x${ptr.toString(16)}): not an allocation (CUDA_ERROR_INVALID_VALUE)`);
      stats.allocated--;
    },
    memInfo: () => ({ free: 2 ** 34, total: 2 ** 35 }),
    memcpyHtoD(dst, src) {
      const [r, off] = at("cuMemcpyHtoD", dst, src.byteLength);
      r.bytes.set(bytesOf(src), off);
    },
    memcpyDtoH(dst, src) {
      const [r, off] = at("cuMemcpyDtoH", src, dst.byteLength);
      bytesOf(dst).set(r.bytes.subarray(off, off + dst.byteLength));
    },
    memcpyDtoD(dst, src, bytes) {
      const n = Number(bytes);
      const [s, so] = at("cuMemcpyDtoD", src, n);
      const [d, dOff] = at("cuMemcpyDtoD", dst, n);
      d.bytes.set(s.bytes.slice(so, so + n), dOff);
    },
    memsetD8(dst, value, count) {
      const n = Number(count);
      const [r, off] = at("cuMemsetD8", dst, n);
      r.bytes.fill(value, off, off + n);
    },
    memsetD32(dst, value, count) {
      const n = Number(count);
      const [r, off] = at("cuMemsetD32", dst, 4 * n);
      const dv = new DataView(r.bytes.buffer, r.bytes.byteOffset);
      for (let i = 0; i < n; i++) dv.setUint32(off + 4 * i, value >>> 0, true);
      if (value >>> 0 === POISON_NAN >>> 0) stats.poisoned++;
    },
    moduleLoad(file) {
      if (!existsSync(file)) throw new MockCudaError(`module load of ${file} failed: cannot open file`);
      const h = handle++;
      modules.set(h, path.resolve(file));
      return h;
    },
    moduleUnload(mod) {
      modules.delete(mod);
    },
    moduleGetFunction(mod, name) {
      const file = modules.get(mod);
      if (!file) throw new MockCudaError(`cuModuleGetFunction(${name}): invalid module handle`);
      const entry = loadManifests()
        .flatMap((m) => m.kernels)
        .find((k) => k.symbol === name && path.basename(k.fatbin) === path.basename(file));
      if (!entry) throw new MockCudaError(`cuModuleGetFunction(${name}) in ${file} failed: CUDA_ERROR_NOT_FOUND (named symbol not found)`);
      const key = entry.symbol;
      let kernel = built.get(key);
      if (!kernel) {
        const def = KERNELS.find((k) => k.name === entry.name);
        if (!def) throw new MockCudaError(`${name}: no DSL kernel named ${entry.name}`);
        kernel = def.build(entry.spec, entry.schedule);
        built.set(key, kernel);
      }
      const h = handle++;
      fns.set(h, { entry, kernel, maxDynamicSmem: DEFAULT_SMEM });
      return h;
    },
    functionSetMaxDynamicSmem(fn, bytes) {
      const f = fns.get(fn);
      if (!f) throw new MockCudaError("cuFuncSetAttribute: invalid function handle");
      if (bytes > MAX_SMEM_OPTIN) throw new MockCudaError(`cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES = ${bytes}) failed: CUDA_ERROR_INVALID_VALUE`);
      f.maxDynamicSmem = bytes;
    },
    functionGetAttribute: () => 0,
    launch(fn, grid, block, smemBytes, args: readonly KernelArg[], what) {
      const f = fns.get(fn);
      if (!f) throw new MockCudaError(`launch of ${what}: invalid function handle`);
      const { entry, kernel } = f;
      const fail = (why: string): never => {
        throw new MockCudaError(`launch of ${what} failed: ${why}`);
      };
      if (block[0] !== entry.threads || (block[1] ?? 1) !== 1 || (block[2] ?? 1) !== 1)
        fail(`block (${block}) is not the manifest's ${entry.threads} threads`);
      if (smemBytes !== entry.smemBytes) fail(`${smemBytes} bytes of dynamic shared memory, the manifest says ${entry.smemBytes}`);
      if (smemBytes > f.maxDynamicSmem) fail(`CUDA_ERROR_INVALID_VALUE: ${smemBytes} bytes of dynamic shared memory without raising the limit (${f.maxDynamicSmem})`);
      if (args.length !== entry.args.length) fail(`${args.length} arguments, the kernel takes ${entry.args.length}`);
      const params: Record<string, number> = {};
      const ptrs: Record<string, bigint> = {};
      entry.args.forEach((name, i) => {
        const a = args[i]!;
        const t = kernel.tensors.find((x) => x.name === name);
        if (t) {
          if (a.kind !== "ptr") fail(`argument ${i} (${name}) is a tensor, passed as ${a.kind}`);
          ptrs[name] = a.value as bigint;
          return;
        }
        const p = kernel.params.find((x) => x.name === name)!;
        if (a.kind !== p.type) fail(`argument ${i} (${name}) is ${p.type}, passed as ${a.kind}`);
        if (p.type === "i32" && !Number.isInteger(a.value)) fail(`argument ${i} (${name}) is not an integer`);
        params[name] = a.value as number; // f32 params unrounded, as dsl/execute-cpu.ts passes them
      });
      const g = evalGrid(kernel, params);
      if (g.some((x, i) => x !== (grid[i] ?? 1))) fail(`grid (${grid}) is not the kernel's (${g})`);
      const dims = tensorDims(kernel, params);
      // Each distinct (pointer, dtype) becomes one array, so aliased bindings alias here too.
      const views = new Map<string, { r: Region; off: number; bytes: number; data: Float32Array; dtype: (typeof kernel.tensors)[number]["dtype"]; written: boolean }>();
      const tensors: Record<string, Float32Array> = {};
      for (const t of kernel.tensors) {
        const n = dims.get(t.name)!.reduce((x, y) => x * y, 1);
        const bytes = n * dtypeBytes(t.dtype);
        const key = `${ptrs[t.name]}/${t.dtype}/${bytes}`;
        let v = views.get(key);
        if (!v) {
          const [r, off] = at(`launch of ${what}, tensor ${t.name}`, ptrs[t.name]!, bytes);
          v = { r, off, bytes, data: decode(r.bytes.subarray(off, off + bytes), t.dtype), dtype: t.dtype, written: false };
          views.set(key, v);
        }
        if (t.role === "out") v.written = true;
        tensors[t.name] = v.data;
      }
      interpret(kernel, { tensors, params });
      for (const v of views.values()) {
        if (!v.written) continue;
        const raw = encode(v.data, v.dtype);
        v.r.bytes.set(new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength), v.off);
      }
      lastLaunch = what;
      stats.launches++;
      stats.perKernel.set(entry.name, (stats.perKernel.get(entry.name) ?? 0) + 1);
    },
    synchronize() {},
    lastLaunch: () => lastLaunch,
    eventCreate() {
      const h = handle++;
      events.set(h, 0);
      return h;
    },
    eventRecord(ev) {
      events.set(ev, performance.now());
    },
    eventElapsedMs: (a, b) => (events.get(b) ?? 0) - (events.get(a) ?? 0),
    eventDestroy(ev) {
      events.delete(ev);
    },
  };
  return dev;
}

/**
 * Make this process's "GPU" the interpreter. Must run before the addon is first loaded. Creates
 * placeholder fatbins for every manifest found (the mock only checks that they exist) in a fresh
 * folder, and points PRT_KERNEL_DIR there. Returns launch statistics.
 */
export function installInterpDevice(): InterpDeviceStats {
  const stats: InterpDeviceStats = { launches: 0, allocated: 0, poisoned: 0, perKernel: new Map() };
  const dir = mkdtempSync(path.join(tmpdir(), "prt-interp-device-"));
  const addon = path.join(dir, "interp-device.cjs");
  (globalThis as Record<string, unknown>).__prtInterpDevice = makeDevice(stats);
  writeFileSync(addon, "module.exports = globalThis.__prtInterpDevice;\n");
  process.env.PRT_NATIVE_ADDON = addon;
  const kdir = path.join(dir, "kernels");
  mkdirSync(kdir);
  process.env.PRT_KERNEL_DIR = kdir;
  for (const m of loadManifests()) for (const k of m.kernels) writeFileSync(path.join(kdir, path.basename(k.fatbin)), "placeholder fatbin (interp-device)\n");
  return stats;
}
