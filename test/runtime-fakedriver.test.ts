// The native runtime against a fake libcuda (test/fixtures/fake_libcuda.c, loaded through
// PRT_LIBCUDA): runs the whole path (init, memory, modules, launches, errors) on any machine.
// Fake "device" memory is host memory, so copies and memsets move real bytes.
//
// The driver is process-global state, so this lives in its own test file (its own process).

import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ensureNativeAddon } from "../runtime/build-native.ts";
import { cudaAvailable, DeviceBuffer } from "../runtime/device.ts";
import { addonPath, FuncAttr, loadNative, REPO_ROOT } from "../runtime/native.ts";

const OUT = path.join(REPO_ROOT, "build", "test");
const FAKE_SO = path.join(OUT, "fake-libcuda.so");
const FAKE_MODULE = path.join(OUT, "fake.cubin");

function buildFake(): string | undefined {
  try {
    mkdirSync(OUT, { recursive: true });
    execFileSync("cc", ["-shared", "-fPIC", "-O1", "-o", FAKE_SO, path.join(REPO_ROOT, "test", "fixtures", "fake_libcuda.c")], {
      stdio: "pipe",
    });
    writeFileSync(FAKE_MODULE, "FAKECUBIN\n");
    return undefined;
  } catch (e) {
    return `cannot compile the fake driver: ${(e as Error).message}`;
  }
}

ensureNativeAddon();
const skipReason = buildFake();
if (skipReason) console.warn("fake-driver tests skipped: " + skipReason);
else process.env.PRT_LIBCUDA = FAKE_SO; // read by the core at its first dlopen

