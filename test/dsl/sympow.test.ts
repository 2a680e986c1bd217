import { describe, expect, it } from "vitest";
import { fcSeed } from "../helpers/problems.ts";
import fc from "fast-check";
import { featureCount, symPowTable } from "../../dsl/sympow.ts";

describe("symmetric power tables", () => {
  it("has SPEC's feature counts", () => {
    expect(featureCount(32, 2)).toBe(528);
    expect(featureCount(64, 2)).toBe(2080);
    expect(featureCount(128, 2)).toBe(8256);
    expect(featureCount(32, 4)).toBe(52360);
  });
  it("lists each multiset once, in lexicographic order", () => {
    const t = symPowTable(5, 3);
    const keys = Array.from({ length: t.size }, (_, f) => Array.from(t.index.subarray(f * 3, f * 3 + 3)).join(","));
    expect(new Set(keys).size).toBe(t.size);
    expect([...keys].sort()).toEqual(keys);
  });
  it("phi(x).phi(y) = (x.y)^p", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 6 }), fc.constantFrom(2, 4), fc.array(fc.double({ min: -2, max: 2, noNaN: true }), { minLength: 12, maxLength: 12 }), (d, p, xy) => {
        const t = symPowTable(d, p);
        const x = xy.slice(0, d), y = xy.slice(6, 6 + d);
        let s = 0;
        for (let f = 0; f < t.size; f++) {
          let a = t.weight[f]!, b = t.weight[f]!;
          for (let k = 0; k < p; k++) {
            a *= x[t.index[f * p + k]!]!;
            b *= y[t.index[f * p + k]!]!;
          }
          s += a * b;
        }
        const dot = x.reduce((acc, v, i) => acc + v * y[i]!, 0);
        expect(Math.abs(s - dot ** p)).toBeLessThanOrEqual(1e-9 * (1 + Math.abs(dot ** p)));
      }),
      { seed: fcSeed(), numRuns: 300 },
    );
  });
});
