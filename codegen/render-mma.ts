// mma: D (+)= op(A) @ op(B), fp32 accumulation, operands in shared memory.
//   tc      : each warp owns units of 16 x 8nt outputs; per k-step of 16 it loads the A fragment
//             with ldmatrix (.trans when A is stored [k, m]) and B fragments two n-tiles at a time
//             (.trans when B is stored [k, n]), then mma.sync m16n8k16 per n-tile.
//   fmaFrag : the same ownership with fp32 FMAs (f32 operands), so a frag accumulator can stay.
//   fma     : one output element per thread step, any shape, accumulator in shared memory.

import { bufferOf, cType, threadsOf, tilingSlots, tilingUnits, type LKernel, type LMma, type LStmt, type WarpTiling } from "./lir.ts";
import { groupPlan, type GroupPlan } from "./lower/fuse-operands.ts";
import { mmaShape } from "./lower/rules.ts";
import { cName, renderF32, smemElem, tileOffset } from "./render-expr.ts";
import type { Emitter } from "./emit.ts";

type Mma = LMma;
type Group = Extract<LStmt, { kind: "mmaGroup" }>;

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

/** The C array holding a shared tile's fragments for one k-step: A side uint32_t[4], B side
 * uint32_t[nt][2] (n-tile q: registers b0b1, b2b3). */
const fragName = (side: "a" | "b", trans: boolean, tile: string): string => cName(`f${side}${trans ? "t" : ""}`, tile);

/** ldmatrix of a shared tile's fragments at k-step k0 of the current unit (m0, n0). */
function loadFragments(o: Emitter, k: LKernel, side: "a" | "b", trans: boolean, tile: string, nt: number): string {
  const b = bufferOf(k, tile), T = cName("t", tile), f = fragName(side, trans, tile);
  const at = (r: string, c: string): string => `&${T}[${tileOffset(b, r, c)}]`;
  if (side === "a") {
    o.line(`uint32_t ${f}[4];`);
    o.line(
      trans
        ? `prt::ldmatrix_x4_trans(${f}, ${at("k0 + prt::at_row(lane)", "m0 + prt::at_col(lane)")});`
        : `prt::ldmatrix_x4(${f}, ${at("m0 + prt::a_row(lane)", "k0 + prt::a_col(lane)")});`,
    );
    return f;
  }
  o.line(`uint32_t ${f}[${nt}][2];`);
  if (nt === 1) {
    o.line(
      trans
        ? `prt::ldmatrix_x2(${f}[0], ${at("n0 + (lane & 7)", "k0 + ((lane >> 3) & 1) * 8")});`
        : `prt::ldmatrix_x2_trans(${f}[0], ${at("k0 + (lane & 15)", "n0")});`,
    );
    return f;
  }
  o.pragma("#pragma unroll");
  o.open(`for (int q = 0; q < ${nt}; q += 2)`);
  o.line("uint32_t r[4];");
  o.line(
    trans
      ? `prt::ldmatrix_x4(r, ${at("n0 + q * 8 + prt::at_row(lane)", "k0 + prt::at_col(lane)")});`
      : `prt::ldmatrix_x4_trans(r, ${at("k0 + prt::a_row(lane)", "n0 + q * 8 + prt::a_col(lane)")});`,
  );
  o.line(`${f}[q][0] = r[0]; ${f}[q][1] = r[1]; ${f}[q + 1][0] = r[2]; ${f}[q + 1][1] = r[3];`);
  o.close();
  return f;
}

/** The A fragment of slot j at k-step k0 from a packed frag tile in the row-block layout (rules.fragFeedsA):
 * registers a0..a3 hold (g, t2), (g + 8, t2), (g, t2 + 8), (g + 8, t2 + 8) and their right
 * neighbours, i.e. pairs 0 and 1 of n-tiles k0 / 8 and k0 / 8 + 1. */
function fragOperandA(o: Emitter, tile: string): string {
  const f = cName("f", tile), a = cName("fa", tile);
  o.line(`const uint32_t ${a}[4] = {${f}[j][k0 / 8][0], ${f}[j][k0 / 8][1], ${f}[j][k0 / 8 + 1][0], ${f}[j][k0 / 8 + 1][1]};`);
  return a;
}

/** The computed tiles of a group at k-step k0 (lower/fuse-operands.ts): every map evaluated at
 * the fragment elements of this lane, in order, rounded, packed two per register. Element (h) of
 * register rg: A side (m, k) = (m0 + g + 8 (rg & 1), k0 + t2 + 8 (rg >> 1) + h); B side n-tile q
 * (k, n) = (k0 + t2 + 8 rg + h, n0 + 8 q + g); the tile's (row, col) is that or, transposed, its swap. */
