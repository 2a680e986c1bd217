// The native runtime layer: the addon loads anywhere; without a GPU every CUDA call fails with a
// clear Error; with one, memory, modules and launches work. GPU-only tests skip (visibly) here.

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, statSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ensureNativeAddon } from "../runtime/build-native.ts";
import { cudaAvailable, DeviceBuffer, POISON_NAN } from "../runtime/device.ts";
import { FuncAttr, isPrtError, loadNative, NativeAddonNotBuiltError, REPO_ROOT } from "../runtime/native.ts";

ensureNativeAddon(); // builds it (npm run build:native) if missing
const native = loadNative();
const gpu = cudaAvailable();
if (!gpu.ok) console.warn("GPU tests skipped: " + gpu.reason);

// ---- the test kernel fixture, compiled with nvcc when there is one ------------------------------

const FIXTURE = path.join(REPO_ROOT, "test", "fixtures", "axpy.cu");
const FATBIN = path.join(REPO_ROOT, "build", "test", "axpy.fatbin");

function findNvcc(): string | undefined {
  for (const c of [process.env.NVCC, "nvcc", "/usr/local/cuda/bin/nvcc"]) {
    if (!c) continue;
    try {
      execFileSync(c, ["--version"], { stdio: "pipe" });
      return c;
    } catch {
      /* next */
    }
  }
  return undefined;
}
const nvcc = findNvcc();
if (!nvcc) console.warn("nvcc not found: the fixture kernel is not compiled (a prebuilt build/test/axpy.fatbin is used if present)");

let fatbinCompiled: Promise<string | undefined> | undefined;
/** build/test/axpy.fatbin, freshly compiled if nvcc exists, else a prebuilt one, else undefined. */
function compileFixture(): Promise<string | undefined> {
  fatbinCompiled ??= (async () => {
    if (nvcc) {
      mkdirSync(path.dirname(FATBIN), { recursive: true });
      rmSync(FATBIN, { force: true });
      execFileSync(
        nvcc,
        [
          "-fatbin",
          "-gencode=arch=compute_80,code=sm_80",
          "-gencode=arch=compute_90a,code=sm_90a",
          "-o",
          FATBIN,
          FIXTURE,
        ],
        { stdio: "pipe", timeout: 120_000 },
      );
    }
    return existsSync(FATBIN) ? FATBIN : undefined;
  })();
  return fatbinCompiled;
}

// ---- everywhere ---------------------------------------------------------------------------------

describe("native addon", () => {
  it("loads without a GPU and exposes the runtime functions", () => {
    expect(native.abiVersion).toBe(2); // 2: the plan executor (runtime/native-plans.ts)
    for (const f of [
      "init", "lastError", "driverVersion", "deviceCount", "deviceName", "deviceComputeCapability",
      "deviceSmCount", "deviceAttribute", "memAlloc", "memFree", "memInfo", "memcpyHtoD", "memcpyDtoH",
      "memcpyDtoD", "memsetD8", "memsetD32", "moduleLoad", "moduleUnload", "moduleGetFunction",
      "functionSetMaxDynamicSmem", "functionGetAttribute", "launch", "synchronize", "lastLaunch",
      "eventCreate", "eventRecord", "eventElapsedMs", "eventDestroy",
    ] as const) {
      expect(typeof native[f], f).toBe("function");
    }
  });

  it("rejects bad arguments with TypeErrors before touching CUDA", () => {
    expect(() => native.memAlloc(-1)).toThrow(TypeError);
    expect(() => native.memAlloc(1.5)).toThrow(/non-negative safe integer/);
    expect(() => native.memFree(5 as unknown as bigint)).toThrow(/memFree: ptr must be a BigInt/);
    expect(() => native.memcpyHtoD(1n, [1, 2] as unknown as Float32Array)).toThrow(/Buffer, TypedArray or DataView/);
    expect(() => native.memsetD8(1n, 256, 1)).toThrow(/value must be an integer in \[0, 255\]/);
    const fn = 1n;
    expect(() => native.launch(fn, [1, 1, 1], [1, 1, 1], 0, [{ kind: "i32", value: 1.5 }], "k{n=1}")).toThrow(
      /launch of k\{n=1\}: argument 0 \(i32\) must be an integer/,
    );
    expect(() =>
      native.launch(fn, [1, 1, 1], [1, 1, 1], 0, [{ kind: "u8", value: 1 } as never], "k"),
    ).toThrow(/argument 0: unknown kind 'u8'/);
    expect(() => native.launch(fn, [1, 1, 1], [1, 1, 1], 0, [{ kind: "ptr", value: 16 } as never], "k")).toThrow(
      /argument 0 \(ptr\) must be a BigInt/,
    );
    expect(() => native.launch(fn, [0, 1, 1], [1, 1, 1], 0, [], "k")).toThrow(/launch of k: grid\[0\]/);
    expect(() => native.launch(0n, [1, 1, 1], [1, 1, 1], 0, [], "k")).toThrow(/null handle/);
    expect(() => DeviceBuffer.alloc(0)).toThrow(RangeError);
  });

  it("says how to build the addon when it is missing", () => {
    const e = new NativeAddonNotBuiltError("/nowhere/prt_native.node");
    expect(e.message).toMatch(/not built.*npm run build:native/);
  });
});

