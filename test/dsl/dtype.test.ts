import { describe, expect, it } from "vitest";
import { fcSeed } from "../helpers/problems.ts";
import fc from "fast-check";
import { roundBF16, roundF16, roundF32 } from "../../dsl/dtype.ts";

// Bit-level references: f16 via its definition on the value grid, bf16 via f32 bits.
function bf16ViaBits(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  const lsb = (u[0]! >>> 16) & 1;
  u[0] = (u[0]! + 0x7fff + lsb) & 0xffff0000;
  return f[0]!;
}

describe("dtype rounding", () => {
  it("rounds f16 at known points", () => {
    expect(roundF16(1)).toBe(1);
    expect(roundF16(1 + 2 ** -11)).toBe(1); // tie -> even
    expect(roundF16(1 + 3 * 2 ** -11)).toBe(1 + 2 ** -9); // tie -> even (up)
    expect(roundF16(65504)).toBe(65504);
    expect(roundF16(65519)).toBe(65504);
    expect(roundF16(65520)).toBe(Infinity);
    expect(roundF16(2 ** -24)).toBe(2 ** -24); // smallest subnormal
    expect(roundF16(2 ** -26)).toBe(0);
    expect(roundF16(-3.14159)).toBe(-3.140625);
  });
  it("bf16 matches the f32 bit trick on f32 inputs", () => {
    fc.assert(
      fc.property(fc.float({ noNaN: true, noDefaultInfinity: true, min: Math.fround(-1e30), max: Math.fround(1e30) }), (x) => {
        expect(roundBF16(x)).toBe(bf16ViaBits(x));
      }),
      { seed: fcSeed(), numRuns: 2000 },
    );
  });
  it("f16 rounding is idempotent, monotone and within half an ulp", () => {
    fc.assert(
      fc.property(fc.double({ min: -60000, max: 60000, noNaN: true }), (x) => {
        const r = roundF16(x);
        expect(roundF16(r)).toBe(r);
        expect(Math.abs(r - x)).toBeLessThanOrEqual(Math.max(Math.abs(x) * 2 ** -11, 2 ** -25) * 1.0000001);
      }),
      { seed: fcSeed(), numRuns: 2000 },
    );
  });
  it("f32 is Math.fround", () => {
    expect(roundF32(0.1)).toBe(Math.fround(0.1));
  });
});
