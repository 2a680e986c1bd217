// LIR -> the CUDA C++ of one __global__ kernel. One CUDA block runs one program; each statement
// becomes a block-cooperative loop (threads stride over the elements it writes), barriers are the
// LIR's. Memory statements are in render-memory.ts, mma in render-mma.ts; the primitives they call
// are templates/prt_tile.cuh.

import { dtypeBytes } from "../dsl/dtype.ts";
import type { Expr } from "../dsl/ir.ts";
import { printExpr } from "../dsl/print.ts";
import { bufferOf, cType, isPackedFrag, isRowVector, mapFragReads, readNodes, smemTileBytes, threadsOf, tilingSlots, tilingUnits, reducePartials, walkStmts, type LKernel, type LStmt } from "./lir.ts";
import { printLStmt, printTiling, ranksOf } from "./lir-print.ts";
import { renderExpr, renderF32, cName, smemElem, NEG_INF, type ExprCtx } from "./render-expr.ts";
import { renderLoad, renderStore } from "./render-memory.ts";
import { renderMma, renderMmaGroup } from "./render-mma.ts";
import { Emitter, elemLoop, fragLoop, fragPairLoop, fragRead, rowLoop } from "./emit.ts";
import { symPowTableName } from "./render-tables.ts";
import { mapRuns, ownElement, type MapStmt } from "./lower/fuse-maps.ts";

const tileElem = (k: LKernel, name: string, r: string, c: string): string =>
  bufferOf(k, name).type.shape.length === 1 ? smemElem(k, name, [r]) : smemElem(k, name, [r, c]);

/** The 1-D f32 shared tiles (column factors) a map over fragments reads at `col`, 8-byte aligned:
 * a fragment element pair (one row, columns c and c + 1, c even) reads both with one 8-byte load.
 * Each such read was an LDS whose latency the next FMUL waited out, one at a time at 128 registers
 * (attention_y's fk, H100, 2026-12-07). */
function columnPairReads(k: LKernel, s: Extract<LStmt, { kind: "map" }>): string[] {
  const names = new Set<string>();
  for (const rd of readNodes(s.expr)) {
    const b = bufferOf(k, rd.buf);
    if (b.home === "smem" && b.type.shape.length === 1 && b.type.dtype === "f32" && rd.index[0]!.op === "col" && b.offset !== null && b.offset % 8 === 0)
      names.add(rd.buf);
  }
  return [...names];
}

/** A map over the element pairs of a frag tile: `y0`, `y1` (columns c, c + 1), column-factor reads
 * as one float2 per pair; `write` stores the pair. */
function renderFragPairMap(o: Emitter, k: LKernel, s: Extract<LStmt, { kind: "map" }>, write: () => void): void {
  const cols = columnPairReads(k, s);
  fragPairLoop(o, k, s.dst, (r, c, ix0, ix1) => {
    for (const n of cols) o.line(`const float2 cv_${n} = prt::lds_f32x2(&${cName("t", n)}[${c}]);`);
    const cv = (h: "x" | "y"): Map<string, string> => new Map(cols.map((n) => [n, `cv_${n}.${h}`]));
    o.line(`const float y0 = ${renderF32(s.expr, { k, row: r, col: c, fragElem: ix0, colVec: cv("x") })};`);
    o.line(`const float y1 = ${renderF32(s.expr, { k, row: r, col: `${c} + 1`, fragElem: ix1, colVec: cv("y") })};`);
    write();
  });
}

function renderMap(o: Emitter, k: LKernel, s: Extract<LStmt, { kind: "map" }>): void {
  const d = bufferOf(k, s.dst);
  if (isRowVector(d)) {
    rowLoop(o, k, s.dst, (r, ix) => o.line(`${fragRead(k, s.dst, ix)} = ${renderF32(s.expr, { k, row: r, fragElem: ix })};`));
    return;
  }
  if (isPackedFrag(d)) {
    const T = cType(d.type.dtype);
    renderFragPairMap(o, k, s, () => o.line(`${cName("f", s.dst)}[j][q][p] = prt::pack2_rn<${T}>(y0, y1);`));
    return;
  }
  if (d.home === "frag" && columnPairReads(k, s).length) {
    renderFragPairMap(o, k, s, () => {
      o.line(`${cName("f", s.dst)}[j][q][2 * p] = y0;`);
      o.line(`${cName("f", s.dst)}[j][q][2 * p + 1] = y1;`);
    });
    return;
  }
  if (d.home === "frag") {
    fragLoop(o, k, s.dst, (r, c, ix) => o.line(`${fragRead(k, s.dst, ix)} = ${renderF32(s.expr, { k, row: r, col: c, fragElem: ix })};`));
    return;
  }
  const fr = mapFragReads(k, s).filter((n) => !isRowVector(bufferOf(k, n)));
  if (fr.length) {
    // a shared destination computed from frag tiles: each thread writes the elements it owns
    fragLoop(o, k, fr[0]!, (r, c, ix) =>
      o.line(`${tileElem(k, s.dst, r, c)} = prt::from_f32<${cType(d.type.dtype)}>(${renderF32(s.expr, { k, row: r, col: c, fragElem: ix })});`));
    return;
  }
  elemLoop(o, k, d.type.shape, (r, c) => {
    const ctx: ExprCtx = { k, row: r, col: c };
    o.line(`${tileElem(k, s.dst, r, c)} = prt::from_f32<${cType(d.type.dtype)}>(${renderF32(s.expr, ctx)});`);
  });
}

