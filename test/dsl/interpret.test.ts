// Each IR op in the interpreter against a plain-loop reference, ThunderKittens style: a validity
// predicate over sizes, a plain loop, the op, swept over sizes and random data.
import { describe, expect, it } from "vitest";
import { fcSeed } from "../helpers/problems.ts";
import fc from "fast-check";
import { range, select, traceKernel, f32 } from "../../dsl/builder.ts";
import { roundBF16, type DType, roundArray } from "../../dsl/dtype.ts";
import { interpret } from "../../dsl/interpret.ts";
import { symPowTable } from "../../dsl/sympow.ts";

const seed = fcSeed(); // FC_SEED, validated (test/helpers/problems.ts)
const rand = (n: number, s: number): Float32Array => {
  let x = s >>> 0 || 1;
  return Float32Array.from({ length: n }, () => ((x = (x * 1664525 + 1013904223) >>> 0), x / 2 ** 32 - 0.5));
};

/** One-program kernel: load A [m,k], B, compute C = op(A) op(B) with mma, store. */
function mmaKernel(m: number, n: number, kk: number, dtype: DType, transA: boolean, transB: boolean) {
  return traceKernel("mma_test", 4, "", (k) => {
    const [ar, ac] = transA ? [kk, m] : [m, kk];
    const [br, bc] = transB ? [n, kk] : [kk, n];
    const A = k.tensor("A", dtype, [ar, ac], "in"), B = k.tensor("B", dtype, [br, bc], "in");
    const C = k.tensor("C", "f32", [m, n], "out");
    const a = k.shared("a", [ar, ac], dtype), b = k.shared("b", [br, bc], dtype), c = k.reg("c", [m, n], "f32");
    k.load(a, A, [range(0, ar), range(0, ac)]);
    k.load(b, B, [range(0, br), range(0, bc)]);
    k.fill(c, 1);
    k.mma(c, a, b, { transA, transB, accumulate: true });
    k.store(C, [range(0, m), range(0, n)], c);
  });
}

