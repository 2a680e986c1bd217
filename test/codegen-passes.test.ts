// The lowering passes, TileLang style: for each pass that transforms, a small kernel written in the
// DSL, the IR the pass receives and the IR it returns (inline snapshots, reviewed by hand), and
// the LIR validator run on the result. Kernels here are tiny on purpose: each shows one decision.

import { describe, expect, it } from "vitest";
import { i32, range, traceKernel, type KernelBuilder, type TensorRef, type Tile, type Val } from "../dsl/builder.ts";
import type { Kernel } from "../dsl/ir.ts";
import { fromDsl } from "../codegen/lir.ts";
import { printLKernel } from "../codegen/lir-print.ts";
import { validateLir } from "../codegen/lir-validate.ts";
import { lowerKernel, lowerUpTo, PASSES } from "../codegen/pipeline.ts";
import { mapRuns } from "../codegen/lower/fuse-maps.ts";

/** The IR before and after one pass (the passes before it applied), as text. */
function pair(k: Kernel, pass: string): { before: string; after: string } {
  const i = PASSES.findIndex((p) => p.name === pass);
  if (i < 0) throw new Error(`no pass ${pass}`);
  const before = i === 0 ? fromDsl(k) : lowerUpTo(k, PASSES[i - 1]!.name);
  const after = PASSES[i]!.run(before);
  expect(validateLir(after)).toEqual([]);
  return { before: printLKernel(before), after: printLKernel(after) };
}

const kernel = (name: string, warps: number, body: (k: KernelBuilder) => void): Kernel => traceKernel(name, warps, "", body);

describe("check-supported", () => {
  it("rejects a map that reads its destination at another element", () => {
    const k = kernel("shift", 1, (k) => {
      const x = k.shared("x", [4, 8], "f32");
      k.fill(x, 1);
      k.map(x, ({ row, col }) => x.at(row, col.add(1).min(7)));
    });
    expect(() => pair(k, "check-supported")).toThrow(/map into x reads x\[row, min\(\(col \+ 1\), 7\)\], not its own element/);
  });
  it("rejects an mma into one of its operands", () => {
    const k = kernel("inplace", 1, (k) => {
      const x = k.shared("x", [16, 16], "f32");
      k.fill(x, 1);
      k.mma(x, x, x);
    });
    expect(() => pair(k, "check-supported")).toThrow(/mma into x also reads it as an operand/);
  });
});

describe("select-mma", () => {
  it("f16/bf16 multiples of 16x8x16 on tensor cores, f32 by FMA in fragment layout, the rest plain FMA", () => {
    const k = kernel("mmas", 4, (k) => {
      const a = k.shared("a", [32, 64], "f16"), b = k.shared("b", [64, 32], "f16"), c = k.reg("c", [32, 32], "f32");
      const a32 = k.shared("a32", [32, 64], "f32"), c32 = k.reg("c32", [32, 32], "f32");
      const e = k.shared("e", [16, 24], "bf16"), f = k.shared("f", [8, 24], "bf16"), g = k.reg("g", [16, 8], "f32");
      const h = k.shared("h", [10, 4], "f32"), i = k.reg("i", [10, 10], "f32");
      for (const t of [a, b, a32, e, f, h]) k.fill(t, 1);
      k.mma(c, a, b);
      k.mma(c32, a32, a32, { transB: true });
      k.mma(g, e, f, { transB: true }); // k = 24: not a multiple of 16
      k.mma(i, h, h, { transB: true }); // 10 rows: not a multiple of 16
    });
    const { before, after } = pair(k, "select-mma");
    expect(before).toContain("  c = mma(a, b)\n");
    expect(after).toMatchInlineSnapshot(`
      "kernel mmas() grid (1, 1, 1) warps 4
        smem a: f16[32, 64]
        smem b: f16[64, 32]
        smem c: f32[32, 32]
        smem a32: f32[32, 64]
        smem c32: f32[32, 32]
        smem e: bf16[16, 24]
        smem f: bf16[8, 24]
        smem g: f32[16, 8]
        smem h: f32[10, 4]
        smem i: f32[10, 10]
        a[row, col] = 1.0
        b[row, col] = 1.0
        a32[row, col] = 1.0
        e[row, col] = 1.0
        f[row, col] = 1.0
        h[row, col] = 1.0
        c = mma.tc(a, b) [32x32 in 16x16 units over 4 warps]
        c32 = mma.fmaFrag(a32, a32^T) [32x32 in 16x16 units over 4 warps]
        g = mma.fmaFrag(e, f^T) [16x8 in 16x8 units over 4 warps]
        i = mma.fma(h, h^T)
      "
    `);
  });
});

