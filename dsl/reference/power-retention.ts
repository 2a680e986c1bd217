/**
 * Float64 reference of power retention (see dsl/reference/SPEC.md, "The function" and "Gradients").
 *
 * Deliberately dead simple: the quadratic O(t^2) form, plain loops, float64 everywhere.
 * Every other implementation (DSL interpreter, generated CUDA) is checked against this file.
 *
 * Layout is row-major [batch, time, head, feature]:
 *   Q    [b, t, hq, d]
 *   K    [b, t, h,  d]
 *   V    [b, t, h,  e]
 *   logG [b, t, h]      (or null: no gate, same as all zeros)
 *   Y    [b, t, hq, e]
 * Query head qh reads key/value head floor(qh / (hq / h)).
 */

export interface RetentionShape {
  readonly b: number;
  readonly t: number;
  readonly hq: number;
  readonly h: number;
  readonly d: number;
  readonly e: number;
}

export interface RetentionInputs {
  readonly shape: RetentionShape;
  readonly deg: number; // positive even integer
  readonly scale: number; // e.g. 1/sqrt(d)
  readonly Q: ArrayLike<number>; // [b, t, hq, d] row-major
  readonly K: ArrayLike<number>; // [b, t, h, d]
  readonly V: ArrayLike<number>; // [b, t, h, e]
  readonly logG: ArrayLike<number> | null; // [b, t, h], values <= 0, or null = no gate
}

export interface ReferenceForward {
  readonly Y: Float64Array; // [b, t, hq, e]
  readonly l: Float64Array; // [b, t, hq] normaliser l_i
}

export interface ReferenceGradients {
  readonly dQ: Float64Array; // [b, t, hq, d]
  readonly dK: Float64Array; // [b, t, h, d]  (summed over the query heads of the group)
  readonly dV: Float64Array; // [b, t, h, e]  (summed over the query heads of the group)
  readonly dlogG: Float64Array | null; // [b, t, h], null when logG is null
}

// ---------------------------------------------------------------------------------------------
// Validation and indexing helpers

function checkDim(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 1) {
    throw new Error(`shape.${name} must be a positive integer, got ${v}`);
  }
}

function checkLength(name: string, arr: ArrayLike<number>, expected: number, formula: string): void {
  if (arr == null || typeof arr.length !== "number") {
    throw new Error(`${name} must be an array-like of numbers`);
  }
  if (arr.length !== expected) {
    throw new Error(`${name} has length ${arr.length}, expected ${formula} = ${expected}`);
  }
}

function validate(x: RetentionInputs): void {
  if (x == null || x.shape == null) throw new Error("inputs.shape is required");
  const { b, t, hq, h, d, e } = x.shape;
  checkDim("b", b);
  checkDim("t", t);
  checkDim("hq", hq);
  checkDim("h", h);
  checkDim("d", d);
  checkDim("e", e);
  if (hq % h !== 0) {
    throw new Error(`shape.hq (${hq}) must be a multiple of shape.h (${h}) for grouped-query attention`);
  }
  if (!Number.isInteger(x.deg) || x.deg < 2 || x.deg % 2 !== 0) {
    throw new Error(`deg must be a positive even integer, got ${x.deg}`);
  }
  if (typeof x.scale !== "number" || !Number.isFinite(x.scale)) {
    throw new Error(`scale must be a finite number, got ${x.scale}`);
  }
  checkLength("Q", x.Q, b * t * hq * d, "b*t*hq*d");
  checkLength("K", x.K, b * t * h * d, "b*t*h*d");
  checkLength("V", x.V, b * t * h * e, "b*t*h*e");
  if (x.logG !== null) {
    if (x.logG === undefined) throw new Error("logG must be an array-like of numbers or null (no gate)");
    checkLength("logG", x.logG, b * t * h, "b*t*h");
  }
}

/**
 * Cumulative log gate for one (batch, kv head): L[i] = logG[0] + ... + logG[i]  (length t).
 * All zeros when there is no gate.
 */