/** Element (o, i) of the lines a reduce / scan walks: outer index o, inner index i. */
function lineElem(k: LKernel, name: string, axis: 0 | 1, o: string, i: string): string {
  const b = bufferOf(k, name);
  if (b.type.shape.length === 1) return smemElem(k, name, [i]);
  return axis === 1 ? smemElem(k, name, [o, i]) : smemElem(k, name, [i, o]);
}

function lines(k: LKernel, src: string, axis: 0 | 1): { outer: number; inner: number } {
  const sh = bufferOf(k, src).type.shape;
  if (sh.length === 1) return { outer: 1, inner: sh[0]! };
  return axis === 1 ? { outer: sh[0]!, inner: sh[1]! } : { outer: sh[1]!, inner: sh[0]! };
}

/** A reduce of a frag tile (lir.ts, the reduce statement): per thread over the elements of its
 * rows (axis 1, columns in order) or columns (axis 0, rows g and g + 8), across the lanes that share
 * them by shuffles, then, when several units share a row block (column range), the units'
 * partials through the scratch and one barrier, combined in unit order. */
function renderFragReduce(o: Emitter, k: LKernel, s: Extract<LStmt, { kind: "reduce" }>): void {
  const src = bufferOf(k, s.src), t = src.tiling!;
  const dst = bufferOf(k, s.dst);
  const T = cType(dst.type.dtype);
  const un = t.n / (8 * t.nt), units = tilingUnits(t), parts = reducePartials(t, s.axis);
  const combine = (acc: string, v: string): string => (s.fn === "sum" ? `${acc} += ${v};` : `${acc} = prt::max_nan(${acc}, ${v});`);
  const x = (q: string, e: string): string => fragRead(k, s.src, { j: "j", q, e });
  /** The lane's partial for line `i` (a row or a column), written where it goes. */
  const put = (lead: string, part: string, i: string, h: string): void => {
    if (isRowVector(dst)) o.line(`${fragRead(k, s.dst, { j: "j", q: "0", e: `(2 * ${h})` })} = acc;`); // every lane of the quad holds its rows
    else if (s.scratch === null) o.line(`if (${lead}) ${smemElem(k, s.dst, [i])} = prt::from_f32<${T}>(acc);`);
    else o.line(`if (${lead}) ${smemElem(k, s.scratch, [part, i])} = acc;`);
  };
  o.pragma("#pragma unroll");
  o.open(`for (int j = 0; j < ${tilingSlots(t)}; ++j)`);
  o.line(`const int u = warp + j * ${t.warps};`);
  if (units % t.warps !== 0) o.open(`if (u < ${units})`);
  o.pragma("#pragma unroll");
  if (s.axis === 1) {
    o.open(`for (int h = 0; h < 2; ++h)`); // the row halves: elements 0, 1 at row g, 2, 3 at row g + 8
    o.line(`float acc = ${x("0", "2 * h")};`);
    o.line(combine("acc", x("0", "2 * h + 1")));
    if (t.nt > 1) {
      o.pragma("#pragma unroll");
      o.block(`for (int q = 1; q < ${t.nt}; ++q)`, () => {
        o.line(combine("acc", x("q", "2 * h")));
        o.line(combine("acc", x("q", "2 * h + 1")));
      });
    }
    o.line(`acc = prt::quad_${s.fn}(acc);`);
    o.line(`const int r = (u / ${un}) * 16 + (lane >> 2) + 8 * h;`);
    o.line("(void)r;");
    put("(lane & 3) == 0", `u % ${un}`, "r", "h");
  } else {
    o.open(`for (int q = 0; q < ${t.nt}; ++q)`);
    o.pragma("#pragma unroll");
    o.open(`for (int h = 0; h < 2; ++h)`); // the column of the pair: elements h (row g) and 2 + h (row g + 8)
    o.line(`float acc = ${x("q", "h")};`);
    o.line(combine("acc", x("q", "2 + h")));
    o.line(`acc = prt::column_lanes_${s.fn}(acc);`);
    o.line(`const int c = (u % ${un}) * ${8 * t.nt} + q * 8 + ((lane & 3) << 1) + h;`);
    put("lane < 4", `u / ${un}`, "c", "h");
    o.close();
  }
  o.close();
  if (units % t.warps !== 0) o.close();
  o.close();
  if (s.scratch === null) return;
  o.line(`__syncthreads();`);
  const len = s.axis === 1 ? t.m : t.n;
  o.block(`for (int i = tid; i < ${len}; i += ${threadsOf(k)})`, () => {
    o.line(`float acc = ${smemElem(k, s.scratch!, ["0", "i"])};`);
    o.line(`for (int p = 1; p < ${parts}; ++p) ${combine("acc", smemElem(k, s.scratch!, ["p", "i"]))}`);
    o.line(`${smemElem(k, s.dst, ["i"])} = prt::from_f32<${T}>(acc);`);
  });
}

