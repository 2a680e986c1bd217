// Reshuffles of [b, t, ...] and [b, t, h, f] tensors that the invariance tests need.

/** Rows t0..t1-1 of a [b, t, row...] tensor (row = the product of the remaining dims). */
export function timeSlice(a: ArrayLike<number>, b: number, t: number, row: number, t0: number, t1: number): Float32Array {
  const out = new Float32Array(b * (t1 - t0) * row);
  for (let bi = 0; bi < b; bi++)
    for (let i = t0; i < t1; i++)
      for (let k = 0; k < row; k++) out[(bi * (t1 - t0) + i - t0) * row + k] = a[(bi * t + i) * row + k]!;
  return out;
}

/** [b, t1, row] and [b, t2, row] joined along time into [b, t1 + t2, row]. */
export function timeConcat(x: ArrayLike<number>, y: ArrayLike<number>, b: number, t1: number, t2: number, row: number): Float32Array {
  const t = t1 + t2;
  const out = new Float32Array(b * t * row);
  for (let bi = 0; bi < b; bi++) {
    for (let i = 0; i < t1 * row; i++) out[bi * t * row + i] = x[bi * t1 * row + i]!;
    for (let i = 0; i < t2 * row; i++) out[(bi * t + t1) * row + i] = y[bi * t2 * row + i]!;
  }
  return out;
}

/** Each of h heads of a [b, t, h, f] tensor repeated g times: [b, t, h * g, f] (grouped-query layout). */
export function repeatHeads(a: ArrayLike<number>, b: number, t: number, h: number, f: number, g: number): Float32Array {
  const out = new Float32Array(b * t * h * g * f);
  for (let bt = 0; bt < b * t; bt++)
    for (let q = 0; q < h * g; q++)
      for (let k = 0; k < f; k++) out[(bt * h * g + q) * f + k] = a[(bt * h + Math.floor(q / g)) * f + k]!;
  return out;
}