describe("test kernel fixture", () => {
  it.skipIf(!nvcc)("compiles with nvcc to a fatbin for sm_80 and sm_90a", async () => {
    const fatbin = await compileFixture();
    expect(fatbin).toBe(FATBIN);
    expect(statSync(FATBIN).size).toBeGreaterThan(0);
    expect(readFileSync(FATBIN).readUInt32LE(0)).toBe(0xba55ed50); // fatbin magic
  }, 120_000);
});

// ---- without a GPU ------------------------------------------------------------------------------

describe.skipIf(gpu.ok)("without CUDA", () => {
  it("cudaAvailable() says why, without throwing", () => {
    const r = cudaAvailable();
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.reason).toMatch(/libcuda\.so\.1 could not be loaded|no CUDA device/);
  });

  it("every CUDA call throws a clear Error naming the operation", () => {
    let caught: unknown;
    try {
      native.memAlloc(1024);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(Error);
    expect(isPrtError(caught)).toBe(true);
    expect((caught as Error).message).toMatch(/^cuMemAlloc\(1024 bytes\): no CUDA (driver|device)/);
    expect(() => DeviceBuffer.alloc(64)).toThrow(/cuMemAlloc\(64 bytes\): no CUDA/);
    expect(() => native.init()).toThrow(/no CUDA/);
    expect(() => native.moduleLoad("/tmp/x.fatbin")).toThrow(/module load of \/tmp\/x\.fatbin: no CUDA/);
    expect(() => native.launch(1n, [1, 1, 1], [32, 1, 1], 0, [], "prt_test_axpy{n=1}")).toThrow(
      /launch of prt_test_axpy\{n=1\}: no CUDA/,
    );
    expect(() => native.synchronize()).toThrow(/synchronize: no CUDA/);
    expect(() => native.eventCreate()).toThrow(/no CUDA/);
    expect(native.lastError()).toMatch(/no CUDA/);
  });
});

// ---- with a GPU ----------------------------------------------------------------------------------

function iota(n: number, f: (i: number) => number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = f(i);
  return a;
}