function renderReduce(o: Emitter, k: LKernel, s: Extract<LStmt, { kind: "reduce" }>): void {
  if (bufferOf(k, s.src).home === "frag") return renderFragReduce(o, k, s);
  const { outer, inner } = lines(k, s.src, s.axis);
  const T = cType(bufferOf(k, s.dst).type.dtype);
  const init = s.fn === "sum" ? "0.0f" : NEG_INF;
  const combine = (acc: string, v: string): string => (s.fn === "sum" ? `${acc} += ${v};` : `${acc} = prt::max_nan(${acc}, ${v});`);
  const x = (oo: string, ii: string): string => `prt::to_f32(${lineElem(k, s.src, s.axis, oo, ii)})`;
  const nt = threadsOf(k);
  if (outer * 2 >= nt) {
    // one thread per output, sequential over the line
    o.block(`for (int o = tid; o < ${outer}; o += ${nt})`, () => {
      o.line(`float acc = ${init};`);
      o.line(`for (int i = 0; i < ${inner}; ++i) ${combine("acc", x("o", "i"))}`);
      o.line(`${smemElem(k, s.dst, ["o"])} = prt::from_f32<${T}>(acc);`);
    });
  } else {
    // one warp per output: lanes stride over the line, then a shuffle-xor reduction
    o.block(`for (int o = warp; o < ${outer}; o += ${k.numWarps})`, () => {
      o.line(`float acc = ${init};`);
      o.line(`for (int i = lane; i < ${inner}; i += 32) ${combine("acc", x("o", "i"))}`);
      o.line(`acc = prt::warp_${s.fn === "sum" ? "sum" : "max"}(acc);`);
      o.line(`if (lane == 0) ${smemElem(k, s.dst, ["o"])} = prt::from_f32<${T}>(acc);`);
    });
  }
}

