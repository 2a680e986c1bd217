// Host-side conversions between numbers and the bit patterns of the device dtypes.
//
// Encoding rounds each value (a double, or an f32 held as one) directly to the target format,
// round to nearest, ties to even, overflow to infinity, subnormals kept: exactly what
// dsl/dtype.ts's roundF16 / roundBF16 / Math.fround do, so data uploaded here holds the same values
// the interpreter works with. Decoding is exact (every f16/bf16 value is an f32 value).

import type { TensorDType } from "../dsl/dtype.ts";
import { roundHalfEven } from "../dsl/dtype.ts";

const f64 = new Float64Array(1);
const f64hi = new Uint32Array(f64.buffer);
const HI = 1; // little-endian: word 1 holds sign, exponent and the top 20 fraction bits

/** 2^k for k in [-1100, 1100], exact. */
const POW2 = new Float64Array(2201);
for (let k = -1100; k <= 1100; k++) POW2[k + 1100] = Math.pow(2, k);
const pow2 = (k: number): number => POW2[k + 1100]!;

/**
 * The bits of `x` rounded to a binary format with `expBits` exponent and `mantBits` fraction bits
 * (IEEE layout: sign, biased exponent, fraction). NaN becomes the canonical quiet NaN.
 */
function encodeBinary(x: number, expBits: number, mantBits: number): number {
  const signBit = 1 << (expBits + mantBits);
  const expMask = (1 << expBits) - 1;
  const inf = expMask << mantBits;
  if (x !== x) return inf | (1 << (mantBits - 1)); // quiet NaN, sign clear
  const sign = x < 0 || Object.is(x, -0) ? signBit : 0;
  const a = Math.abs(x);
  if (a === 0) return sign;
  if (a === Infinity) return sign | inf;
  const emin = 2 - (1 << (expBits - 1)); // 1 - bias
  f64[0] = a;
  const biased = (f64hi[HI]! >>> 20) & 0x7ff;
  // a double subnormal (< 2^-1022) is far below the smallest f16/bf16 subnormal: it rounds to 0
  if (biased === 0) return sign;
  const e = Math.max(biased - 1023, emin);
  // a / ulp with ulp = 2^(e - mantBits): exact (a power-of-two scaling), then one rounding
  const m = roundHalfEven(a * pow2(mantBits - e));
  // normal: exponent field (e - emin + 1) and fraction m - 2^mantBits; subnormal: m itself. Both
  // are ((e - emin) << mantBits) + m, and a carry out of the fraction bumps the exponent for free.
  const bits = (e - emin) * (1 << mantBits) + m;
  return sign | (bits >= inf ? inf : bits);
}

/** f16 bits of `x`, round to nearest even (= dsl/dtype.ts roundF16). */
export function f16Bits(x: number): number {
  return encodeBinary(x, 5, 10);
}

/** bf16 bits of `x`, round to nearest even (= dsl/dtype.ts roundBF16). */
export function bf16Bits(x: number): number {
  return encodeBinary(x, 8, 7);
}

const F16_VALUES = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const ex = (h >>> 10) & 0x1f;
    const fr = h & 0x3ff;
    t[h] =
      ex === 0 ? s * fr * 2 ** -24 : ex === 31 ? (fr === 0 ? s * Infinity : NaN) : s * (1024 + fr) * 2 ** (ex - 25);
  }
  return t;
})();

/** The value of f16 bits (exact). */
export function f16Value(bits: number): number {
  return F16_VALUES[bits & 0xffff]!;
}

const f32 = new Float32Array(1);
const f32u = new Uint32Array(f32.buffer);

/** The value of bf16 bits (exact: bf16 is the top half of an f32). */
export function bf16Value(bits: number): number {
  f32u[0] = (bits & 0xffff) << 16;
  return f32[0]!;
}

/** Bytes of one element of `dtype` in device memory. */
export function elementBytes(dtype: TensorDType): number {
  return dtype === "f32" || dtype === "i32" ? 4 : 2;
}

/** Host storage holding the device representation of `data` in `dtype` (Float32Array or Uint16Array of bits). */
export function encode(data: ArrayLike<number>, dtype: TensorDType): Float32Array | Uint16Array | Int32Array {
  const n = data.length;
  switch (dtype) {
    case "i32": {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const v = data[i]!;
        if (!Number.isInteger(v) || v < -(2 ** 31) || v >= 2 ** 31) throw new Error(`i32 element ${i}: expected a 32-bit integer, received ${v}`);
        out[i] = v;
      }
      return out;
    }
    case "f32":
      return data instanceof Float32Array ? data : Float32Array.from(data);
    case "f16": {
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = f16Bits(data[i]!);
      return out;
    }
    case "bf16": {
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = bf16Bits(data[i]!);
      return out;
    }
  }
}

/** Values of device data of `dtype` (raw bytes as a Uint8Array or a typed view) as f32. */
export function decode(raw: ArrayBufferView, dtype: TensorDType): Float32Array {
  const buf = raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength);
  if (dtype === "f32") return new Float32Array(buf);
  if (dtype === "i32") return Float32Array.from(new Int32Array(buf));
  const bits = new Uint16Array(buf);
  const out = new Float32Array(bits.length);
  if (dtype === "f16") for (let i = 0; i < bits.length; i++) out[i] = F16_VALUES[bits[i]!]!;
  else {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < bits.length; i++) u[i] = bits[i]! << 16;
  }
  return out;
}
