import { describe, expect, it } from "vitest";
import { i32, range, select, TableRef, traceKernel } from "../../dsl/builder.ts";
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
  it("takes a block vote (any) over tiles only as the whole condition of an if", () => {
    const ok = traceKernel("vote", 1, "", (k) => {
      const x = k.shared("x", [4, 8], "bf16");
      k.fill(x, 0);
      k.if(k.any(x, ({ row, col }) => x.at(row, col).isFinite().not().and(col.gt(row))), () => k.fill(x, 1), () => k.fill(x, 2));
    });
    expect(validateKernel(ok)).toEqual([]);
    const bad = traceKernel("vote_bad", 1, "", (k) => {
      const x = k.shared("x", [4, 8], "bf16");
      const y = k.reg("y", [4], "f32");
      k.fill(x, 0);
      k.if(k.any(x, ({ row, col }) => x.at(row, col).gt(0)).and(i32(1).gt(0)), () => k.fill(x, 1)); // not the whole condition
      k.if(k.any(x, ({ row, col }) => x.at(row, col)), () => k.fill(x, 1)); // not a bool
      k.map(y, ({ row }) => select(k.any(x, ({ col }) => x.at(row, col).gt(0)), 1, 0)); // in a map
    });
    const errs = validateKernel(bad).join("\n");
    expect(errs.match(/any: only as the whole condition of an if/g)?.length).toBe(2);
    expect(errs).toMatch(/if any: the predicate must be bool, got f32/);
  });
  it("reads an i32 table only by a program-uniform fetch, never in dims or the grid", () => {
    const ok = traceKernel("table_ok", 1, "", (k) => {
      const n = k.param("n", "i32");
      const T = k.table("T", n), X = k.tensor("X", "f32", [64], "in"), Y = k.tensor("Y", "f32", [64], "out");
      const x = k.reg("x", [8], "f32");
      k.for(T.at(k.programId(0)), T.at(k.programId(0).add(1)), (m) => {
        k.load(x, X, [range(T.at(m).mul(8), 8)]);
        k.store(Y, [range(m.mul(8), 8)], x, { where: ({ row }) => row.lt(T.at(m)) });
      });
    });
    expect(validateKernel(ok)).toEqual([]);
    expect(printKernel(ok)).toContain("for i0 in T@[pid.x]..T@[(pid.x + 1)]");
    const bad = traceKernel("table_bad", 1, "", (k) => {
      const T = k.table("T", 4), F = k.tensor("F", "f32", [4], "in");
      const Y = k.tensor("Y", "f32", [T.at(0)], "out"); // a dim read from a table
      k.launch(T.at(1)); // so is the grid
      const x = k.reg("x", [4], "f32");
      k.load(x, F, [range(0, 4)]);
      k.map(x, ({ row }) => T.at(row).toF32()); // not program-uniform
      k.load(x, T as never, [range(0, 4)]); // a table loaded into a tile
      k.map(x, () => new TableRef("F").at(0).toF32()); // not a table
      k.store(Y, [range(0, 4)], x);
    });
    const errs = validateKernel(bad).join("\n");
    expect(errs).toMatch(/dims of tensor Y read a table/);
    expect(errs).toMatch(/the grid reads a table/);
    expect(errs).toMatch(/fetch from T: the index must be program-uniform/);
    expect(errs).toMatch(/load T: an i32 table is read by fetch only/);
    expect(errs).toMatch(/fetch from F: expected a 1-D i32 input table, got in f32 of rank 1/);
  });
});