function renderScan(o: Emitter, k: LKernel, s: Extract<LStmt, { kind: "scan" }>): void {
  const { outer, inner } = lines(k, s.src, s.axis);
  const T = cType(bufferOf(k, s.dst).type.dtype);
  const at = (i: string): string => (s.reverse ? `${inner - 1} - ${i}` : i);
  const x = (i: string): string => `prt::to_f32(${lineElem(k, s.src, s.axis, "o", i)})`;
  const y = (i: string): string => lineElem(k, s.dst, s.axis, "o", i);
  const nt = threadsOf(k);
  if (outer * 2 >= nt) {
    o.block(`for (int o = tid; o < ${outer}; o += ${nt})`, () => {
      o.line(`float acc = 0.0f;`);
      o.block(`for (int j = 0; j < ${inner}; ++j)`, () => {
        o.line(`const int i = ${at("j")};`);
        o.line(`acc += ${x("i")};`);
        o.line(`${y("i")} = prt::from_f32<${T}>(acc);`);
      });
    });
  } else if (inner <= 32 * SCAN_RUN_MAX) {
    // one warp per line, lane l holding the run of m consecutive elements [l m, l m + m): a serial
    // scan of its run, one shuffle scan of the runs' totals, and the total of the runs before it
    // added back. One round of dependent shuffles per line, where segments of 32 took a shuffle
    // scan each plus a carry (attention's 128-gate scan, on the critical path of every key block:
    // four rounds while the other warps waited at the barrier after it, H100, 2026-12-07).
    const m = Math.ceil(inner / 32);
    o.block(`for (int o = warp; o < ${outer}; o += ${k.numWarps})`, () => {
      o.line(`float run[${m}];`);
      o.line(`float total = 0.0f;`);
      o.line(`#pragma unroll`);
      o.block(`for (int u = 0; u < ${m}; ++u)`, () => {
        o.line(`const int j = lane * ${m} + u, i = ${at("j")};`);
        o.line(`total += j < ${inner} ? ${x("i")} : 0.0f;`);
        o.line(`run[u] = total;`);
      });
      o.line(`const float incl = prt::warp_inclusive_sum(total, lane);`);
      o.line(`const float up = __shfl_up_sync(0xffffffffu, incl, 1);`);
      o.line(`const float before = lane == 0 ? 0.0f : up;`);
      o.line(`#pragma unroll`);
      o.block(`for (int u = 0; u < ${m}; ++u)`, () => {
        o.line(`const int j = lane * ${m} + u, i = ${at("j")};`);
        o.line(`if (j < ${inner}) ${y("i")} = prt::from_f32<${T}>(run[u] + before);`);
      });
    });
  } else {
    // one warp per line, 32 elements at a time: shuffle scan plus the carry of the segments before
    o.block(`for (int o = warp; o < ${outer}; o += ${k.numWarps})`, () => {
      o.line(`float carry = 0.0f;`);
      o.block(`for (int j0 = 0; j0 < ${inner}; j0 += 32)`, () => {
        o.line(`const int j = j0 + lane, i = ${at("j")};`);
        o.line(`float v = j < ${inner} ? ${x("i")} : 0.0f;`);
        o.line(`v = prt::warp_inclusive_sum(v, lane) + carry;`);
        o.line(`if (j < ${inner}) ${y("i")} = prt::from_f32<${T}>(v);`);
        o.line(`carry = __shfl_sync(0xffffffffu, v, 31);`);
      });
    });
  }
}

/** The longest run of consecutive elements a lane scans serially in a warp-per-line scan (lines of
 * up to 32 runs; longer lines take segments of 32 with a carry). */
const SCAN_RUN_MAX = 8;

function renderExpand(o: Emitter, k: LKernel, s: Extract<LStmt, { kind: "expand" }>): void {
  const d = bufferOf(k, s.dst), x = bufferOf(k, s.src);
  const [rows, bd] = d.type.shape as [number, number];
  const tbl = symPowTableName(x.type.shape[1]!, s.deg);
  o.line(`const int off = ${renderExpr(s.offset, { k })};`);
  o.block(`for (int i = tid; i < ${rows * bd}; i += ${threadsOf(k)})`, () => {
    o.line(`const int r = i / ${bd}, f = i % ${bd}, g = off + f;`);
    o.line(`float v = 0.0f;`);
    o.block(`if (g >= 0 && g < ${tbl}_size)`, () => {
      o.line(`v = ${tbl}_weight[g];`);
      for (let q = 0; q < s.deg; q++) o.line(`v *= prt::to_f32(${smemElem(k, s.src, ["r", `${tbl}_index[g * ${s.deg} + ${q}]`])});`);
    });
    o.line(`${smemElem(k, s.dst, ["r", "f"])} = prt::from_f32<${cType(d.type.dtype)}>(v);`);
  });
}

