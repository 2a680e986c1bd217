import { describe, expect, it } from "vitest";
import { range, traceKernel } from "../../dsl/builder.ts";
import { printKernel } from "../../dsl/print.ts";
import { validateKernel } from "../../dsl/validate.ts";

describe("validator", () => {
  it("accepts a well-formed kernel and prints it", () => {
    const k = traceKernel("ok", 2, "", (k) => {
      const t = k.param("t", "i32");
      const X = k.tensor("X", "f16", [t, 16], "in"), Y = k.tensor("Y", "f32", [16, 16], "out");
      const x = k.shared("x", [16, 16], "f16"), y = k.reg("y", [16, 16], "f32");
      k.load(x, X, [range(0, 16), range(0, 16)]);
      k.mma(y, x, x, { transB: true });
      k.store(Y, [range(0, 16), range(0, 16)], y);
    });
    expect(validateKernel(k)).toEqual([]);
    expect(printKernel(k)).toContain("y = mma(x, x^T)");
  });
  it("reports shape, dtype, scope and role errors, each named", () => {
    const k = traceKernel("bad", 2, "", (k) => {
      const X = k.tensor("X", "f16", [16, 16], "in");
      const x = k.shared("x", [16, 16], "f16"), y = k.reg("y", [16, 8], "f16"), z = k.reg("z", [8], "f32");
      k.load(x, X, [range(0, 16), range(0, 8)]); // wrong range size
      k.mma(y, x, x); // f16 accumulator and wrong shape
      k.reduce(z, x, "sum", 1); // wrong dst size
      k.store(X, [range(0, 16), range(0, 16)], x); // store to input
    });
    const errs = validateKernel(k).join("\n");
    expect(errs).toMatch(/ranges of sizes \[16,8\] do not match tile x/);
    expect(errs).toMatch(/accumulator must be f32/);
    expect(errs).toMatch(/dst shape \[16,8\], expected \[16,16\]/);
    expect(errs).toMatch(/dst z has shape \[8\], expected \[16\]/);
    expect(errs).toMatch(/store to input tensor X/);
  });
  it("rejects row/col outside a map and non-uniform branches", () => {
    const k = traceKernel("bad2", 1, "", (k) => {
      const y = k.reg("y", [4], "f32");
      k.fill(y, 0);
      k.if(y.at(0).gt(0), () => k.fill(y, 1));
      k.map(y, ({ col }) => col.toF32());
    });
    const errs = validateKernel(k).join("\n");
    expect(errs).toMatch(/program-uniform/);
    expect(errs).toMatch(/'col' used in a map over a 1-D tile/);
  });
});
