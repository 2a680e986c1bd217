// Element types of the DSL and the rounding that models each on the CPU.
// Tensors and tiles may hold f32, f16 or bf16; arithmetic inside an expression is f32 (we evaluate
// in float64 and round once when the value is written, which is what a fused GPU expression does
// up to the last bit). i32 and bool exist only as expression types (indices, masks).

export type DType = "f32" | "f16" | "bf16";
export type ScalarType = DType | "i32" | "bool";
/** What a kernel's global tensor may hold: a DType, or i32 for a table (read one element at a time
 * by a program-uniform \`fetch\`: the offsets of packed variable-length sequences). */
export type TensorDType = DType | "i32";

export const DTYPES: readonly DType[] = ["f32", "f16", "bf16"];

export function isDType(x: unknown): x is DType {
  return x === "f32" || x === "f16" || x === "bf16";
}

/** Bytes of one element in device memory. */
export function dtypeBytes(t: TensorDType): number {
  return t === "f32" || t === "i32" ? 4 : 2;
}

const f64 = new Float64Array(1);
const u32 = new Uint32Array(f64.buffer);

/** Unbiased binary exponent of a finite non-zero double. */
function exponentOf(a: number): number {
  f64[0] = a;
  const biased = (u32[1]! >>> 20) & 0x7ff;
  return biased === 0 ? -1023 : biased - 1023;
}

/** Round to the nearest integer, ties to even. */
export function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const diff = v - f;
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Round a double to a binary format with `mant` fraction bits, minimum normal exponent `emin`
 * and largest finite value `max` (round to nearest even, overflow to infinity, subnormals kept). */
function roundBinary(x: number, mant: number, emin: number, max: number): number {
  if (x === 0 || !Number.isFinite(x)) return x;
  const a = Math.abs(x);
  const e = Math.max(exponentOf(a), emin);
  const ulp = Math.pow(2, e - mant);
  const r = roundHalfEven(a / ulp) * ulp;
  if (r > max) return x > 0 ? Infinity : -Infinity;
  return x > 0 ? r : -r;
}

export const roundF16 = (x: number): number => roundBinary(x, 10, -14, 65504);
export const roundBF16 = (x: number): number => roundBinary(x, 7, -126, 3.3895313892515355e38);
export const roundF32 = Math.fround;

/** The rounding that writing a value into storage of type `t` applies. */
export function rounder(t: DType): (x: number) => number {
  switch (t) {
    case "f32":
      return roundF32;
    case "f16":
      return roundF16;
    case "bf16":
      return roundBF16;
  }
}

/** Round every element of `xs` to dtype `t`, into a new Float32Array (f16/bf16 values are exact in f32). */
export function roundArray(xs: ArrayLike<number>, t: TensorDType): Float32Array {
  if (t === "i32") return tableArray(xs);
  const r = rounder(t);
  const out = new Float32Array(xs.length);
  for (let i = 0; i < xs.length; i++) out[i] = r(xs[i]!);
  return out;
}

/** The interpreter holds an i32 table in a Float32Array: exact for integers below 2^24 in
 * magnitude, which every value must be (a table of row offsets into 16 M packed tokens or more
 * runs on the GPU, not here). */
export function tableArray(xs: ArrayLike<number>): Float32Array {
  const out = new Float32Array(xs.length);
  for (let i = 0; i < xs.length; i++) {
    const v = xs[i]!;
    if (!Number.isInteger(v) || Math.abs(v) >= 2 ** 24)
      throw new Error(`i32 table element ${i}: expected an integer of magnitude below 2^24 (the interpreter holds tables as f32), received ${v}`);
    out[i] = v;
  }
  return out;
}