function renderExpandGrad(o: Emitter, k: LKernel, s: Extract<LStmt, { kind: "expandGrad" }>): void {
  const d = bufferOf(k, s.dst), x = bufferOf(k, s.x), g = bufferOf(k, s.dphi);
  const [rows, din] = x.type.shape as [number, number];
  const bd = g.type.shape[1]!;
  const p = s.deg;
  const tbl = symPowTableName(din, p);
  o.line(`const int off = ${renderExpr(s.offset, { k })};`);
  if (d.type.dtype !== "f32") {
    renderExpandGradGather(o, k, s, rows, din, bd, tbl);
    return;
  }
  // f32 destination: scatter. One thread per (row, feature) of the block (row-major, so a warp
  // holds consecutive features of one row) computes its p partial derivatives
  // dphi * w * prod_{l != q} x[a_l] and adds each into dst[row, a_q] with a shared-memory atomic;
  // prt::add_keyed sums a warp's partials in registers first when they all target one element
  // (the leading indices of consecutive lexicographic features). The loop bound is warp-uniform so
  // every lane reaches the shuffles.
  const nt = threadsOf(k), n = rows * bd;
  if (!s.accumulate) {
    o.line(`for (int i = tid; i < ${rows * din}; i += ${nt}) ${smemElem(k, s.dst, [`i / ${din}`, `i % ${din}`])} = 0.0f;`);
    o.line(`__syncthreads();`);
  }
  o.block(`for (int i0 = 0; i0 < ${n}; i0 += ${nt})`, () => {
    o.line(`const int i = i0 + tid, r = i / ${bd}, f = i % ${bd}, g = off + f;`);
    o.line(`const bool ok = ${n % nt === 0 ? "" : `i < ${n} && `}g >= 0 && g < ${tbl}_size;`);
    o.line(`float gw = 0.0f;`);
    const xs = Array.from({ length: p }, (_, q) => `x${q}`), as = Array.from({ length: p }, (_, q) => `a${q}`);
    o.line(`int ${as.map((a) => `${a} = 0`).join(", ")};`);
    o.line(`float ${xs.map((v) => `${v} = 0.0f`).join(", ")};`);
    o.block(`if (ok)`, () => {
      o.line(`gw = prt::to_f32(${smemElem(k, s.dphi, ["r", "f"])}) * ${tbl}_weight[g];`);
      for (let q = 0; q < p; q++) {
        o.line(`a${q} = ${tbl}_index[g * ${p} + ${q}];`);
        o.line(`x${q} = prt::to_f32(${smemElem(k, s.x, ["r", `a${q}`])});`);
      }
    });
    // partial q = gw * (x0 ... x_{q-1}) * (x_{q+1} ... x_{p-1}): prefix and suffix products
    for (let q = 0; q < p; q++) {
      const pre = ["gw", ...xs.slice(0, q)], suf = xs.slice(q + 1);
      o.line(`prt::add_keyed(&${smemElem(k, s.dst, ["r", `a${q}`])}, ${[...pre, ...suf].join(" * ")}, ok ? r * ${din} + a${q} : -1, lane);`);
    }
  });
}

/** Non-f32 destinations (rounded once, as the interpreter does): a thread per (row, input index a). */
function renderExpandGradGather(
  o: Emitter, k: LKernel, s: Extract<LStmt, { kind: "expandGrad" }>, rows: number, din: number, bd: number, tbl: string,
): void {
  const d = bufferOf(k, s.dst), p = s.deg;
  // the features of this block that contain a, from the occurrence table (entries g * p + q sorted
  // by feature), each adding dphi * w * prod_{l != q} x
  o.block(`for (int i = tid; i < ${rows * din}; i += ${threadsOf(k)})`, () => {
    o.line(`const int r = i / ${din}, a = i % ${din};`);
    o.line(`float acc = ${s.accumulate ? `prt::to_f32(${smemElem(k, s.dst, ["r", "a"])})` : "0.0f"};`);
    o.line(`const int hi = ${tbl}_occ_start[a + 1];`);
    o.block(`for (int t = prt::lower_bound(${tbl}_occ, ${tbl}_occ_start[a], hi, off * ${p}); t < hi; ++t)`, () => {
      o.line(`const int code = static_cast<int>(${tbl}_occ[t]), gf = code / ${p}, q = code % ${p};`);
      o.line(`if (gf >= off + ${bd}) break;`);
      o.line(`float prod = prt::to_f32(${smemElem(k, s.dphi, ["r", "gf - off"])}) * ${tbl}_weight[gf];`);
      for (let l = 0; l < p; l++) o.line(`if (q != ${l}) prod *= prt::to_f32(${smemElem(k, s.x, ["r", `${tbl}_index[gf * ${p} + ${l}]`])});`);
      o.line(`acc += prod;`);
    });
    o.line(`${smemElem(k, s.dst, ["r", "a"])} = prt::from_f32<${cType(d.type.dtype)}>(acc);`);
  });
}

