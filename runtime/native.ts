// Loads the native addon (runtime/native, built by `npm run build:native`) and types it.
//
// Loading the addon never touches CUDA: the driver (libcuda.so.1) is opened lazily by the first
// call that needs it (or by `init()`), so this works on a machine without a GPU.

import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { REPO_ROOT } from "../dsl/contract/package-root.ts";

/** A device pointer (CUdeviceptr). Offsets are plain BigInt arithmetic: `ptr + 256n`. */
export type DevicePtr = bigint;
/** Opaque driver handles, as BigInt. */
export type ModuleHandle = bigint;
export type FunctionHandle = bigint;
export type EventHandle = bigint;

/** One kernel parameter, in the order of the kernel's signature. */
export type KernelArg =
  | { kind: "ptr"; value: bigint }
  | { kind: "i32"; value: number }
  | { kind: "f32"; value: number }
  | { kind: "i64"; value: bigint };

export type Dim3 = readonly [number, number, number];

/** Host memory the copies read from / write to. */
export type HostView = ArrayBufferView;

/** Error codes carried by thrown errors (`err.code`). */
export type PrtErrorCode = "PRT_ENODRIVER" | "PRT_ENODEVICE" | "PRT_ECUDA" | "PRT_EINVAL" | "PRT_EIO";

/** Function attributes for `functionGetAttribute` (the driver's CUfunction_attribute). */
export const FuncAttr = {
  MAX_THREADS_PER_BLOCK: 0,
  SHARED_SIZE_BYTES: 1,
  CONST_SIZE_BYTES: 2,
  LOCAL_SIZE_BYTES: 3,
  NUM_REGS: 4,
  PTX_VERSION: 5,
  BINARY_VERSION: 6,
  MAX_DYNAMIC_SHARED_SIZE_BYTES: 8,
} as const;

/** A few device attributes for `deviceAttribute` (the driver's CUdevice_attribute). */
export const DeviceAttr = {
  MAX_THREADS_PER_BLOCK: 1,
  MAX_SHARED_MEMORY_PER_BLOCK: 8,
  WARP_SIZE: 10,
  MULTIPROCESSOR_COUNT: 16,
  L2_CACHE_SIZE: 38,
  MAX_THREADS_PER_MULTIPROCESSOR: 39,
  COMPUTE_CAPABILITY_MAJOR: 75,
  COMPUTE_CAPABILITY_MINOR: 76,
  MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: 81,
  MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 97,
} as const;

/**
 * The addon's functions. Every failing call throws an Error whose message names the operation,
 * the CUDA error (name and description) and the context (kernel `what`, module file, ...), with
 * `code: PrtErrorCode`; bad argument types throw TypeError. All work runs on device 0's primary
 * context, default stream.
 */
export interface PrtNative {
  /** ABI version of the addon's JS surface. */
  readonly abiVersion: number;
  /** dlopen libcuda.so.1, cuInit, retain device 0's primary context. Idempotent. */
  init(): void;
  /** Last error message of the native core on this thread ("" if none). */
  lastError(): string;
  driverVersion(): number;
  /** 0 when the driver is present but there is no device; throws when there is no driver. */
  deviceCount(): number;
  deviceName(device?: number): string;
  deviceComputeCapability(device?: number): [major: number, minor: number];
  deviceSmCount(device?: number): number;
  deviceAttribute(device: number, attribute: number): number;

  memAlloc(bytes: number | bigint): DevicePtr;
  /** Freeing 0n is a no-op. */
  memFree(ptr: DevicePtr): void;
  memInfo(): { free: number; total: number };
  /** Copies src.byteLength bytes. */
  memcpyHtoD(dst: DevicePtr, src: HostView): void;
  /** Copies dst.byteLength bytes. */
  memcpyDtoH(dst: HostView, src: DevicePtr): void;
  memcpyDtoD(dst: DevicePtr, src: DevicePtr, bytes: number | bigint): void;
  /** count bytes set to value (0..255). */
  memsetD8(dst: DevicePtr, value: number, count: number | bigint): void;
  /** count 32-bit words set to value (a uint32 or int32 bit pattern); dst must be 4-aligned. */
  memsetD32(dst: DevicePtr, value: number, count: number | bigint): void;

  /** Load a fatbin / cubin / PTX file (cuModuleLoadData on its bytes). */
  moduleLoad(path: string): ModuleHandle;
  moduleUnload(module: ModuleHandle): void;
  moduleGetFunction(module: ModuleHandle, name: string): FunctionHandle;
  /** cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES): needed before launches with > 48 KiB. */
  functionSetMaxDynamicSmem(fn: FunctionHandle, bytes: number): void;
  functionGetAttribute(fn: FunctionHandle, attribute: number): number;

  /**
   * cuLaunchKernel on the default stream. `what` (kernel name + spec) names the launch in errors,
   * including asynchronous ones reported later by `synchronize()` or a copy. Grid / block
   * arrays may be shorter than 3 (missing entries are 1).
   */
  launch(
    fn: FunctionHandle,
    grid: Dim3 | readonly number[],
    block: Dim3 | readonly number[],
    smemBytes: number,
    args: readonly KernelArg[],
    what: string,
  ): void;
  /** cuCtxSynchronize; an asynchronous fault is reported with the last launch's `what`. */
  synchronize(): void;
  lastLaunch(): string;

  eventCreate(): EventHandle;
  eventRecord(event: EventHandle): void;
  /** Waits for `end`, returns milliseconds between the two records. */
  eventElapsedMs(start: EventHandle, end: EventHandle): number;
  eventDestroy(event: EventHandle): void;
}

export { REPO_ROOT };

/** Where `npm run build:native` puts the addon (PRT_NATIVE_ADDON overrides). */
export function addonPath(): string {
  const override = process.env.PRT_NATIVE_ADDON;
  if (override) return path.resolve(override);
  return path.join(REPO_ROOT, "build", "native", "Release", "prt_native.node");
}

export class NativeAddonNotBuiltError extends Error {
  constructor(file: string, cause?: unknown) {
    const why = cause instanceof Error ? `: ${cause.message}` : "";
    super(
      existsSync(file)
        ? `the native addon at ${file} could not be loaded${why}; rebuild it with \`npm run build:native\``
        : `the native addon is not built (${file} is missing); run \`npm run build:native\``,
    );
    this.name = "NativeAddonNotBuiltError";
  }
}

let cached: PrtNative | undefined;

/** The addon, loaded once. Throws NativeAddonNotBuiltError if it is missing or unloadable. */
export function loadNative(): PrtNative {
  if (cached) return cached;
  const file = addonPath();
  if (!existsSync(file)) throw new NativeAddonNotBuiltError(file);
  const require = createRequire(import.meta.url);
  let mod: PrtNative;
  try {
    mod = require(file) as PrtNative;
  } catch (e) {
    throw new NativeAddonNotBuiltError(file, e);
  }
  cached = mod;
  return mod;
}

/** True if an error thrown by the addon carries the given code. */
export function isPrtError(e: unknown, code?: PrtErrorCode): e is Error & { code: PrtErrorCode } {
  if (!(e instanceof Error)) return false;
  const c = (e as { code?: unknown }).code;
  return typeof c === "string" && c.startsWith("PRT_") && (code === undefined || c === code);
}