describe.skipIf(!!skipReason)("runtime on a fake driver", () => {
  const native = loadNative();

  it("cudaAvailable() reports the (fake) device", () => {
    expect(cudaAvailable()).toEqual({ ok: true, name: "Fake CUDA Device", cc: 90, sms: 132, driverVersion: 13000 });
    expect(native.deviceCount()).toBe(1);
    expect(native.memInfo()).toEqual({ free: 2 ** 30, total: 2 ** 31 });
  });

  it("DeviceBuffer: upload, download, offsets, poison, zero, copy, free", () => {
    const src = new Float32Array([1, 2, 3, 4, 5]);
    const a = DeviceBuffer.from(src);
    expect(a.bytes).toBe(20);
    expect(a.download(new Float32Array(5))).toEqual(src);
    a.upload(new Float32Array([9]), 8);
    expect(Array.from(a.download(new Float32Array(2), 4))).toEqual([2, 9]);
    expect(() => a.download(new Float32Array(5), 4)).toThrow(/20 bytes at offset 4 exceed the buffer's 20 bytes/);

    const b = DeviceBuffer.alloc(11);
    b.poison();
    expect(b.download(new Float32Array(2)).every(Number.isNaN)).toBe(true);
    expect(Array.from(b.download(new Uint8Array(11)))).toEqual(new Array(11).fill(0xff));
    b.poison(0x11223344);
    expect(Array.from(b.download(new Uint8Array(11)))).toEqual([0x44, 0x33, 0x22, 0x11, 0x44, 0x33, 0x22, 0x11, 0x44, 0x33, 0x22]);
    b.zero();
    expect(b.download(new Uint8Array(11)).every((x) => x === 0)).toBe(true);
    b.copyFrom(a, 8, 3);
    expect(Array.from(b.download(new Uint8Array(11)))).toEqual([0, 0, 0, ...new Uint8Array(src.buffer, 0, 8), 0, 0, 0].slice(0, 11));
    expect(() => b.copyFrom(a)).toThrow(RangeError);
    a.free();
    b.free();
    expect(() => a.ptr).toThrow(/use after free/);
  });

  it("loads a module, launches with typed arguments, times with events", () => {
    const mod = native.moduleLoad(FAKE_MODULE);
    const fill = native.moduleGetFunction(mod, "fake_fill");
    expect(native.functionGetAttribute(fill, FuncAttr.NUM_REGS)).toBe(32);
    native.functionSetMaxDynamicSmem(fill, 100 * 1024);
    const y = DeviceBuffer.alloc(4 * 8);
    y.poison();
    const t0 = native.eventCreate();
    const t1 = native.eventCreate();
    native.eventRecord(t0);
    native.launch(fill, [1, 1, 1], [32, 1, 1], 0, [
      { kind: "ptr", value: y.ptr },
      { kind: "f32", value: 1.25 },
      { kind: "i32", value: 5 },
    ], "fake_fill{n=5}");
    native.eventRecord(t1);
    native.synchronize();
    expect(native.eventElapsedMs(t0, t1)).toBeGreaterThanOrEqual(0);
    native.eventDestroy(t0);
    native.eventDestroy(t1);
    const out = y.download(new Float32Array(8));
    expect(Array.from(out.subarray(0, 5))).toEqual([1.25, 1.25, 1.25, 1.25, 1.25]);
    expect(out.subarray(5).every(Number.isNaN)).toBe(true);
    expect(native.lastLaunch()).toBe("fake_fill{n=5}");
    y.free();
    native.moduleUnload(mod);
  });

  it("names the operation, CUDA error, kernel, spec and file in errors", () => {
    const mod = native.moduleLoad(FAKE_MODULE);
    expect(() => native.moduleGetFunction(mod, "missing_kernel")).toThrow(
      `cuModuleGetFunction(missing_kernel) in ${FAKE_MODULE} failed: CUDA_ERROR_NOT_FOUND (named symbol not found)`,
    );
    expect(() => native.moduleLoad(FAKE_SO)).toThrow(
      `cuModuleLoadData(${FAKE_SO}) failed: CUDA_ERROR_INVALID_IMAGE (device kernel image is invalid)`,
    );
    expect(() => native.moduleLoad(path.join(OUT, "absent.fatbin"))).toThrow(/module load of .*absent\.fatbin failed: cannot open file/);
    const fill = native.moduleGetFunction(mod, "fake_fill");
    expect(() => native.functionSetMaxDynamicSmem(fill, 300_000)).toThrow(
      `cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES = 300000) on fake_fill (in ${FAKE_MODULE}) failed: CUDA_ERROR_INVALID_VALUE (invalid argument)`,
    );
    let err: (Error & { code?: string }) | undefined;
    try {
      native.launch(fill, [3, 2, 1], [64, 32, 1], 1024, [], "fake_fill{tile=64x32}");
    } catch (e) {
      err = e as Error;
    }
    expect(err?.message).toBe(
      "launch of fake_fill{tile=64x32} failed: CUDA_ERROR_INVALID_VALUE (invalid argument) [grid=(3,2,1) block=(64,32,1) smem=1024]",
    );
    expect(err?.code).toBe("PRT_ECUDA");
    expect(native.lastError()).toBe(err?.message);
  });

  it("reports an asynchronous fault at synchronize() with the last launch (sticky, so last)", () => {
    const mod = native.moduleLoad(FAKE_MODULE);
    const fault = native.moduleGetFunction(mod, "fake_fault");
    const buf = DeviceBuffer.alloc(16);
    native.launch(fault, [1, 1, 1], [1, 1, 1], 0, [], "fake_fault{B=2,T=1024}");
    expect(() => native.synchronize()).toThrow(
      "synchronize failed: CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was encountered); last launch: fake_fault{B=2,T=1024}",
    );
    expect(() => buf.download(new Uint8Array(16))).toThrow(/cuMemcpyDtoH\(16 bytes from 0x[0-9a-f]+\) failed: CUDA_ERROR_ILLEGAL_ADDRESS .*; last launch: fake_fault\{B=2,T=1024\}/);
  });

  it("says 'no CUDA device' when the driver has none", () => {
    const script = `const a = require(${JSON.stringify(addonPath())});
      console.log(JSON.stringify({ count: a.deviceCount(), err: (() => { try { a.init(); return null } catch (e) { return [e.message, e.code] } })() }));`;
    const out = execFileSync(process.execPath, ["-e", script], {
      env: { ...process.env, PRT_LIBCUDA: FAKE_SO, FAKE_CUDA_NO_DEVICE: "1" },
      encoding: "utf8",
    });
    expect(JSON.parse(out)).toEqual({
      count: 0,
      err: ["no CUDA device: cuInit failed: CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)", "PRT_ENODEVICE"],
    });
  });
});