function renderStmt(o: Emitter, k: LKernel, s: LStmt): void {
  switch (s.kind) {
    case "barrier":
      // shared memory that ordinary stores (or cp.async) wrote and wgmma reads next: each writer
      // fences its generic-proxy writes against the async proxy before the barrier
      if (hasWgmma(k)) o.line("prt::fence_proxy_async();");
      o.line("__syncthreads();");
      return;
    case "asyncCommit":
      o.line("prt::cp_async_commit();");
      return;
    case "asyncWait":
      o.line(`prt::cp_async_wait<${s.pending}>();`);
      return;
    case "wgmmaWait":
      o.line("prt::wgmma_wait<0>();");
      for (const t of s.tiles) o.line(`prt::wgmma_fence_regs(${cName("f", t)});  // ${t} is read only after the wait`);
      return;
    case "bindStage": {
      const b = bufferOf(k, s.buf);
      const elems = smemTileBytes(b) / dtypeBytes(b.type.dtype);
      o.line(`${cName("t", s.buf)} = ${cName("t", s.buf)}_base + ((${renderExpr(s.stage, { k })}) % ${b.copies}) * ${elems};  // bind ${s.buf} stage ${printExpr(s.stage)}`);
      return;
    }
    case "for": {
      const v = cName("v", s.var);
      o.open("");
      o.line(`const int ${v}_end = ${renderExpr(s.end, { k })};`);
      o.block(`for (int ${v} = ${renderExpr(s.start, { k })}; ${v} < ${v}_end; ${v} += ${s.step})`, () => renderBody(o, k, s.body));
      o.close();
      return;
    }
    case "if": {
      const any = s.cond.op === "any" ? s.cond : null;
      if (any) {
        o.line(`// if ${printExpr(any)}`);
        o.open("");
        renderAnyVote(o, k, any, "prt_any");
      }
      o.block(`if (${any ? "prt_any" : renderExpr(s.cond, { k })})`, () => renderBody(o, k, s.body));
      if (s.orelse) o.block("else", () => renderBody(o, k, s.orelse!));
      if (any) o.close();
      return;
    }
    default:
      break;
  }
  for (const l of s.kind === "mmaGroup" ? printLStmt(s, "", ranksOf(k)) : printLStmt(s, "", ranksOf(k)).slice(0, 1)) o.line(`// ${l}`);
  o.open("");
  switch (s.kind) {
    case "load":
      renderLoad(o, k, s);
      break;
    case "store":
      renderStore(o, k, s);
      break;
    case "map":
      renderMap(o, k, s);
      break;
    case "reduce":
      renderReduce(o, k, s);
      break;
    case "scan":
      renderScan(o, k, s);
      break;
    case "mma":
      renderMma(o, k, s);
      break;
    case "mmaGroup":
      renderMmaGroup(o, k, s);
      break;
    case "expand":
      renderExpand(o, k, s);
      break;
    case "expandGrad":
      renderExpandGrad(o, k, s);
      break;
  }
  o.close();
}

/** The block's vote of an `if any`: each thread ors the predicate over its elements of the shape,
 * then __syncthreads_or (a barrier too: lower/barriers.ts counts it as one) gives every thread the
 * block's answer in \`v\`. Where every tile the predicate reads is a 16-bit shared tile of the vote's
 * shape read at [row, col], a thread takes 8 columns from one 16-byte read of each (a [128, 64]
 * tile: 4 reads a thread at 256 threads, instead of 32 element reads). */
function renderAnyVote(o: Emitter, k: LKernel, e: Extract<Expr, { op: "any" }>, v: string): void {
  o.line(`bool ${v}_mine = false;`);
  const reads = readNodes(e.pred);
  const names = [...new Set(reads.map((r) => r.buf))];
  const wide = (n: string): boolean => {
    const b = bufferOf(k, n);
    const sameShape = b.type.shape.length === e.shape.length && b.type.shape.every((x, i) => x === e.shape[i]);
    return b.home === "smem" && dtypeBytes(b.type.dtype) === 2 && sameShape && (b.swizzle > 0 || (b.pitch * 2) % 16 === 0);
  };
  const cols = e.shape[1] ?? 0;
  if (e.shape.length === 2 && cols % 8 === 0 && names.length > 0 && reads.every((r) => ownElement(2, r.index)) && names.every(wide)) {
    const per = cols / 8;
    o.block(`for (int i = tid; i < ${e.shape[0]! * per}; i += ${threadsOf(k)})`, () => {
      o.line(`const int r = i / ${per}, c0 = (i % ${per}) * 8;`);
      names.forEach((n, j) => o.line(`uint32_t w${j}[4];`).line(`prt::lds_b16x8(&${smemElem(k, n, ["r", "c0"])}, w${j});`));
      o.pragma("#pragma unroll");
      o.block("for (int u = 0; u < 8; ++u)", () => {
        const locals = new Map(names.map((n, j) => [n, `prt::b16_half<${cType(bufferOf(k, n).type.dtype)}>(w${j}[u >> 1], u & 1)`]));
        o.line("const int c = c0 + u;");
        o.line("(void)c;");
        o.line(`${v}_mine |= (${renderExpr(e.pred, { k, row: "r", col: "c", locals })});`);
      });
    });
  } else {
    elemLoop(o, k, e.shape, (r, c) => o.line(`${v}_mine |= (${renderExpr(e.pred, { k, row: r, col: c })});`));
  }
  // shared memory that ordinary stores wrote and a wgmma in the branch reads: as before a barrier
  if (hasWgmma(k)) o.line("prt::fence_proxy_async();");
  o.line(`const bool ${v} = __syncthreads_or(${v}_mine) != 0;`);
}