describe("place-fragments", () => {
  it("keeps element-wise and reduced accumulators in registers, scanned or re-read tiles in shared memory", () => {
    const k = kernel("frags", 4, (k) => {
      const n = k.param("n", "i32");
      const Y = k.tensor("Y", "f32", [n, 32, 32], "out");
      const a = k.shared("a", [32, 32], "f16");
      const acc = k.reg("acc", [32, 32], "f32"); // mma, scaled in place, stored: registers
      const y = k.reg("y", [32, 32], "f32"); // reads acc at [row, col]: registers of the same tiling
      const w = k.reg("w", [32, 32], "f32"); // row-reduced: registers (two units per row: a scratch)
      const m = k.reg("m", [32], "f32"); // 1-D: shared memory
      const c = k.reg("c", [32, 32], "f32"); // column-reduced: registers (two units per column: a scratch)
      const cs = k.reg("cs", [32], "f32");
      const x = k.reg("x", [32, 32], "f32"); // scanned: shared memory
      k.fill(a, 1);
      k.mma(acc, a, a);
      k.mma(w, a, a);
      k.reduce(m, w, "max", 1);
      k.mma(c, a, a);
      k.reduce(cs, c, "sum", 0);
      k.mma(x, a, a);
      k.cumsum(x, x, 1);
      k.store(Y, [k.programId(0), range(0, 32), range(0, 32)], x);
      k.map(m, ({ row }) => m.at(row).add(cs.at(row)));
      k.map(acc, ({ row, col }) => acc.at(row, col).mul(m.at(row)));
      k.map(y, ({ row, col }) => acc.at(row, col).add(1));
      k.store(Y, [k.programId(0), range(0, 32), range(0, 32)], y);
    });
    const { after } = pair(k, "place-fragments");
    expect(after).toMatchInlineSnapshot(`
      "kernel frags($n: i32) grid (1, 1, 1) warps 4
        out Y: f32[$n, 32, 32]
        smem a: f16[32, 32]
        frag acc: f32[32, 32] (32x32 in 16x16 units over 4 warps)
        frag y: f32[32, 32] (32x32 in 16x16 units over 4 warps)
        frag w: f32[32, 32] (32x32 in 16x16 units over 4 warps)
        smem m: f32[32]
        frag c: f32[32, 32] (32x32 in 16x16 units over 4 warps)
        smem cs: f32[32]
        smem x: f32[32, 32]
        smem m_part: f32[2, 32]
        smem cs_part: f32[2, 32]
        a[row, col] = 1.0
        acc = mma.tc(a, a) [32x32 in 16x16 units over 4 warps]
        w = mma.tc(a, a) [32x32 in 16x16 units over 4 warps]
        m = reduce_max(w, axis=1) via m_part
        c = mma.tc(a, a) [32x32 in 16x16 units over 4 warps]
        cs = reduce_sum(c, axis=0) via cs_part
        x = mma.tc(a, a) [32x32 in 16x16 units over 4 warps]
        x = cumsum(x, axis=1)
        store Y[pid.x, 0:+32, 0:+32] = x
        m[row] = (m[row] + cs[row])
        acc[row, col] = (acc[row, col] * m[row])
        y[row, col] = (acc[row, col] + 1.0)
        store Y[pid.x, 0:+32, 0:+32] = y
      "
    `);
  });
});