describe("interpreter ops", () => {
  it("mma with every transpose matches a plain loop, operands rounded to their dtype", () => {
    fc.assert(
      fc.property(fc.constantFrom(1, 3, 16), fc.constantFrom(1, 8, 5), fc.constantFrom(1, 16, 7), fc.boolean(), fc.boolean(), fc.constantFrom<DType>("f32", "bf16"), (m, n, kk, ta, tb, dt) => {
        const A = rand(m * kk, 7), B = rand(kk * n, 9), C = new Float32Array(m * n).fill(NaN);
        interpret(mmaKernel(m, n, kk, dt, ta, tb), { tensors: { A, B, C }, params: {} });
        const Ar = roundArray(A, dt), Br = roundArray(B, dt);
        for (let i = 0; i < m; i++)
          for (let j = 0; j < n; j++) {
            let s = 1;
            for (let q = 0; q < kk; q++) s += Ar[ta ? q * m + i : i * kk + q]! * Br[tb ? j * kk + q : q * n + j]!;
            expect(C[i * n + j]).toBeCloseTo(s, 5);
          }
      }),
      { seed, numRuns: 60 },
    );
  });

  it("loads read 0 out of bounds and stores skip out-of-bounds elements", () => {
    const kern = traceKernel("mask_test", 1, "", (k) => {
      const t = k.param("t", "i32");
      const X = k.tensor("X", "f32", [t, 3], "in"), Y = k.tensor("Y", "f32", [t, 3], "out");
      k.launch(2);
      const x = k.shared("x", [4, 3], "f32");
      k.load(x, X, [range(k.programId(0).mul(4).sub(1), 4), range(0, 3)]); // rows -1..2 and 3..6
      k.map(x, ({ row, col }) => x.at(row, col).add(100));
      k.store(Y, [range(k.programId(0).mul(4).sub(1), 4), range(0, 3)], x);
    });
    const X = Float32Array.from({ length: 15 }, (_, i) => i), Y = new Float32Array(15).fill(NaN);
    interpret(kern, { tensors: { X, Y }, params: { t: 5 } });
    expect(Array.from(Y)).toEqual(Array.from(X, (v) => v + 100));
  });

  it("reduce and scan along both axes", () => {
    const kern = traceKernel("red_test", 1, "", (k) => {
      const X = k.tensor("X", "f32", [3, 5], "in");
      const R = k.tensor("R", "f32", [3], "out"), Cm = k.tensor("Cm", "f32", [5], "out"), S = k.tensor("S", "f32", [3, 5], "out");
      const x = k.shared("x", [3, 5], "f32"), r = k.reg("r", [3], "f32"), c = k.reg("c", [5], "f32"), s = k.shared("s", [3, 5], "f32");
      k.load(x, X, [range(0, 3), range(0, 5)]);
      k.reduce(r, x, "sum", 1);
      k.reduce(c, x, "max", 0);
      k.cumsum(s, x, 0, { reverse: true });
      k.store(R, [range(0, 3)], r);
      k.store(Cm, [range(0, 5)], c);
      k.store(S, [range(0, 3), range(0, 5)], s);
    });
    const X = rand(15, 3), R = new Float32Array(3), Cm = new Float32Array(5), S = new Float32Array(15);
    interpret(kern, { tensors: { X, R, Cm, S }, params: {} });
    for (let i = 0; i < 3; i++) expect(R[i]).toBeCloseTo(X.slice(i * 5, i * 5 + 5).reduce((a, b) => a + b), 6);
    for (let j = 0; j < 5; j++) expect(Cm[j]).toBe(Math.max(X[j]!, X[5 + j]!, X[10 + j]!));
    for (let j = 0; j < 5; j++) expect(S[5 + j]).toBeCloseTo(X[5 + j]! + X[10 + j]!, 6);
  });

  it("expand gives the table's features and expandGrad its exact gradient", () => {
    for (const [d, p, bd, off] of [[3, 2, 4, 2], [4, 4, 16, 20], [2, 2, 8, 0]] as const) {
      const t = symPowTable(d, p);
      const kern = traceKernel("expand_test", 1, "", (k) => {
        const X = k.tensor("X", "f32", [2, d], "in"), G = k.tensor("G", "f32", [2, bd], "in");
        const P = k.tensor("P", "f32", [2, bd], "out"), DX = k.tensor("DX", "f32", [2, d], "out");
        const x = k.shared("x", [2, d], "f32"), g = k.shared("g", [2, bd], "f32"), ph = k.shared("ph", [2, bd], "f32"), dx = k.shared("dx", [2, d], "f32");
        k.load(x, X, [range(0, 2), range(0, d)]);
        k.load(g, G, [range(0, 2), range(0, bd)]);
        k.expand(ph, x, p, off);
        k.expandGrad(dx, x, g, p, off);
        k.store(P, [range(0, 2), range(0, bd)], ph);
        k.store(DX, [range(0, 2), range(0, d)], dx);
      });
      const X = rand(2 * d, 11), G = rand(2 * bd, 13), P = new Float32Array(2 * bd), DX = new Float32Array(2 * d);
      interpret(kern, { tensors: { X, G, P, DX }, params: {} });
      const phi = (x: number[], f: number): number => {
        if (f >= t.size) return 0;
        let v = t.weight[f]!;
        for (let q = 0; q < p; q++) v *= x[t.index[f * p + q]!]!;
        return v;
      };
      for (let r = 0; r < 2; r++) {
        const x = Array.from(X.slice(r * d, r * d + d));
        for (let f = 0; f < bd; f++) expect(P[r * bd + f]).toBeCloseTo(phi(x, off + f), 5);
        // gradient of sum_f G[r,f] phi_f(x) by central differences
        for (let a = 0; a < d; a++) {
          const L = (xs: number[]) => Array.from({ length: bd }, (_, f) => G[r * bd + f]! * phi(xs, off + f)).reduce((u, v) => u + v, 0);
          const h = 1e-5, xp = [...x], xm = [...x];
          xp[a]! += h;
          xm[a]! -= h;
          expect(DX[r * d + a]).toBeCloseTo((L(xp) - L(xm)) / (2 * h), 4);
        }
      }
    }
  });

  it("map rounds to the destination dtype, select guards, loops and branches run", () => {
    const kern = traceKernel("map_test", 1, "", (k) => {
      const n = k.param("n", "i32");
      const Y = k.tensor("Y", "bf16", [4], "out");
      const y = k.reg("y", [4], "bf16");
      k.fill(y, 0);
      k.for(0, n, (i) => {
        k.if(i.mod(2).eq(0), () => k.map(y, ({ row }) => y.at(row).add(select(row.toF32().gt(1), f32(1.001), f32(-Infinity).exp()))));
      });
      k.store(Y, [range(0, 4)], y);
    });
    const Y = new Float32Array(4);
    interpret(kern, { tensors: { Y }, params: { n: 3 } }); // i = 0, 2
    expect(Array.from(Y)).toEqual([0, 0, roundBF16(roundBF16(1.001) + 1.001), roundBF16(roundBF16(1.001) + 1.001)]);
  });

  it("a block vote (any) picks the branch: body when the predicate holds somewhere, else orelse", () => {
    const kern = traceKernel("vote_test", 1, "", (k) => {
      const X = k.tensor("X", "f32", [2, 4], "in");
      const Y = k.tensor("Y", "f32", [2], "out");
      const x = k.shared("x", [2, 4], "f32");
      const y = k.reg("y", [2], "f32");
      k.load(x, X, [range(0, 2), range(0, 4)]);
      k.if(k.any(x, ({ row, col }) => x.at(row, col).isFinite().not()), () => k.fill(y, 1), () => k.fill(y, 2));
      k.store(Y, [range(0, 2)], y);
    });
    for (const [bad, want] of [[null, 2], [Infinity, 1], [NaN, 1]] as const) {
      const X = new Float32Array(8).fill(0.5), Y = new Float32Array(2);
      if (bad !== null) X[6] = bad;
      interpret(kern, { tensors: { X, Y }, params: {} });
      expect(Array.from(Y), `X[6] = ${bad}`).toEqual([want, want]);
    }
  });

  it("fetch reads a table element (0 out of bounds) for loop bounds, slices and masks", () => {
    // rows [T[2p], T[2p + 1]) of X, as many as T[2p + 1] - T[2p], copied to row block p of Y
    const kern = traceKernel("fetch_test", 1, "", (k) => {
      const T = k.table("T", 6), X = k.tensor("X", "f32", [10], "in"), Y = k.tensor("Y", "f32", [12], "out");
      k.launch(3);
      const p = k.programId(0), lo = T.at(p.mul(2)), hi = T.at(p.mul(2).add(1));
      const x = k.reg("x", [4], "f32");
      k.load(x, X, [range(lo, 4)]);
      k.map(x, ({ row }) => select(row.lt(hi.sub(lo)), x.at(row), -1));
      k.store(Y, [range(p.mul(4), 4)], x, { where: ({ row }) => row.lt(T.at(7).add(4)) }); // T[7] is out of bounds: 0
    });
    const X = Float32Array.from({ length: 10 }, (_, i) => i + 1), Y = new Float32Array(12).fill(NaN);
    interpret(kern, { tensors: { T: Float32Array.from([0, 2, 5, 9, 9, 9]), X, Y }, params: {} });
    expect(Array.from(Y)).toEqual([1, 2, -1, -1, 6, 7, 8, 9, -1, -1, -1, -1]);
  });

  it("tiles start as NaN: reading an unwritten element poisons the output", () => {
    const kern = traceKernel("nan_test", 1, "", (k) => {
      const Y = k.tensor("Y", "f32", [2], "out");
      const y = k.reg("y", [2], "f32");
      k.store(Y, [range(0, 2)], y);
    });
    const Y = new Float32Array(2);
    interpret(kern, { tensors: { Y }, params: {} });
    expect(Number.isNaN(Y[0])).toBe(true);
  });

  it("rejects missing params and wrongly sized tensors, naming them", () => {
    const kern = traceKernel("arg_test", 1, "", (k) => {
      const t = k.param("t", "i32");
      const Y = k.tensor("Y", "f32", [t], "out");
      const y = k.reg("y", [2], "f32");
      k.fill(y, 0);
      k.store(Y, [range(0, 2)], y);
    });
    expect(() => interpret(kern, { tensors: { Y: new Float32Array(2) }, params: {} })).toThrow(/param 't'/);
    expect(() => interpret(kern, { tensors: { Y: new Float32Array(3) }, params: { t: 2 } })).toThrow(/tensor 'Y' has 3 elements, expected 2/);
  });
});