function renderBody(o: Emitter, k: LKernel, body: readonly LStmt[]): void {
  for (const run of mapRuns(k, body)) {
    if (run.length === 1) renderStmt(o, k, run[0]!);
    else renderFusedMaps(o, k, run as MapStmt[]);
  }
}

/** Maps over one shape in one element loop (lower/fuse-maps.ts says when that is safe): every value
 * first, in order, a later map reading an earlier one's element from its register, then the stores. */
function renderFusedMaps(o: Emitter, k: LKernel, run: readonly MapStmt[]): void {
  const ranks = ranksOf(k);
  for (const m of run) o.line(`// ${printLStmt(m, "", ranks)[0]}`);
  o.open("");
  elemLoop(o, k, bufferOf(k, run[0]!.dst).type.shape, (r, c) => {
    const locals = new Map<string, string>();
    run.forEach((m, i) => {
      const T = cType(bufferOf(k, m.dst).type.dtype);
      o.line(`const ${T} y${i} = prt::from_f32<${T}>(${renderF32(m.expr, { k, row: r, col: c, locals })});`);
      locals.set(m.dst, T === "float" ? `y${i}` : `prt::to_f32(y${i})`);
    });
    run.forEach((m, i) => o.line(`${tileElem(k, m.dst, r, c)} = y${i};`));
  });
  o.close();
}

/** Whether a kernel issues wgmma (its barriers then also fence the async proxy). */
export function hasWgmma(k: LKernel): boolean {
  let any = false;
  walkStmts(k.body, (s) => {
    if ((s.kind === "mma" && s.impl?.kind === "wgmma") || (s.kind === "mmaGroup" && s.mmas.some((m) => m.impl?.kind === "wgmma"))) any = true;
  });
  return any;
}

/** The (d, deg) feature tables a kernel's expansions read, as "d:deg" keys. */
export function tablesUsed(k: LKernel): { d: number; deg: number }[] {
  const keys = new Map<string, { d: number; deg: number }>();
  walkStmts(k.body, (s) => {
    if (s.kind === "expand") keys.set(`${bufferOf(k, s.src).type.shape[1]}:${s.deg}`, { d: bufferOf(k, s.src).type.shape[1]!, deg: s.deg });
    if (s.kind === "expandGrad") keys.set(`${bufferOf(k, s.x).type.shape[1]}:${s.deg}`, { d: bufferOf(k, s.x).type.shape[1]!, deg: s.deg });
  });
  return [...keys.values()];
}

/** The kernel's C arguments: tensors (in declaration order) then params. */
export function cArgs(k: LKernel): string[] {
  return [
    ...k.tensors.map((t) => `${t.role === "in" ? "const " : ""}${cType(t.dtype)}* ${cName("g", t.name)}`),
    ...k.params.map((p) => `${p.type === "i32" ? "int" : "float"} ${cName("p", p.name)}`),
  ];
}