describe("select-loads", () => {
  it("same-dtype loads of whole 16-byte chunks of the contiguous dim, and vectors of 4-byte elements, go through cp.async, one group per run", () => {
    const k = kernel("loads", 4, (k) => {
      const n = k.param("n", "i32");
      const X = k.tensor("X", "f16", [n, 64, 32], "in");
      const F = k.tensor("F", "f32", [n, 64, 32], "in");
      const G = k.tensor("G", "f32", [64, n], "in");
      const H = k.tensor("H", "f16", [64, n], "in");
      const x = k.shared("x", [64, 32], "f16"), y = k.shared("y", [64, 32], "f16"), f = k.shared("f", [64, 32], "f16");
      const g = k.reg("g", [64], "f32"), h = k.reg("h", [64], "f16"), s = k.reg("s", [64], "f32");
      const i = k.programId(0);
      k.load(x, X, [i, range(0, 64), range(0, 32)]); // async
      k.load(y, X, [i, range(0, 64), range(0, 32)]); // async, same group
      k.load(f, F, [i, range(0, 64), range(0, 32)]); // f32 -> f16: scalar
      k.load(g, G, [range(0, 64), i]); // strided f32: async, 4 bytes an element
      k.load(h, H, [range(0, 64), i]); // strided f16: scalar
      k.map(s, ({ row }) => x.at(row, 0).add(y.at(row, 1)).add(f.at(row, 2)).add(g.at(row)).add(h.at(row)));
    });
    const { after } = pair(k, "select-loads");
    expect(after).toMatchInlineSnapshot(`
      "kernel loads($n: i32) grid (1, 1, 1) warps 4
        in X: f16[$n, 64, 32]
        in F: f32[$n, 64, 32]
        in G: f32[64, $n]
        in H: f16[64, $n]
        smem x: f16[64, 32]
        smem y: f16[64, 32]
        smem f: f16[64, 32]
        smem g: f32[64]
        smem h: f16[64]
        smem s: f32[64]
        x = load.async X[pid.x, 0:+64, 0:+32]
        y = load.async X[pid.x, 0:+64, 0:+32]
        async.commit
        async.wait 0
        f = load F[pid.x, 0:+64, 0:+32]
        g = load.async G[0:+64, pid.x]
        async.commit
        async.wait 0
        h = load H[0:+64, pid.x]
        s[row] = ((((x[row, 0] + y[row, 1]) + f[row, 2]) + g[row]) + h[row])
      "
    `);
  });
});

describe("pipeline-loops", () => {
  it("a loop with stages 2 prefetches its streamed tile into a second copy", () => {
    const k = kernel("stream", 4, (k) => {
      const n = k.param("n", "i32");
      const X = k.tensor("X", "f32", [n, 16, 32], "in");
      const Y = k.tensor("Y", "f32", [16, 32], "out");
      const x = k.shared("x", [16, 32], "f32");
      const s = k.reg("s", [16, 32], "f32");
      k.fill(s, 0);
      k.for(0, n, (i) => {
        k.load(x, X, [i, range(0, 16), range(0, 32)]);
        k.map(s, ({ row, col }) => s.at(row, col).add(x.at(row, col)));
      }, { stages: 2 });
      k.store(Y, [range(0, 16), range(0, 32)], s);
    });
    const { before, after } = pair(k, "pipeline-loops");
    expect(before).toContain("  for i0 in 0..$n step 1 stages 2:\n    x = load.async X[i0, 0:+16, 0:+32]\n    async.commit\n    async.wait 0\n");
    expect(after).toMatchInlineSnapshot(`
      "kernel stream($n: i32) grid (1, 1, 1) warps 4
        in X: f32[$n, 16, 32]
        out Y: f32[16, 32]
        smem x: f32[16, 32] x2 copies
        frag s: f32[16, 32] (16x32 in 16x8 units over 4 warps)
        s[row, col] = 0.0
        if (0 < $n):
          x = load.async X[0, 0:+16, 0:+32] into stage 0
        async.commit
        for i0 in 0..$n step 1 stages 2:
          if ((i0 + 1) < $n):
            x = load.async X[(i0 + 1), 0:+16, 0:+32] into stage ((i0 + 1) % 2)
          async.commit
          async.wait 1
          bind x stage (i0 % 2)
          s[row, col] = (s[row, col] + x[row, col])
        async.wait 0
        store Y[0:+16, 0:+32] = s
      "
    `);
  });
});