function computeOperands(o: Emitter, k: LKernel, g: Group, plan: GroupPlan, nt: number, frags: ReadonlyMap<string, string>): Map<string, string> {
  const out = new Map<string, string>();
  const T = cType(bufferOf(k, g.operands[0]!.dst).type.dtype);
  const a = plan.side === "a";
  const sub = a ? "[rg]" : "[q][rg]";
  g.operands.forEach((m) => {
    const f = cName(`i${plan.side}`, m.dst);
    out.set(m.dst, f);
    o.line(`uint32_t ${f}${a ? "[4]" : `[${nt}][2]`};`);
  });
  if (!a) {
    o.pragma("#pragma unroll");
    o.open(`for (int q = 0; q < ${nt}; ++q)`);
  }
  o.pragma("#pragma unroll");
  o.open(`for (int rg = 0; rg < ${a ? 4 : 2}; ++rg)`);
  o.line(`${T} ${g.operands.map((_, i) => `v${i}[2]`).join(", ")};`);
  o.pragma("#pragma unroll");
  o.open("for (int h = 0; h < 2; ++h)");
  const [mk, kk] = a ? ["m0 + g + (rg & 1) * 8", "k0 + t2 + (rg >> 1) * 8 + h"] : ["n0 + q * 8 + g", "k0 + t2 + rg * 8 + h"];
  const [r, c] = a === plan.trans ? [kk, mk] : [mk, kk]; // A [m, k] or B^T [n, k]: (m/n, k); else (k, m/n)
  o.line(`const int r = ${r}, c = ${c};`);
  const locals = new Map<string, string>();
  for (const src of plan.fragmentSources) locals.set(src, `prt::b16_half<${cType(bufferOf(k, src).type.dtype)}>(${frags.get(src)!}${sub}, h)`);
  g.operands.forEach((m, i) => {
    o.line(`const ${T} y${i} = prt::from_f32<${T}>(${renderF32(m.expr, { k, row: "r", col: "c", locals })});`);
    o.line(`v${i}[h] = y${i};`);
    locals.set(m.dst, `prt::to_f32(y${i})`);
  });
  o.close();
  g.operands.forEach((m, i) => o.line(`${out.get(m.dst)!}${sub} = prt::pack2(v${i}[0], v${i}[1]);`));
  o.close();
  if (!a) o.close();
  return out;
}

/** Tensor-core mmas into one accumulator: per k-step of 16, per slot j of the warp (unit u = warp +
 * j warps, rows m0, columns n0), the fragments of each shared operand (ldmatrix, .trans when A is
 * stored [k, m] or B [k, n]) and the computed operands of a group, then mma.sync m16n8k16 per mma
 * and n-tile. The k loop is outside the slot loop so that fragments every slot of a warp shares
 * are formed once per k-step: B's when the warps divide the units of a row block (n0 = (warp % un)
 * 8 nt for every slot), A's when there is one row block (m0 = 0). A plain mma is a group without
 * computed operands. */