/** The body of a kernel function for one target (indented one level). */
export function renderKernelBody(k: LKernel): string[] {
  if (k.smemBytes === null) throw new Error(`${k.name}: render needs planned shared memory`);
  const o = new Emitter();
  o.indent();
  o.line(`// ${k.target}: ${k.smemBytes} bytes of dynamic shared memory`);
  o.line(`extern __shared__ __align__(128) unsigned char prt_smem[];`);
  if (k.buffers.some((b) => b.home === "smem" && b.swizzle !== 0))
    // swizzled tiles repeat every 1024 bytes from a 1024-aligned base (the block asked for that much more)
    o.line(`unsigned char* const prt_base = prt_smem + ((1024u - (prt::smem_addr(prt_smem) & 1023u)) & 1023u);`);
  else o.line(`unsigned char* const prt_base = prt_smem;`);
  o.line(`(void)prt_base;`);
  o.line(`const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;`);
  o.line(`(void)lane;`);
  o.line(`(void)warp;`);
  for (const t of k.tensors) {
    const n = t.dims.length;
    const g = cName("g", t.name);
    o.line(`// ${t.name}: ${t.dtype}[${t.dims.map(printExpr).join(", ")}]`);
    t.dims.forEach((d, i) => o.line(`const long long ${g}_d${i} = static_cast<long long>(${renderExpr(d, { k })});`));
    for (let i = n - 1; i >= 0; i--) o.line(`const long long ${g}_s${i} = ${i === n - 1 ? "1LL" : `${g}_s${i + 1} * ${g}_d${i + 1}`};`);
    for (let i = 0; i < n; i++) o.line(`(void)${g}_d${i};`);
  }
  for (const b of k.buffers) {
    const T = cType(b.type.dtype);
    const shape = `${b.type.dtype}[${b.type.shape.join(", ")}]`;
    const layout = b.swizzle ? `swizzle ${b.swizzle}` : `pitch ${b.pitch}`;
    if (b.home === "inline") {
      o.line(`// ${b.name}: ${shape} computed in registers by its mma group`);
    } else if (isRowVector(b)) {
      const t = b.tiling!;
      o.line(`float ${cName("f", b.name)}[${tilingSlots(t)}][2];  // ${shape} as the rows of ${printTiling(t)}`);
    } else if (isPackedFrag(b)) {
      const t = b.tiling!;
      o.line(`uint32_t ${cName("f", b.name)}[${tilingSlots(t)}][${t.nt}][2];  // ${shape} as mma fragments, two per register: ${printTiling(t)}`);
    } else if (b.home === "frag") {
      const t = b.tiling!;
      o.line(`float ${cName("f", b.name)}[${tilingSlots(t)}][${t.nt}][4];  // ${shape} as mma fragments: ${printTiling(t)}`);
    } else if (b.copies > 1) {
      o.line(`${T}* const ${cName("t", b.name)}_base = reinterpret_cast<${T}*>(prt_base + ${b.offset});  // ${shape} ${layout}, ${b.copies} copies`);
      o.line(`${T}* ${cName("t", b.name)} = ${cName("t", b.name)}_base;`);
    } else {
      o.line(`${T}* const ${cName("t", b.name)} = reinterpret_cast<${T}*>(prt_base + ${b.offset});  // ${shape} ${layout}`);
    }
  }
  renderBody(o, k, k.body);
  return o.lines;
}

/** One __global__ function from the lowerings of one kernel for several targets (same params,
 * threads): the bodies differ only where a target's instructions do, and the sm_90a body is
 * compiled where the arch-specific features exist (__CUDA_ARCH_FEAT_SM90_ALL: an sm_90a build;
 * compute_80 PTX JIT-compiled for a newer GPU takes the other). */
export function renderKernel(ks: readonly LKernel[], symbol: string, minBlocks = 1): string {
  const k = ks[0]!;
  const o = new Emitter();
  const nt = threadsOf(k);
  o.line(`// ${k.name}: ${k.doc}`);
  o.line(`// grid (${k.grid.map(printExpr).join(", ")}), ${nt} threads`);
  o.line(`extern "C" __global__ void __launch_bounds__(${nt}${minBlocks > 1 ? `, ${minBlocks}` : ""}) ${symbol}(`);
  o.line(`    ${cArgs(k).join(", ")}) {`);
  const bodies = ks.map((x) => renderKernelBody(x));
  const text = (lines: string[]): string => lines.slice(1).join("\n");
  const sm90 = ks.findIndex((x) => x.target === "sm_90a"), sm80 = ks.findIndex((x) => x.target === "sm_80");
  if (ks.length === 1 || (sm90 >= 0 && sm80 >= 0 && text(bodies[sm90]!) === text(bodies[sm80]!))) bodies[0]!.forEach((l) => o.line(l));
  else {
    if (sm90 < 0 || sm80 < 0 || ks.length !== 2) throw new Error(`${k.name}: render for targets ${ks.map((x) => x.target).join(", ")}`);
    o.line("#if defined(__CUDA_ARCH_FEAT_SM90_ALL)");
    bodies[sm90]!.forEach((l) => o.line(l));
    o.line("#else");
    bodies[sm80]!.forEach((l) => o.line(l));
    o.line("#endif");
  }
  o.line("}");
  return o.text();
}
