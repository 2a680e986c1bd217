// mma: D (+)= op(A) @ op(B), fp32 accumulation, operands in shared memory.
//   tc      : each warp owns units of 16 x 8nt outputs; per k-step of 16 it loads the A fragment
//             with ldmatrix (.trans when A is stored [k, m]) and B fragments two n-tiles at a time
//             (.trans when B is stored [k, n]), then mma.sync m16n8k16 per n-tile.
//   fmaFrag : the same ownership with fp32 FMAs (f32 operands), so a frag accumulator can stay.
//   fma     : one output element per thread step, any shape, accumulator in shared memory.

import { bufferOf, cType, threadsOf, tilingSlots, tilingUnits, type LKernel, type LStmt, type WarpTiling } from "./lir.ts";
import { mmaShape } from "./lower/rules.ts";
import { cName, smemElem } from "./render-expr.ts";
import type { Emitter } from "./emit.ts";

type Mma = Extract<LStmt, { kind: "mma" }>;

/** The per-unit loop of a tiling with `acc` bound to the unit's accumulators; body emits the K loop. */
function unitLoop(o: Emitter, k: LKernel, s: Mma, t: WarpTiling, body: () => void): void {
  const d = bufferOf(k, s.dst);
  const un = t.n / (8 * t.nt), units = tilingUnits(t);
  const own = (q: string, e: string): string => smemElem(k, s.dst, [`m0 + prt::frag_row(lane, ${e})`, `n0 + ${q} * 8 + prt::frag_col(lane, ${e})`]);
  const eachAcc = (f: (q: string, e: string) => string): void => {
    o.pragma("#pragma unroll");
    o.line(`for (int q = 0; q < ${t.nt}; ++q)`);
    o.pragma("#pragma unroll");
    o.line(`  for (int e = 0; e < 4; ++e) ${f("q", "e")}`);
  };
  o.pragma("#pragma unroll");
  o.open(`for (int j = 0; j < ${tilingSlots(t)}; ++j)`);
  o.line(`const int u = warp + j * ${t.warps};`);
  if (units % t.warps !== 0) o.open(`if (u < ${units})`);
  o.line(`const int m0 = (u / ${un}) * 16, n0 = (u % ${un}) * ${8 * t.nt};`);
  if (d.home === "frag") {
    o.line(`float (&acc)[${t.nt}][4] = ${cName("f", s.dst)}[j];`);
    if (!s.accumulate) eachAcc(() => "acc[q][e] = 0.0f;");
  } else {
    o.line(`float acc[${t.nt}][4];`);
    eachAcc((q, e) => (s.accumulate ? `acc[q][e] = ${own(q, e)};` : "acc[q][e] = 0.0f;"));
  }
  body();
  if (d.home !== "frag") eachAcc((q, e) => `${own(q, e)} = acc[q][e];`);
  if (units % t.warps !== 0) o.close();
  o.close();
}

