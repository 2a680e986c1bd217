// Device tensors: a DeviceBuffer with a shape and a dtype, row-major and contiguous. f16 / bf16
// data is converted on the host (runtime/convert.ts, round to nearest even) on the way up and back
// to f32 values on the way down.

import type { DType } from "../dsl/dtype.ts";
import { decode, elementBytes, encode } from "./convert.ts";
import { DeviceBuffer } from "./device.ts";
import { ArgumentError, checkDType, checkShape, requireGpu } from "./validate.ts";

const numelOf = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

export class Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  /** Device ordinal; the runtime uses device 0 only. */
  readonly device: number = 0;
  #buf: DeviceBuffer | null;

  private constructor(buf: DeviceBuffer, shape: readonly number[], dtype: DType) {
    this.#buf = buf;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
  }

  /** Copy host data (converted to `dtype`, round to nearest even) to a new device tensor. Every
   * element must be a number; a finite one that the dtype rounds to infinity is an error (NaN and
   * infinities pass as given). */
  static upload(data: ArrayLike<number> | Float32Array, shape: readonly number[], dtype: DType = "f32"): Tensor {
    const fn = "Tensor.upload";
    checkShape(fn, "shape", shape);
    checkDType(fn, "dtype", dtype);
    if (data === null || typeof data !== "object" || typeof (data as ArrayLike<number>).length !== "number")
      throw new ArgumentError(fn, "data", `expected an array of numbers, received ${data === null ? "null" : typeof data}`);
    const n = numelOf(shape);
    if (data.length !== n)
      throw new ArgumentError(fn, "data", `expected ${n} elements for shape [${shape.join(", ")}], received ${data.length}`);
    checkValues(fn, data, dtype);
    requireGpu(fn);
    return new Tensor(DeviceBuffer.from(encode(data, dtype)), shape, dtype);
  }

  /** A new tensor whose elements are NaN (POISON_NAN): anything never written shows up. */
  static empty(shape: readonly number[], dtype: DType = "f32"): Tensor {
    const t = Tensor.#alloc("Tensor.empty", shape, dtype);
    t.buffer.poison();
    return t;
  }

  static zeros(shape: readonly number[], dtype: DType = "f32"): Tensor {
    const t = Tensor.#alloc("Tensor.zeros", shape, dtype);
    t.buffer.zero();
    return t;
  }

  static #alloc(fn: string, shape: readonly number[], dtype: DType): Tensor {
    checkShape(fn, "shape", shape);
    checkDType(fn, "dtype", dtype);
    requireGpu(fn);
    return new Tensor(DeviceBuffer.alloc(numelOf(shape) * elementBytes(dtype)), shape, dtype);
  }

  /** Wrap (and take ownership of) a device buffer of exactly numel(shape) elements of `dtype`. */
  static fromBuffer(buf: DeviceBuffer, shape: readonly number[], dtype: DType): Tensor {
    checkShape("Tensor.fromBuffer", "shape", shape);
    const bytes = numelOf(shape) * elementBytes(dtype);
    if (buf.bytes !== bytes)
      throw new ArgumentError("Tensor.fromBuffer", "buf", `expected ${bytes} bytes for ${dtype} [${shape.join(", ")}], received ${buf.bytes}`);
    return new Tensor(buf, shape, dtype);
  }

  get numel(): number {
    return numelOf(this.shape);
  }

  get bytes(): number {
    return this.numel * elementBytes(this.dtype);
  }

  get freed(): boolean {
    return this.#buf === null || this.#buf.freed;
  }

  /** The device buffer; throws once freed. */
  get buffer(): DeviceBuffer {
    if (this.#buf === null || this.#buf.freed) throw new Error(`${this}: use after free()`);
    return this.#buf;
  }

  /** The elements as f32 values, row-major. */
  download(): Float32Array {
    const raw = this.buffer.download(new Uint8Array(this.bytes));
    return decode(raw, this.dtype);
  }

  /** A new tensor with a copy of the data (device to device). */
  clone(): Tensor {
    const buf = DeviceBuffer.alloc(this.bytes);
    buf.copyFrom(this.buffer);
    return new Tensor(buf, this.shape, this.dtype);
  }

  /** Release the device memory. Idempotent. */
  free(): void {
    this.#buf?.free();
    this.#buf = null;
  }

  toString(): string {
    return `Tensor(${this.dtype} [${this.shape.join(", ")}]${this.freed ? ", freed" : ""})`;
  }
}

/** The largest finite magnitude of each dtype: values at or past the rounding boundary become inf. */
const OVERFLOW_AT: Readonly<Record<DType, number>> = { f32: 3.4028235677973366e38, f16: 65520, bf16: 3.3961775292304690e38 };

/** Every element a number (plain arrays may hold anything), none finite that `dtype` turns into inf. */
function checkValues(fn: string, data: ArrayLike<number>, dtype: DType): void {
  const typed = ArrayBuffer.isView(data);
  const limit = OVERFLOW_AT[dtype];
  for (let i = 0; i < data.length; i++) {
    const x = data[i] as unknown;
    if (!typed && typeof x !== "number")
      throw new ArgumentError(fn, `data[${i}]`, `expected a number, received ${x === null ? "null" : Array.isArray(x) ? "an array" : typeof x === "string" ? JSON.stringify(x) : typeof x}`);
    const v = x as number;
    if (Number.isFinite(v) && Math.abs(v) >= limit)
      throw new ArgumentError(fn, `data[${i}]`, `${v} overflows ${dtype} (finite values up to ${dtype === "f16" ? 65504 : "3.4e38"}); scale the data or use a wider dtype`);
  }
}