describe("pipeline-loops: tiles used outside the loop", () => {
  const body = (k: KernelBuilder, outer: boolean, after: boolean): void => {
    const n = k.param("n", "i32");
    const X = k.tensor("X", "f32", [n, 16, 32], "in");
    const Y = k.tensor("Y", "f32", [16, 32], "out");
    const x = k.shared("x", [16, 32], "f32");
    const s = k.reg("s", [16, 32], "f32");
    const inner = (): void => {
      k.load(x, X, [0, range(0, 16), range(0, 32)]); // the tile's use before the loop (attention's diagonal block)
      k.map(s, ({ row, col }) => x.at(row, col));
      k.for(1, n, (i) => {
        k.load(x, X, [i, range(0, 16), range(0, 32)]);
        k.map(s, ({ row, col }) => s.at(row, col).add(x.at(row, col)));
      }, { stages: 2 });
      if (after) k.map(s, ({ row, col }) => s.at(row, col).add(x.at(row, col)));
    };
    if (outer) k.for(0, 2, () => inner());
    else inner();
    k.store(Y, [range(0, 16), range(0, 32)], s);
  };
  const streamedIn = (outer: boolean, after: boolean): boolean =>
    pair(kernel("use", 4, (k) => body(k, outer, after)), "pipeline-loops").after.includes("smem x: f32[16, 32] x2 copies");
  it("streams a tile used only before a top-level loop (it sees copy 0, done before the prologue refills it)", () => {
    expect(streamedIn(false, false)).toBe(true);
  });
  it("does not stream a tile read after the loop, or used before it inside an enclosing loop (the next pass runs that use again)", () => {
    expect(streamedIn(false, true)).toBe(false);
    expect(streamedIn(true, false)).toBe(false);
  });
});

describe("defer-wgmma-waits", () => {
  /** q k^T on wgmma, with a gate cumsum that needs none of it, then `after` (sm_90a's final LIR). */
  const lowered = (after: (k: KernelBuilder, t: { kt: Tile; K: TensorRef; s: Tile; w: Tile; h: Tile; i: Val }) => void): string =>
    printLKernel(lowerUpTo(kernel("defer", 4, (k) => {
      const n = k.param("n", "i32");
      const Q = k.tensor("Q", "bf16", [64, 64], "in"), K = k.tensor("K", "bf16", [n, 64, 64], "in"), G = k.tensor("G", "f32", [n, 64], "in");
      const Y = k.tensor("Y", "f32", [64, 64], "out");
      const q = k.shared("q", [64, 64], "bf16"), kt = k.shared("k", [64, 64], "bf16");
      const g = k.shared("g", [64], "f32"), h = k.shared("h", [64], "f32");
      const w = k.reg("w", [64, 64], "f32"), s = k.reg("s", [64, 64], "f32");
      k.load(q, Q, [range(0, 64), range(0, 64)]);
      k.fill(s, 0);
      k.for(0, n, (i) => {
        k.load(kt, K, [i, range(0, 64), range(0, 64)]);
        k.load(g, G, [i, range(0, 64)]);
        k.mma(w, q, kt, { transB: true });
        k.cumsum(h, g, 0);
        after(k, { kt, K, s, w, h, i });
      });
      k.store(Y, [range(0, 64), range(0, 64)], s);
    }), "defer-wgmma-waits", "sm_90a"));
  it("waits where the accumulator is first used; the statements between run under the mma", () => {
    const text = lowered((k, { s, w, h }) => k.map(s, ({ row, col }) => s.at(row, col).add(w.at(row, col).mul(h.at(col)))));
    expect(text).toContain("    w = mma.wgmma(q, k^T) [64x64 in 16x64 units over 4 warps]\n    h = cumsum(g, axis=0)\n    barrier\n    wgmma.wait (w)\n    s[row, col] =");
  });
  it("waits before the barrier ahead of a write to an operand's bytes, and before the loop body's last barrier at the latest", () => {
    const text = lowered((k, { kt, K, s, w, i }) => {
      k.load(kt, K, [i.add(1).min(0), range(0, 64), range(0, 64)]); // k again: the other threads may write it after the barrier
      k.map(s, ({ row, col }) => s.at(row, col).add(w.at(row, col)));
      k.mma(w, kt, kt, { transB: true }); // its wait: at the loop's end
    });
    expect(text).toContain("    h = cumsum(g, axis=0)\n    wgmma.wait (w)\n    barrier\n    k = load");
    // the barrier at the body's end orders the next iteration's load of k after this mma, so it
    // waits before it: right where it ends (no wgmma.wait statement)
    expect(text).toMatch(/w = mma\.wgmma\(k, k\^T\) \[64x64 in 16x64 units over 4 warps\]\n    barrier\n  store Y/);
  });
});