function renderTensorCores(o: Emitter, k: LKernel, g: Group, t: WarpTiling): void {
  const first = g.mmas[0]!;
  const T = cType(bufferOf(k, first.a).type.dtype);
  const { k: K } = mmaShape(k, first);
  const plan = g.operands.length ? groupPlan(k, g) : null;
  const computed = new Set(g.operands.map((m) => m.dst));
  const d = bufferOf(k, first.dst);
  const un = t.n / (8 * t.nt), units = tilingUnits(t), slots = tilingSlots(t);
  const partial = units % t.warps !== 0;
  const shared = { a: slots > 1 && t.m === 16 && !g.mmas.some((m) => bufferOf(k, m.a).home === "frag"), b: slots > 1 && t.warps % un === 0 };
  const own = (j: string, q: string, e: string): string =>
    smemElem(k, first.dst, [`((warp + ${j} * ${t.warps}) / ${un}) * 16 + prt::frag_row(lane, ${e})`, `((warp + ${j} * ${t.warps}) % ${un}) * ${8 * t.nt} + ${q} * 8 + prt::frag_col(lane, ${e})`]);
  const eachAcc = (f: (j: string, q: string, e: string) => string): void => {
    o.pragma("#pragma unroll");
    o.open(`for (int j = 0; j < ${slots}; ++j)`);
    if (partial) o.open(`if (warp + j * ${t.warps} < ${units})`);
    o.pragma("#pragma unroll");
    o.line(`for (int q = 0; q < ${t.nt}; ++q)`);
    o.pragma("#pragma unroll");
    o.line(`  for (int e = 0; e < 4; ++e) ${f("j", "q", "e")}`);
    if (partial) o.close();
    o.close();
  };
  if (d.home === "frag") {
    o.line(`float (&acc)[${slots}][${t.nt}][4] = ${cName("f", first.dst)};`);
    if (!first.accumulate) eachAcc(() => "acc[j][q][e] = 0.0f;");
  } else {
    o.line(`float acc[${slots}][${t.nt}][4];`);
    eachAcc((j, q, e) => (first.accumulate ? `acc[j][q][e] = ${own(j, q, e)};` : "acc[j][q][e] = 0.0f;"));
  }
  if (plan) o.line("const int g = lane >> 2, t2 = (lane & 3) * 2;");
  // A from a packed frag tile is indexed by k-step: the loop must unroll (registers)
  const fragA = g.mmas.some((m) => bufferOf(k, m.a).home === "frag");
  if (fragA) o.pragma("#pragma unroll");
  o.open(`for (int k0 = 0; k0 < ${K}; k0 += 16)`);
  const frags = new Map<string, string>();
  const need = (side: "a" | "b", trans: boolean, tile: string): string => {
    const key = `${side}${trans}:${tile}`;
    if (!frags.has(key)) frags.set(key, bufferOf(k, tile).home === "frag" ? fragOperandA(o, tile) : loadFragments(o, k, side, trans, tile, t.nt));
    return frags.get(key)!;
  };
  let inl = new Map<string, string>();
  /** The fragments of one side (shared operands, then the computed ones with their sources). */
  const side = (x: "a" | "b"): void => {
    for (const m of g.mmas) {
      const [tile, trans] = x === "a" ? [m.a, m.transA] : [m.b, m.transB];
      if (!computed.has(tile)) need(x, trans, tile);
    }
    if (plan?.side !== x) return;
    const sources = new Map<string, string>();
    for (const src of plan.fragmentSources) sources.set(src, need(x, plan.trans, src));
    inl = computeOperands(o, k, g, plan, t.nt, sources);
  };
  if (shared.a) o.line("const int m0 = 0;");
  if (shared.b) o.line(`const int n0 = (warp % ${un}) * ${8 * t.nt};`);
  if (shared.a) side("a");
  if (shared.b) side("b");
  o.pragma("#pragma unroll");
  o.open(`for (int j = 0; j < ${slots}; ++j)`);
  o.line(`const int u = warp + j * ${t.warps};`);
  if (partial) o.open(`if (u < ${units})`);
  if (!shared.a) o.line(`const int m0 = (u / ${un}) * 16;`);
  if (!shared.b) o.line(`const int n0 = (u % ${un}) * ${8 * t.nt};`);
  o.line("(void)m0;");
  o.line("(void)n0;");
  if (!shared.a) side("a");
  if (!shared.b) side("b");
  for (const m of g.mmas) {
    const A = inl.get(m.a) ?? frags.get(`a${m.transA}:${m.a}`)!, B = inl.get(m.b) ?? frags.get(`b${m.transB}:${m.b}`)!;
    o.pragma("#pragma unroll");
    o.line(`for (int q = 0; q < ${t.nt}; ++q) prt::mma_16816<${T}>(acc[j][q], ${A}, ${B}[q][0], ${B}[q][1]);`);
  }
  if (partial) o.close();
  o.close();
  o.close();
  if (d.home !== "frag") eachAcc((j, q, e) => `${own(j, q, e)} = acc[j][q][e];`);
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

/** The descriptor (a C expression) of shared operand `tile` for k-step k0 (a C expression, a
 * multiple of 16) of wgmma, `mn0` the first row (K-major) or column (MN-major) of the 64 or n the
 * instruction reads. K-major (A stored [m, k], B stored [n, k]): the start is (mn0, k0), rows of W
 * bytes in groups of 8 at SBO = 8 W, k steps inside a row (LBO unused). MN-major (A stored [k, m],
 * B stored [k, n]): the start is (k0, mn0), K rows of W bytes in groups of 8 at SBO = 8 W, the
 * next panel of W / 2 columns at LBO = rows * W. (PTX ISA, "Shared Memory Matrix Layout".) */
function wgmmaDesc(k: LKernel, tile: string, kMajor: boolean, k0: string, mn0: string): string {
  const b = bufferOf(k, tile);
  const W = b.swizzle, E = W / 2, rows = b.type.shape[0]!;
  if (W === 0) throw new Error(`${k.name}: wgmma operand ${tile} has no swizzled layout`);
  // the unswizzled start: rows of the start are multiples of 8, so the XOR leaves it in place
  const linear = (r: string, c: string): string => `((${c}) / ${E} * ${rows} + (${r})) * ${E} + ((${c}) % ${E})`;
  const start = kMajor ? linear(mn0, k0) : linear(k0, mn0);
  return `prt::wgmma_desc<${W}>(${cName("t", tile)} + ${start}, ${kMajor ? 16 : rows * W}, ${8 * W})`;
}

/** wgmma (sm_90a) into one accumulator: per slot j, this warpgroup's 64 rows (64 (warp / 4) + 16
 * warps j), per k-step of 16 one instruction m64nNk16: A from shared memory (a descriptor) or from
 * a packed frag tile (registers, the k-step's two n-tiles), B from shared memory. A fence orders the
 * registers written before (accumulator, A) against the instructions; commit and wait 0 make the
 * statement complete when it ends, as every other statement (the barriers assume it). */
function renderWgmma(o: Emitter, k: LKernel, mmas: readonly Mma[], t: WarpTiling): void {
  const first = mmas[0]!;
  const T = cType(bufferOf(k, first.b).type.dtype);
  const d = bufferOf(k, first.dst);
  const slots = tilingSlots(t);
  const eachAcc = (f: string): void => {
    o.pragma("#pragma unroll");
    o.open(`for (int j = 0; j < ${slots}; ++j)`);
    o.pragma("#pragma unroll");
    o.line(`for (int q = 0; q < ${t.nt}; ++q)`);
    o.pragma("#pragma unroll");
    o.line(`  for (int e = 0; e < 4; ++e) ${f}`);
    o.close();
  };
  const own = smemElem(k, first.dst, [`16 * (warp + j * ${t.warps}) + prt::frag_row(lane, e)`, "q * 8 + prt::frag_col(lane, e)"]);
  if (d.home === "frag") o.line(`float (&acc)[${slots}][${t.nt}][4] = ${cName("f", first.dst)};`);
  else {
    o.line(`float acc[${slots}][${t.nt}][4];`);
    if (first.accumulate) eachAcc(`acc[j][q][e] = ${own};`);
  }
  o.line("prt::wgmma_fence();");
  o.pragma("#pragma unroll");
  o.open(`for (int j = 0; j < ${slots}; ++j)`);
  o.line(`const int mb = 64 * (warp / 4) + ${16 * t.warps} * j;  // this warpgroup's rows`);
  o.line("(void)mb;");
  mmas.forEach((m, i) => {
    const { k: K } = mmaShape(k, m);
    const a = bufferOf(k, m.a);
    o.pragma("#pragma unroll");
    o.open(`for (int k0 = 0; k0 < ${K}; k0 += 16)`);
    const scale = i === 0 && !m.accumulate ? "k0 > 0" : "1";
    const db = wgmmaDesc(k, m.b, m.transB, "k0", "0");
    const TB = m.transB ? 0 : 1;
    if (a.home === "frag") {
      const f = cName("f", m.a);
      const a = `${f}[j][k0 / 8][0], ${f}[j][k0 / 8][1], ${f}[j][k0 / 8 + 1][0], ${f}[j][k0 / 8 + 1][1]`;
      o.line(`prt::Wgmma<${t.n}, ${T}>::template rs<${TB}>(acc[j], ${a}, ${db}, ${scale});`);
    } else {
      const da = wgmmaDesc(k, m.a, !m.transA, "k0", "mb");
      o.line(`prt::Wgmma<${t.n}, ${T}>::template ss<${m.transA ? 1 : 0}, ${TB}>(acc[j], ${da}, ${db}, ${scale});`);
    }
    o.close();
  });
  o.close();
  o.line("prt::wgmma_commit();");
  if (first.impl?.kind === "wgmma" && first.impl.deferred) {
    if (d.home !== "frag") throw new Error(`${k.name}: deferred wgmma into ${first.dst}, which is not a frag tile`);
    o.line("// waited for further down (wgmma.wait)");
  } else o.line("prt::wgmma_wait<0>();");
  if (d.home !== "frag") eachAcc(`${own} = acc[j][q][e];`);
}

/** An mma group (lir.ts): its mmas run on tensor cores, in one tiling. */
export function renderMmaGroup(o: Emitter, k: LKernel, g: Group): void {
  const impl = g.mmas[0]!.impl;
  if (impl?.kind !== "tc") throw new Error(`${k.name}: mma group into ${g.mmas[0]!.dst} is not on tensor cores`);
  renderTensorCores(o, k, g, impl.tiling);
}

export function renderMma(o: Emitter, k: LKernel, s: Mma): void {
  const impl = s.impl ?? { kind: "fma" as const };
  if (impl.kind === "wgmma") renderWgmma(o, k, [s], impl.tiling);
  else if (impl.kind === "tc") renderTensorCores(o, k, { kind: "mmaGroup", operands: [], mmas: [s] }, impl.tiling);
  else if (impl.kind === "fmaFrag") renderFmaFrag(o, k, s, impl.tiling);
  else renderFma(o, k, s);
}
