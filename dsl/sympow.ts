// The symmetric power embedding phi of SPEC.md, as tables the interpreter and the code generator
// both read. Feature f of degree p over d inputs is a multiset {a_1 <= ... <= a_p} of indices,
// enumerated in lexicographic order; phi_f(x) = w_f * x_a1 * ... * x_ap with
// w_f = sqrt(p! / prod_k m_k!) (m_k = multiplicity of index k), so that phi(x).phi(y) = (x.y)^p and
// the same phi serves queries and keys. This order and weighting is the layout of the state S.

export interface SymPowTable {
  readonly d: number;
  readonly deg: number;
  /** D = binomial(d + deg - 1, deg). */
  readonly size: number;
  /** [D * deg] the indices a_1..a_p of each feature, non-decreasing. */
  readonly index: Int32Array;
  /** [D] sqrt of the multinomial coefficient. */
  readonly weight: Float64Array;
}

export function binomial(n: number, k: number): number {
  k = Math.min(k, n - k); // C(n, k) = C(n, n - k): at most min(k, n - k) steps, so deg = 1e300 is no loop
  let r = 1;
  for (let i = 1; i <= k && Number.isFinite(r); i++) r = (r * (n - k + i)) / i;
  return Math.round(r);
}

/** D, the number of features of the degree-`deg` embedding of a d-vector. */
export function featureCount(d: number, deg: number): number {
  return binomial(d + deg - 1, deg);
}

const cache = new Map<string, SymPowTable>();

export function symPowTable(d: number, deg: number): SymPowTable {
  const key = `${d}:${deg}`;
  const hit = cache.get(key);
  if (hit) return hit;
  if (!Number.isInteger(deg) || deg < 1) throw new Error(`deg must be a positive integer, got ${deg}`);
  const size = featureCount(d, deg);
  const index = new Int32Array(size * deg);
  const weight = new Float64Array(size);
  let factP = 1;
  for (let i = 2; i <= deg; i++) factP *= i;
  const cur = new Array<number>(deg).fill(0);
  for (let f = 0; f < size; f++) {
    let denom = 1;
    let run = 1;
    for (let k = 0; k < deg; k++) {
      index[f * deg + k] = cur[k]!;
      if (k > 0 && cur[k] === cur[k - 1]) denom *= ++run;
      else run = 1;
    }
    weight[f] = Math.sqrt(factP / denom);
    // next non-decreasing tuple
    let k = deg - 1;
    while (k >= 0 && cur[k] === d - 1) k--;
    if (k < 0) break;
    const v = cur[k]! + 1;
    for (let j = k; j < deg; j++) cur[j] = v;
  }
  const t: SymPowTable = { d, deg, size, index, weight };
  cache.set(key, t);
  return t;
}