describe("fuse-operands", () => {
  it("computes an operand pair defined right before its mmas in registers, and keeps a tile used elsewhere in shared memory", () => {
    const k = kernel("ops", 2, (k) => {
      const a = k.shared("a", [16, 32], "bf16"), x = k.shared("x", [32, 16], "f32"), w = k.shared("w", [32, 16], "bf16");
      for (const t of [a, x, w]) k.fill(t, 1);
      const o = k.reg("o", [16, 16], "f32");
      const hi = k.shared("hi", [32, 16], "bf16"), lo = k.shared("lo", [32, 16], "bf16");
      k.map(hi, ({ row, col }) => x.at(row, col).mul(w.at(row, col)));
      k.map(lo, ({ row, col }) => x.at(row, col).mul(w.at(row, col)).sub(hi.at(row, col)));
      k.mma(o, a, hi);
      k.mma(o, a, lo, { accumulate: true });
      const kept = k.shared("kept", [32, 16], "bf16"); // read again below: stays a shared tile
      k.map(kept, ({ row, col }) => x.at(row, col).mul(2));
      k.mma(o, a, kept, { accumulate: true });
      k.map(x, ({ row, col }) => kept.at(row, col));
    });
    const { after } = pair(k, "fuse-operands");
    expect(after).toMatchInlineSnapshot(`
      "kernel ops() grid (1, 1, 1) warps 2
        smem a: bf16[16, 32]
        smem x: f32[32, 16]
        smem w: bf16[32, 16]
        frag o: f32[16, 16] (16x16 in 16x8 units over 2 warps)
        inline hi: bf16[32, 16] (computed in an mma group)
        inline lo: bf16[32, 16] (computed in an mma group)
        smem kept: bf16[32, 16]
        a[row, col] = 1.0
        x[row, col] = 1.0
        w[row, col] = 1.0
        mma.group (operands in registers):
          hi[row, col] = (x[row, col] * w[row, col])
          lo[row, col] = ((x[row, col] * w[row, col]) - hi[row, col])
          o = mma.tc(a, hi) [16x16 in 16x8 units over 2 warps]
          o += mma.tc(a, lo) [16x16 in 16x8 units over 2 warps]
        kept[row, col] = (x[row, col] * 2.0)
        o += mma.tc(a, kept) [16x16 in 16x8 units over 2 warps]
        x[row, col] = kept[row, col]
      "
    `);
  });
});

describe("pad-shared", () => {
  it("pads mma operand rows of an even number of 16-byte units by 16 bytes", () => {
    const k = kernel("pads", 4, (k) => {
      const a = k.shared("a", [64, 64], "f16"); // 128-byte rows: padded to 72
      const b = k.shared("b", [64, 8], "f16"); // one 16-byte unit: left alone
      const c = k.shared("c", [16, 32], "f32"); // FMA operand, 128-byte rows: padded to 36
      const d = k.shared("d", [64, 64], "f16"); // not an operand: left alone
      const o = k.reg("o", [64, 8], "f32"), p = k.reg("p", [16, 16], "f32");
      for (const t of [a, b, c, d]) k.fill(t, 1);
      k.mma(o, a, b);
      k.mma(p, c, c, { transB: true });
    });
    const { after } = pair(k, "pad-shared");
    expect(after).toMatchInlineSnapshot(`
      "kernel pads() grid (1, 1, 1) warps 4
        smem a: f16[64, 64] pitch 72
        smem b: f16[64, 8]
        smem c: f32[16, 32] pitch 36
        smem d: f16[64, 64]
        frag o: f32[64, 8] (64x8 in 16x8 units over 4 warps)
        frag p: f32[16, 16] (16x16 in 16x8 units over 4 warps)
        a[row, col] = 1.0
        b[row, col] = 1.0
        c[row, col] = 1.0
        d[row, col] = 1.0
        o = mma.tc(a, b) [64x8 in 16x8 units over 4 warps]
        p = mma.fmaFrag(c, c^T) [16x16 in 16x8 units over 4 warps]
      "
    `);
  });
});