describe.skipIf(!gpu.ok)("with a GPU", () => {
  let fatbin: string | undefined;
  beforeAll(async () => {
    fatbin = await compileFixture();
    if (!fatbin) console.warn("GPU launch tests skipped: no nvcc and no prebuilt " + FATBIN);
  }, 120_000);

  it("describes device 0", () => {
    if (!gpu.ok) return;
    expect(gpu.name.length).toBeGreaterThan(0);
    expect(gpu.cc).toBeGreaterThanOrEqual(70);
    expect(gpu.sms).toBeGreaterThan(0);
    expect(native.deviceCount()).toBeGreaterThanOrEqual(1);
    const { free, total } = native.memInfo();
    expect(total).toBeGreaterThan(0);
    expect(free).toBeLessThanOrEqual(total);
  });

  it("round-trips data through device memory", () => {
    const src = iota(1027, (i) => Math.sin(i) * 1e3);
    const buf = DeviceBuffer.from(src);
    try {
      expect(buf.download(new Float32Array(1027))).toEqual(src);
      // partial upload / download at a byte offset
      buf.upload(new Float32Array([7, 8, 9]), 4 * 10);
      const part = buf.download(new Float32Array(5), 4 * 9);
      expect(Array.from(part)).toEqual([src[9], 7, 8, 9, src[13]]);
      // device-to-device
      const other = DeviceBuffer.alloc(buf.bytes);
      other.copyFrom(buf);
      expect(other.download(new Float32Array(1027))[11]).toBe(8);
      other.zero();
      expect(other.download(new Uint8Array(other.bytes)).every((b) => b === 0)).toBe(true);
      other.free();
      expect(() => buf.upload(new Float32Array(2000))).toThrow(RangeError);
    } finally {
      buf.free();
    }
    expect(buf.freed).toBe(true);
    expect(() => buf.ptr).toThrow(/use after free/);
    buf.free(); // idempotent
  });

  it("poisons buffers with NaN (and custom patterns), including a ragged tail", () => {
    const buf = DeviceBuffer.alloc(4 * 10 + 3);
    try {
      buf.poison();
      const words = buf.download(new Float32Array(10));
      expect(words.every(Number.isNaN)).toBe(true);
      expect(Array.from(buf.download(new Uint8Array(3), 40))).toEqual([0xff, 0xff, 0xff]);
      buf.poison(0x7fc00001);
      expect(buf.download(new Uint32Array(10)).every((w) => w === 0x7fc00001)).toBe(true);
      expect(Array.from(buf.download(new Uint8Array(3), 40))).toEqual([0x01, 0x00, 0xc0]);
      expect(POISON_NAN >>> 0).toBe(0xffffffff);
    } finally {
      buf.free();
    }
  });

  it("loads a fatbin and launches a kernel", (ctx) => {
    if (!fatbin) return ctx.skip();
    const mod = native.moduleLoad(fatbin);
    try {
      const fn = native.moduleGetFunction(mod, "prt_test_axpy");
      expect(native.functionGetAttribute(fn, FuncAttr.MAX_THREADS_PER_BLOCK)).toBeGreaterThan(0);
      native.functionSetMaxDynamicSmem(fn, 0);
      const n = 1000;
      const x = iota(n, (i) => i % 7);
      const y0 = iota(n, (i) => i % 5);
      const X = DeviceBuffer.from(x);
      const Y = DeviceBuffer.alloc(4 * (n + 16));
      Y.poison();
      Y.upload(y0);
      try {
        const start = native.eventCreate();
        const end = native.eventCreate();
        native.eventRecord(start);
        native.launch(
          fn,
          [Math.ceil(n / 256), 1, 1],
          [256, 1, 1],
          0,
          [
            { kind: "ptr", value: Y.ptr },
            { kind: "ptr", value: X.ptr },
            { kind: "f32", value: 2.5 },
            { kind: "i32", value: n },
          ],
          "prt_test_axpy{n=1000}",
        );
        native.eventRecord(end);
        native.synchronize();
        expect(native.eventElapsedMs(start, end)).toBeGreaterThanOrEqual(0);
        native.eventDestroy(start);
        native.eventDestroy(end);
        expect(native.lastLaunch()).toBe("prt_test_axpy{n=1000}");
        const y = Y.download(new Float32Array(n + 16));
        for (let i = 0; i < n; i++) expect(y[i]).toBe(2.5 * x[i] + y0[i]);
        for (let i = n; i < n + 16; i++) expect(Number.isNaN(y[i])).toBe(true); // untouched poison
      } finally {
        X.free();
        Y.free();
      }

      // 64-bit scalar arguments arrive intact
      const f64 = native.moduleGetFunction(mod, "prt_test_i64");
      const out = DeviceBuffer.alloc(8);
      try {
        const v = 0x123456789abcdefn;
        native.launch(f64, [1, 1, 1], [32, 1, 1], 0, [{ kind: "ptr", value: out.ptr }, { kind: "i64", value: -v }], "prt_test_i64");
        native.synchronize();
        expect(out.download(new BigInt64Array(1))[0]).toBe(-v);
      } finally {
        out.free();
      }
    } finally {
      native.moduleUnload(mod);
    }
  });

  it("reports launch and lookup errors with the kernel, spec and file", (ctx) => {
    if (!fatbin) return ctx.skip();
    const mod = native.moduleLoad(fatbin);
    try {
      expect(() => native.moduleGetFunction(mod, "no_such_kernel")).toThrow(
        /cuModuleGetFunction\(no_such_kernel\) in .*axpy\.fatbin failed: CUDA_ERROR_NOT_FOUND/,
      );
      const fn = native.moduleGetFunction(mod, "prt_test_axpy");
      expect(() =>
        native.launch(fn, [1, 1, 1], [4096, 1, 1], 0, [
          { kind: "ptr", value: 0n },
          { kind: "ptr", value: 0n },
          { kind: "f32", value: 0 },
          { kind: "i32", value: 0 },
        ], "prt_test_axpy{block=4096}"),
      ).toThrow(/launch of prt_test_axpy\{block=4096\} failed: CUDA_ERROR_INVALID_VALUE .*block=\(4096,1,1\)/);
      expect(() => native.functionSetMaxDynamicSmem(fn, 1 << 30)).toThrow(
        /cuFuncSetAttribute\(MAX_DYNAMIC_SHARED_SIZE_BYTES = 1073741824\) on prt_test_axpy \(in .*axpy\.fatbin\) failed: CUDA_ERROR_INVALID_VALUE/,
      );
      native.synchronize(); // the context survived (those errors are not sticky)
    } finally {
      native.moduleUnload(mod);
    }
    expect(() => native.moduleLoad(FIXTURE)).toThrow(/cuModuleLoadData\(.*axpy\.cu\) failed: CUDA_ERROR_/);
    expect(() => native.moduleLoad("/nonexistent/k.fatbin")).toThrow(/module load of \/nonexistent\/k\.fatbin failed: cannot open file/);
  });
});