function renderTensorCores(o: Emitter, k: LKernel, s: Mma, t: WarpTiling): void {
  const a = bufferOf(k, s.a), b = bufferOf(k, s.b);
  const T = cType(a.type.dtype);
  const A = cName("t", s.a), B = cName("t", s.b);
  const { k: K } = mmaShape(k, s);
  unitLoop(o, k, s, t, () => {
    o.open(`for (int k0 = 0; k0 < ${K}; k0 += 16)`);
    o.line("uint32_t af[4];");
    o.line(
      s.transA
        ? `prt::ldmatrix_x4_trans(af, &${A}[(k0 + prt::at_row(lane)) * ${a.pitch} + m0 + prt::at_col(lane)]);`
        : `prt::ldmatrix_x4(af, &${A}[(m0 + prt::a_row(lane)) * ${a.pitch} + k0 + prt::a_col(lane)]);`,
    );
    if (t.nt === 1) {
      o.line("uint32_t bf[2];");
      o.line(
        s.transB
          ? `prt::ldmatrix_x2(bf, &${B}[(n0 + (lane & 7)) * ${b.pitch} + k0 + ((lane >> 3) & 1) * 8]);`
          : `prt::ldmatrix_x2_trans(bf, &${B}[(k0 + (lane & 15)) * ${b.pitch} + n0]);`,
      );
      o.line(`prt::mma_16816<${T}>(acc[0], af, bf[0], bf[1]);`);
    } else {
      o.pragma("#pragma unroll");
      o.open(`for (int q = 0; q < ${t.nt}; q += 2)`);
      o.line("uint32_t bf[4];");
      o.line(
        s.transB
          ? `prt::ldmatrix_x4(bf, &${B}[(n0 + q * 8 + prt::at_row(lane)) * ${b.pitch} + k0 + prt::at_col(lane)]);`
          : `prt::ldmatrix_x4_trans(bf, &${B}[(k0 + prt::a_row(lane)) * ${b.pitch} + n0 + q * 8 + prt::a_col(lane)]);`,
      );
      o.line(`prt::mma_16816<${T}>(acc[q], af, bf[0], bf[1]);`);
      o.line(`prt::mma_16816<${T}>(acc[q + 1], af, bf[2], bf[3]);`);
      o.close();
    }
    o.close();
  });
}

/** C expressions for op(A)(i, kk) and op(B)(kk, j) as f32. */
function operands(k: LKernel, s: Mma): { A: (i: string, kk: string) => string; B: (kk: string, j: string) => string } {
  return {
    A: (i, kk) => `prt::to_f32(${smemElem(k, s.a, s.transA ? [kk, i] : [i, kk])})`,
    B: (kk, j) => `prt::to_f32(${smemElem(k, s.b, s.transB ? [j, kk] : [kk, j])})`,
  };
}

function renderFmaFrag(o: Emitter, k: LKernel, s: Mma, t: WarpTiling): void {
  const { A, B } = operands(k, s);
  const { k: K } = mmaShape(k, s);
  unitLoop(o, k, s, t, () => {
    o.line("const int g = lane >> 2, t2 = (lane & 3) * 2;");
    o.open(`for (int kk = 0; kk < ${K}; ++kk)`);
    o.line(`const float a0 = ${A("m0 + g", "kk")}, a1 = ${A("m0 + g + 8", "kk")};`);
    o.pragma("#pragma unroll");
    o.open(`for (int q = 0; q < ${t.nt}; ++q)`);
    o.line(`const float b0 = ${B("kk", "n0 + q * 8 + t2")}, b1 = ${B("kk", "n0 + q * 8 + t2 + 1")};`);
    o.line("acc[q][0] = fmaf(a0, b0, acc[q][0]);");
    o.line("acc[q][1] = fmaf(a0, b1, acc[q][1]);");
    o.line("acc[q][2] = fmaf(a1, b0, acc[q][2]);");
    o.line("acc[q][3] = fmaf(a1, b1, acc[q][3]);");
    o.close();
    o.close();
  });
}

function renderFma(o: Emitter, k: LKernel, s: Mma): void {
  const { A, B } = operands(k, s);
  const { m, n, k: K } = mmaShape(k, s);
  const D = (r: string, c: string): string => smemElem(k, s.dst, [r, c]);
  o.open(`for (int i = tid; i < ${m * n}; i += ${threadsOf(k)})`);
  o.line(`const int r = i / ${n}, c = i % ${n};`);
  o.line(`float acc = ${s.accumulate ? D("r", "c") : "0.0f"};`);
  o.line(`for (int kk = 0; kk < ${K}; ++kk) acc = fmaf(${A("r", "kk")}, ${B("kk", "c")}, acc);`);
  o.line(`${D("r", "c")} = acc;`);
  o.close();
}

export function renderMma(o: Emitter, k: LKernel, s: Mma): void {
  const impl = s.impl ?? { kind: "fma" as const };
  if (impl.kind === "tc") renderTensorCores(o, k, s, impl.tiling);
  else if (impl.kind === "fmaFrag") renderFmaFrag(o, k, s, impl.tiling);
  else renderFma(o, k, s);
}