describe("plan-shared", () => {
  it("tiles with disjoint live ranges share bytes; a loop keeps its tiles live throughout", () => {
    const k = kernel("plan", 4, (k) => {
      const n = k.param("n", "i32");
      const Y = k.tensor("Y", "f32", [n, 64], "out");
      const a = k.shared("a", [64], "f32"), b = k.shared("b", [64], "f32"), c = k.shared("c", [64], "f32");
      const d = k.shared("d", [64], "f32"), e = k.shared("e", [64], "f32");
      k.fill(a, 1);
      k.map(b, ({ row }) => a.at(row).add(1)); // a dies here
      k.map(c, ({ row }) => b.at(row).add(1)); // c may take a's bytes
      k.for(0, n, () => {
        k.map(d, ({ row }) => c.at(row)); // d, e live through the loop
        k.map(e, ({ row }) => d.at(row));
      });
      k.store(Y, [k.programId(0), range(0, 64)], e);
    });
    const { after } = pair(k, "plan-shared");
    expect(after).toMatchInlineSnapshot(`
      "kernel plan($n: i32) grid (1, 1, 1) warps 4 smem 768
        out Y: f32[$n, 64]
        smem a: f32[64] @0
        smem b: f32[64] @256
        smem c: f32[64] @0
        smem d: f32[64] @256
        smem e: f32[64] @512
        a[row] = 1.0
        b[row] = (a[row] + 1.0)
        c[row] = (b[row] + 1.0)
        for i0 in 0..$n step 1:
          d[row] = c[row]
          e[row] = d[row]
        store Y[pid.x, 0:+64] = e
      "
    `);
  });
});

const barrierKernel = (): Kernel =>
  kernel("sync", 4, (k) => {
    const n = k.param("n", "i32");
    const X = k.tensor("X", "f32", [n, 64], "in");
    const Y = k.tensor("Y", "f32", [n, 64], "out");
    const x = k.shared("x", [64], "f32"), y = k.shared("y", [64], "f32"), z = k.shared("z", [64], "f32");
    k.load(x, X, [k.programId(0), range(0, 64)]);
    k.fill(z, 0); // independent of x: no barrier between
    k.for(0, n, () => {
      // reads x (async copies of other threads: barrier before the loop) and z of other threads
      // (written at the end of the previous iteration: barrier at the loop's back edge)
      k.map(y, ({ row }) => x.at(row).add(z.at(i32(63).sub(row))));
      // reads y[row], written by this very thread: no barrier for that; but it overwrites z that
      // other threads just read: barrier
      k.map(z, ({ row }) => z.at(row).add(y.at(row)));
    });
    k.store(Y, [k.programId(0), range(0, 64)], z);
  });

describe("insert-barriers", () => {
  it("puts a barrier between every two statements and at the end of every loop body", () => {
    const { after } = pair(barrierKernel(), "insert-barriers");
    expect(after).toMatchInlineSnapshot(`
      "kernel sync($n: i32) grid (1, 1, 1) warps 4 smem 768
        in X: f32[$n, 64]
        out Y: f32[$n, 64]
        smem x: f32[64] @0
        smem y: f32[64] @512
        smem z: f32[64] @256
        x = load.async X[pid.x, 0:+64]
        barrier
        async.commit
        barrier
        async.wait 0
        barrier
        z[row] = 0.0
        barrier
        for i0 in 0..$n step 1:
          y[row] = (x[row] + z[(63 - row)])
          barrier
          z[row] = (z[row] + y[row])
          barrier
        barrier
        store Y[pid.x, 0:+64] = z
      "
    `);
  });
});

