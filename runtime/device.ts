// Device discovery and raw device buffers, over the native addon (runtime/native.ts).

import { loadNative, type DevicePtr, type PrtNative } from "./native.ts";

export type CudaAvailability =
  | {
      ok: true;
      /** Device 0's name, e.g. "NVIDIA H200". */
      name: string;
      /** Compute capability as major*10 + minor, e.g. 90 for sm_90. */
      cc: number;
      /** Streaming multiprocessors on device 0. */
      sms: number;
      /** Driver version as the driver reports it, e.g. 13000. */
      driverVersion: number;
    }
  | { ok: false; reason: string };

let availability: CudaAvailability | undefined;

/**
 * Whether CUDA can be used here: loads the addon and initialises device 0. Never throws; the
 * result (either way) is computed once per process.
 */
export function cudaAvailable(): CudaAvailability {
  if (availability) return availability;
  try {
    const n = loadNative();
    n.init();
    const [major, minor] = n.deviceComputeCapability(0);
    availability = {
      ok: true,
      name: n.deviceName(0),
      cc: major * 10 + minor,
      sms: n.deviceSmCount(0),
      driverVersion: n.driverVersion(),
    };
  } catch (e) {
    availability = { ok: false, reason: e instanceof Error ? e.message : String(e) };
  }
  return availability;
}

/**
 * A 32-bit pattern that is NaN read as f32, as two f16 or as two bf16 (all ones): poisoning with
 * it makes any element a kernel fails to write show up as NaN.
 */
export const POISON_NAN = 0xffffffff;

/** An owned device allocation of `bytes` bytes on device 0. Call free() when done. */
export class DeviceBuffer {
  readonly bytes: number;
  #ptr: DevicePtr;
  readonly #native: PrtNative;

  private constructor(native: PrtNative, ptr: DevicePtr, bytes: number) {
    this.#native = native;
    this.#ptr = ptr;
    this.bytes = bytes;
  }

  /** Allocate `bytes` (> 0) bytes. Contents are undefined; see poison() / zero(). */
  static alloc(bytes: number): DeviceBuffer {
    if (!Number.isSafeInteger(bytes) || bytes <= 0)
      throw new RangeError(`DeviceBuffer.alloc: bytes must be a positive integer, got ${bytes}`);
    const n = loadNative();
    return new DeviceBuffer(n, n.memAlloc(bytes), bytes);
  }

  /** Allocate a buffer the size of `src` and upload it. */
  static from(src: ArrayBufferView): DeviceBuffer {
    const buf = DeviceBuffer.alloc(src.byteLength);
    try {
      buf.upload(src);
    } catch (e) {
      buf.free();
      throw e;
    }
    return buf;
  }

  /** The device pointer; throws once freed. */
  get ptr(): DevicePtr {
    if (this.#ptr === 0n) throw new Error("DeviceBuffer: use after free()");
    return this.#ptr;
  }

  get freed(): boolean {
    return this.#ptr === 0n;
  }

  #range(op: string, byteOffset: number, byteLength: number): void {
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset + byteLength > this.bytes)
      throw new RangeError(
        `DeviceBuffer.${op}: ${byteLength} bytes at offset ${byteOffset} exceed the buffer's ${this.bytes} bytes`,
      );
  }

  /** Copy `src` to the device at `byteOffset`. */
  upload(src: ArrayBufferView, byteOffset = 0): void {
    this.#range("upload", byteOffset, src.byteLength);
    this.#native.memcpyHtoD(this.ptr + BigInt(byteOffset), src);
  }

  /** Fill `dst` from the device, starting at `byteOffset`; returns `dst`. */
  download<T extends ArrayBufferView>(dst: T, byteOffset = 0): T {
    this.#range("download", byteOffset, dst.byteLength);
    this.#native.memcpyDtoH(dst, this.ptr + BigInt(byteOffset));
    return dst;
  }

  /** Fill with a repeated 32-bit pattern (little-endian), POISON_NAN by default. */
  poison(pattern: number = POISON_NAN): void {
    if (!Number.isInteger(pattern) || pattern < -0x80000000 || pattern > 0xffffffff)
      throw new RangeError(`DeviceBuffer.poison: pattern must be a 32-bit integer, got ${pattern}`);
    const words = Math.floor(this.bytes / 4);
    const ptr = this.ptr;
    if (words > 0) this.#native.memsetD32(ptr, pattern, words);
    const p = pattern >>> 0;
    for (let i = words * 4; i < this.bytes; i++)
      this.#native.memsetD8(ptr + BigInt(i), (p >>> (8 * (i % 4))) & 0xff, 1);
  }

  /** Fill with zero bytes. */
  zero(): void {
    this.#native.memsetD8(this.ptr, 0, this.bytes);
  }

  /** Device-to-device copy of `bytes` (default: all of src) into this buffer at `byteOffset`. */
  copyFrom(src: DeviceBuffer, bytes: number = src.bytes, byteOffset = 0): void {
    if (bytes > src.bytes)
      throw new RangeError(`DeviceBuffer.copyFrom: ${bytes} bytes exceed the source's ${src.bytes}`);
    this.#range("copyFrom", byteOffset, bytes);
    this.#native.memcpyDtoD(this.ptr + BigInt(byteOffset), src.ptr, bytes);
  }

  /** Release the allocation. Idempotent. */
  free(): void {
    if (this.#ptr === 0n) return;
    const p = this.#ptr;
    this.#ptr = 0n;
    this.#native.memFree(p);
  }
}