function cumulativeLogGate(x: RetentionInputs, bi: number, kh: number): Float64Array {
  const { t, h } = x.shape;
  const L = new Float64Array(t);
  if (x.logG === null) return L;
  let acc = 0;
  for (let i = 0; i < t; i++) {
    acc += x.logG[(bi * t + i) * h + kh];
    L[i] = acc;
  }
  return L;
}

// ---------------------------------------------------------------------------------------------
// Forward

export function referenceForward(x: RetentionInputs): ReferenceForward {
  validate(x);
  const { b, t, hq, h, d, e } = x.shape;
  const p = x.deg;
  const scale = x.scale;
  const { Q, K, V } = x;
  const group = hq / h; // query heads per kv head

  const Y = new Float64Array(b * t * hq * e); // [b, t, hq, e]
  const l = new Float64Array(b * t * hq); // [b, t, hq]
  const a = new Float64Array(t); // one row of weights a_ij, j in 0..i

  for (let bi = 0; bi < b; bi++) {
    for (let qh = 0; qh < hq; qh++) {
      const kh = Math.floor(qh / group);
      const L = cumulativeLogGate(x, bi, kh); // [t]

      for (let i = 0; i < t; i++) {
        const qOff = ((bi * t + i) * hq + qh) * d; // q_i: Q[bi, i, qh, :]

        // a_ij = (scale * q_i . k_j)^p * exp(L_i - L_j),  l_i = sum_j a_ij
        let li = 0;
        for (let j = 0; j <= i; j++) {
          const kOff = ((bi * t + j) * h + kh) * d; // k_j: K[bi, j, kh, :]
          let dot = 0;
          for (let f = 0; f < d; f++) dot += Q[qOff + f] * K[kOff + f];
          const s = scale * dot;
          a[j] = Math.pow(s, p) * Math.exp(L[i] - L[j]); // difference, never exp(L_i)/exp(L_j)
          li += a[j];
        }
        l[(bi * t + i) * hq + qh] = li;

        // y_i = sum_j (a_ij / l_i) v_j  (= n_i / l_i); y_i = 0 when l_i == 0.
        // Normalising the weights first makes t = 1 give y_0 = v_0 exactly.
        const yOff = ((bi * t + i) * hq + qh) * e; // Y[bi, i, qh, :]
        if (li === 0) continue; // Y already 0
        for (let j = 0; j <= i; j++) {
          const w = a[j] / li;
          const vOff = ((bi * t + j) * h + kh) * e; // v_j: V[bi, j, kh, :]
          for (let f = 0; f < e; f++) Y[yOff + f] += w * V[vOff + f];
        }
      }
    }
  }
  return { Y, l };
}

// ---------------------------------------------------------------------------------------------
// Backward (analytic formulas of SPEC.md "Gradients")
//
//   dl_i  = -dot(dy_i, y_i) / l_i
//   da_ij = dot(dy_i, v_j) / l_i + dl_i                  (j <= i)
//   dv_j  = sum_{i>=j} a_ij dy_i / l_i
//   ds_ij = da_ij * p * s_ij^(p-1) * exp(L_i - L_j)
//   dq_i  = scale * sum_j ds_ij k_j,     dk_j = scale * sum_i ds_ij q_i
//   dL_i  = sum_j da_ij a_ij - sum_m da_mi a_mi
//   dlogG_k = sum_{i>=k} dL_i
//
// Rows with l_i == 0 (output defined as 0) contribute nothing.