describe("elide-barriers", () => {
  it("keeps the barriers that order a shared-memory hazard, including across the loop's back edge", () => {
    const { after } = pair(barrierKernel(), "elide-barriers");
    expect(after).toMatchInlineSnapshot(`
      "kernel sync($n: i32) grid (1, 1, 1) warps 4 smem 768
        in X: f32[$n, 64]
        out Y: f32[$n, 64]
        smem x: f32[64] @0
        smem y: f32[64] @512
        smem z: f32[64] @256
        x = load.async X[pid.x, 0:+64]
        async.commit
        async.wait 0
        z[row] = 0.0
        barrier
        for i0 in 0..$n step 1:
          y[row] = (x[row] + z[(63 - row)])
          barrier
          z[row] = (z[row] + y[row])
          barrier
        store Y[pid.x, 0:+64] = z
      "
    `);
  });
});

describe("elide-barriers around a block vote", () => {
  it("the vote reads its tile after a barrier, and is itself one: the branches write it without another", () => {
    const k = kernel("vote", 4, (k) => {
      const X = k.tensor("X", "bf16", [64, 64], "in");
      const Y = k.tensor("Y", "bf16", [64, 64], "out");
      const x = k.shared("x", [64, 64], "bf16");
      const z = k.shared("z", [64, 64], "bf16");
      k.load(x, X, [range(0, 64), range(0, 64)]);
      k.map(z, ({ row, col }) => x.at(i32(63).sub(row), col)); // reads x's other rows
      // the vote reads z, which other threads wrote (a barrier first); the branches overwrite x,
      // which other threads read, after the vote (no barrier of their own)
      k.if(k.any(z, ({ row, col }) => z.at(row, col).isFinite().not()), () => k.fill(x, 0), () => k.map(x, ({ row, col }) => x.at(row, col).add(1)));
      k.store(Y, [range(0, 64), range(0, 64)], x);
    });
    const { after } = pair(k, "elide-barriers");
    expect(after).toMatchInlineSnapshot(`
      "kernel vote() grid (1, 1, 1) warps 4 smem 16384
        in X: bf16[64, 64]
        out Y: bf16[64, 64]
        smem x: bf16[64, 64] @0
        smem z: bf16[64, 64] @8192
        x = load.async X[0:+64, 0:+64]
        async.commit
        async.wait 0
        barrier
        z[row, col] = x[(63 - row), col]
        barrier
        if any[64, 64](!(finite(z[row, col]))):
          x[row, col] = 0.0
        else:
          x[row, col] = (x[row, col] + 1.0)
        store Y[0:+64, 0:+64] = x
      "
    `);
  });
});

describe("elide-barriers over register fragments", () => {
  it("a row reduce of fragments waits only for its scratch (here bytes shared with a, read by the mma); its result is read per row, and maps over one tiling chain, without barriers", () => {
    const k = kernel("softmax", 4, (k) => {
      const n = k.param("n", "i32");
      const Y = k.tensor("Y", "bf16", [n, 32, 32], "out");
      const a = k.shared("a", [32, 32], "f16");
      const w = k.reg("w", [32, 32], "f32"); // mma result, reduced per row: registers
      const m = k.reg("m", [32], "f32");
      const p = k.shared("p", [32, 32], "bf16"); // from w per fragment element
      const q = k.shared("q", [32, 32], "bf16"); // reads p at its own element in the same tiling
      k.fill(a, 1);
      k.mma(w, a, a);
      k.map(w, ({ row, col }) => w.at(row, col).mul(2));
      k.reduce(m, w, "max", 1);
      k.map(m, ({ row }) => m.at(row).add(1));
      k.map(p, ({ row, col }) => w.at(row, col).sub(m.at(row)).exp());
      k.map(q, ({ row, col }) => p.at(row, col).mul(w.at(row, col)));
      k.store(Y, [k.programId(0), range(0, 32), range(0, 32)], q);
    });
    const { after } = pair(k, "elide-barriers");
    expect(after).toMatchInlineSnapshot(`
      "kernel softmax($n: i32) grid (1, 1, 1) warps 4 smem 4480
        out Y: bf16[$n, 32, 32]
        smem a: f16[32, 32] pitch 40 @0
        frag w: f32[32, 32] (32x32 in 16x16 units over 4 warps)
        smem m: f32[32] @256
        smem p: bf16[32, 32] @384
        smem q: bf16[32, 32] @2432
        smem m_part: f32[2, 32] @0
        a[row, col] = 1.0
        barrier
        w = mma.tc(a, a) [32x32 in 16x16 units over 4 warps]
        w[row, col] = (w[row, col] * 2.0)
        barrier
        m = reduce_max(w, axis=1) via m_part
        m[row] = (m[row] + 1.0)
        barrier
        p[row, col] = exp((w[row, col] - m[row]))
        q[row, col] = (p[row, col] * w[row, col])
        barrier
        store Y[pid.x, 0:+32, 0:+32] = q
      "
    `);
  });
});

describe("fuse-maps (render time)", () => {
  const runsOf = (k: Kernel): string[][] => {
    const lk = lowerUpTo(k, PASSES.at(-1)!.name);
    return mapRuns(lk, lk.body).map((run) => run.map((s) => (s.kind === "map" ? s.dst : s.kind)));
  };
  it("runs a hi / lo pair over one shape as one loop, lo reading hi at its own element", () => {
    const k = kernel("pair", 2, (k) => {
      const x = k.shared("x", [16, 16], "f32"), hi = k.shared("hi", [16, 16], "bf16"), lo = k.shared("lo", [16, 16], "bf16");
      k.fill(x, 3);
      k.map(hi, ({ row, col }) => x.at(row, col).mul(2));
      k.map(lo, ({ row, col }) => x.at(row, col).mul(2).sub(hi.at(row, col)));
      const out = k.tensor("out", "bf16", [16, 16], "out"); // stored, not an mma's operand: fuse-operands leaves the pair to this
      k.store(out, [range(0, 16), range(0, 16)], hi);
      k.store(out, [range(0, 16), range(0, 16)], lo);
    });
    expect(runsOf(k)).toEqual([["x", "hi", "lo"], ["store"], ["store"]]); // the fill of x joins too
    const cuda = lowerKernel(k, { symbol: "pair" }).cuda;
    // reads of x and hi at the element are the registers y0 (x) and y1 (hi), not shared memory
    expect(cuda).toContain("const __nv_bfloat16 y2 = prt::from_f32<__nv_bfloat16>(((y0 * 2.0f) - prt::to_f32(y1)));");
  });
  it("keeps maps apart when a later one reads an earlier one's destination at another element", () => {
    const k = kernel("shifted", 2, (k) => {
      const x = k.shared("x", [16, 16], "f32"), a = k.shared("a", [16, 16], "f32"), b = k.shared("b", [16, 16], "f32");
      k.fill(x, 3);
      k.map(a, ({ row, col }) => x.at(row, col).mul(2));
      k.map(b, ({ row, col }) => a.at(row, col.add(1).min(15)));
      k.store(k.tensor("out", "f32", [16, 16], "out"), [range(0, 16), range(0, 16)], b);
    });
    expect(runsOf(k).some((r) => r.includes("a") && r.includes("b"))).toBe(false);
  });
  it("keeps maps apart over different shapes, and when an earlier map reads a later one's destination", () => {
    const k = kernel("apart", 2, (k) => {
      const x = k.shared("x", [16, 16], "f32"), y = k.shared("y", [16, 8], "f32"), z = k.shared("z", [16, 16], "f32");
      k.fill(x, 3);
      k.fill(z, 1);
      k.map(y, ({ row, col }) => x.at(row, col).mul(2)); // [16, 8]
      k.map(x, ({ row, col }) => z.at(row, col).add(1)); // [16, 16] after a [16, 8]
      k.map(z, ({ row, col }) => x.at(row, col).mul(3)); // writes z, which the map before read
      const out = k.tensor("out", "f32", [16, 16], "out");
      k.store(out, [range(0, 16), range(0, 8)], y);
      k.store(out, [range(0, 16), range(0, 16)], z);
    });
    // y is [16, 8]; x then z: the map into x reads z, which the next map writes
    expect(runsOf(k)).toEqual([["x", "z"], ["barrier"], ["y"], ["barrier"], ["x"], ["z"], ["store"], ["store"]]);
  });
});