export function referenceBackward(x: RetentionInputs, dY: ArrayLike<number>): ReferenceGradients {
  validate(x);
  const { b, t, hq, h, d, e } = x.shape;
  checkLength("dY", dY, b * t * hq * e, "b*t*hq*e");
  const p = x.deg;
  const scale = x.scale;
  const { Q, K, V } = x;
  const group = hq / h;

  const { Y, l } = referenceForward(x);

  const dQ = new Float64Array(b * t * hq * d); // [b, t, hq, d]
  const dK = new Float64Array(b * t * h * d); // [b, t, h, d]
  const dV = new Float64Array(b * t * h * e); // [b, t, h, e]
  const dlogG = x.logG === null ? null : new Float64Array(b * t * h); // [b, t, h]
  const dL = new Float64Array(t); // gradient w.r.t. L for one (batch, query head)

  for (let bi = 0; bi < b; bi++) {
    for (let qh = 0; qh < hq; qh++) {
      const kh = Math.floor(qh / group);
      const L = cumulativeLogGate(x, bi, kh); // [t]
      dL.fill(0);

      for (let i = 0; i < t; i++) {
        const li = l[(bi * t + i) * hq + qh];
        if (li === 0) continue; // y_i is the constant 0 here: no contribution
        const qOff = ((bi * t + i) * hq + qh) * d; // q_i
        const yOff = ((bi * t + i) * hq + qh) * e; // y_i, dy_i

        // dl_i = -dot(dy_i, y_i) / l_i
        let dyy = 0;
        for (let f = 0; f < e; f++) dyy += dY[yOff + f] * Y[yOff + f];
        const dli = -dyy / li;

        for (let j = 0; j <= i; j++) {
          const kOff = ((bi * t + j) * h + kh) * d; // k_j
          const vOff = ((bi * t + j) * h + kh) * e; // v_j

          let dot = 0;
          for (let f = 0; f < d; f++) dot += Q[qOff + f] * K[kOff + f];
          const s = scale * dot;
          const decay = Math.exp(L[i] - L[j]);
          const aij = Math.pow(s, p) * decay;

          // da_ij = dot(dy_i, v_j) / l_i + dl_i
          let dyv = 0;
          for (let f = 0; f < e; f++) dyv += dY[yOff + f] * V[vOff + f];
          const da = dyv / li + dli;

          // dv_j += a_ij dy_i / l_i
          for (let f = 0; f < e; f++) dV[vOff + f] += (aij * dY[yOff + f]) / li;

          // ds_ij = da_ij * p * s^(p-1) * exp(L_i - L_j); dq_i += scale ds k_j; dk_j += scale ds q_i
          const ds = da * p * Math.pow(s, p - 1) * decay;
          for (let f = 0; f < d; f++) {
            dQ[qOff + f] += scale * ds * K[kOff + f];
            dK[kOff + f] += scale * ds * Q[qOff + f];
          }

          // a_ij depends on L_i (+) and L_j (-)
          dL[i] += da * aij;
          dL[j] -= da * aij;
        }
      }

      // dlogG_k = sum_{i>=k} dL_i  (reverse cumulative sum), summed over the group's query heads
      if (dlogG !== null) {
        let acc = 0;
        for (let k = t - 1; k >= 0; k--) {
          acc += dL[k];
          dlogG[(bi * t + k) * h + kh] += acc;
        }
      }
    }
  }
  return { dQ, dK, dV, dlogG };
}

// ---------------------------------------------------------------------------------------------
// Error measures

function hasNonFinite(a: ArrayLike<number>): boolean {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return true;
  return false;
}

function checkSameLength(a: ArrayLike<number>, b: ArrayLike<number>): void {
  if (a.length !== b.length) {
    throw new Error(`length mismatch: a has length ${a.length}, b has length ${b.length}`);
  }
}

/** Relative error ||a-b|| / ||b|| over the whole tensor (b is the reference); returns Infinity if a has any NaN/Inf. If ||b|| is 0 returns ||a||. */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  checkSameLength(a, b);
  if (hasNonFinite(a)) return Infinity;
  let diff2 = 0;
  let ref2 = 0;
  let a2 = 0;
  for (let i = 0; i < a.length; i++) {
    const dlt = a[i] - b[i];
    diff2 += dlt * dlt;
    ref2 += b[i] * b[i];
    a2 += a[i] * a[i];
  }
  if (ref2 === 0) return Math.sqrt(a2);
  return Math.sqrt(diff2) / Math.sqrt(ref2);
}

/** max_i |a_i - b_i|; returns Infinity if a has any NaN/Inf. */
export function maxAbsError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  checkSameLength(a, b);
  if (hasNonFinite(a)) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
