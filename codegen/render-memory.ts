// Loads and stores between global tensors and tiles. Global offsets are 64-bit; every element is
// bounds-checked against the tensor's dims: loads read 0 outside, stores skip (the interpreter's
// rule). Async loads copy 16-byte chunks with cp.async (zero-filled past the tensor's end) when the
// tensor address, base offset and row stride are aligned at run time, else take the scalar path.

import { dtypeBytes } from "../dsl/dtype.ts";
import type { Slice } from "../dsl/ir.ts";
import { bufferOf, cType, isRowVector, smemTileBytes, threadsOf, type LKernel, type LStmt } from "./lir.ts";
import { cName, renderExpr, tileOffset } from "./render-expr.ts";
import { whyNotChunkAsync } from "./lower/rules.ts";
import { elemLoop, fragLoop, fragRead, rowLoop, type Emitter } from "./emit.ts";

interface Placed {
  /** Tensor dim of each tile axis. */
  readonly axes: readonly number[];
  /** C names of each tile axis' start index. */
  readonly starts: readonly string[];
}

/** Emit the uniform part of a load/store: indices, the in-bounds flag `ok` of the single indices,
 * and the 64-bit `base` offset of tile element 0. */
function place(o: Emitter, k: LKernel, tensor: string, slices: readonly Slice[]): Placed {
  const g = cName("g", tensor);
  const axes: number[] = [], starts: string[] = [], oks: string[] = [], terms: string[] = [];
  slices.forEach((s, i) => {
    const v = s.kind === "at" ? `a${i}` : `s${i}`;
    o.line(`const int ${v} = ${renderExpr(s.kind === "at" ? s.at : s.start, { k })};`);
    if (s.kind === "at") oks.push(`${v} >= 0 && ${v} < ${g}_d${i}`);
    else {
      axes.push(i);
      starts.push(v);
    }
    terms.push(`static_cast<long long>(${v}) * ${g}_s${i}`);
  });
  o.line(`const bool ok = ${oks.length ? oks.join(" && ") : "true"};`);
  o.line(`const long long base = ${terms.join(" + ")};`);
  return { axes, starts };
}

/** C condition that tile element (r, c) lies inside the tensor, and its global offset. */
function element(tensor: string, p: Placed, r: string, c: string): { inside: string; at: string } {
  const g = cName("g", tensor);
  const idx = [r, c];
  const conds = p.axes.map((d, a) => `${p.starts[a]} + ${idx[a]} >= 0 && ${p.starts[a]} + ${idx[a]} < ${g}_d${d}`);
  const offs = p.axes.map((d, a) => `static_cast<long long>(${idx[a]}) * ${g}_s${d}`);
  return { inside: conds.join(" && "), at: `${g}[base + ${offs.join(" + ")}]` };
}

export function renderLoad(o: Emitter, k: LKernel, s: Extract<LStmt, { kind: "load" }>): void {
  const d = bufferOf(k, s.dst);
  const ten = k.tensors.find((t) => t.name === s.tensor)!;
  const p = place(o, k, s.tensor, s.slices);
  const T = cType(d.type.dtype);
  const conv = (x: string): string => (ten.dtype === d.type.dtype ? x : `prt::from_f32<${T}>(prt::to_f32(${x}))`);
  if (isRowVector(d)) {
    rowLoop(o, k, s.dst, (r, ix) => {
      const e = element(s.tensor, p, r, "0");
      o.line(`${fragRead(k, s.dst, ix)} = ok && ${e.inside} ? prt::to_f32(${e.at}) : 0.0f;`);
    });
    return;
  }
  if (d.home === "frag") {
    fragLoop(o, k, s.dst, (r, c, ix) => {
      const e = element(s.tensor, p, r, c);
      o.line(`${fragRead(k, s.dst, ix)} = ok && ${e.inside} ? prt::to_f32(${e.at}) : 0.0f;`);
    });
    return;
  }
  const elems = smemTileBytes(d) / dtypeBytes(d.type.dtype);
  o.line(
    s.stage === null
      ? `${T}* const dst = ${cName("t", s.dst)};`
      : `${T}* const dst = ${cName("t", s.dst)}_base + ((${renderExpr(s.stage, { k })}) % ${d.copies}) * ${elems};`,
  );
  const rank = d.type.shape.length;
  const dstElem = (r: string, c: string): string => (rank === 1 ? `dst[${r}]` : `dst[${tileOffset(d, r, c)}]`);
  const scalar = (): void =>
    elemLoop(o, k, d.type.shape, (r, c) => {
      const e = element(s.tensor, p, r, c);
      o.line(`${dstElem(r, c)} = ok && ${e.inside} ? ${conv(e.at)} : prt::from_f32<${T}>(0.0f);`);
    });
  if (s.mode === "scalar") return scalar();
  if (whyNotChunkAsync(k, s) !== null) {
    // a vector of 4-byte elements down a strided dim (rules.whyNotAsync): one cp.async each,
    // zero-filled outside the tensor
    o.block(`for (int r = tid; r < ${d.type.shape[0]}; r += ${threadsOf(k)})`, () => {
      const e = element(s.tensor, p, "r", "0");
      o.line(`const bool in = ok && ${e.inside};`);
      o.line(`prt::cp_async_4(&dst[r], in ? static_cast<const void*>(&${e.at}) : static_cast<const void*>(${cName("g", s.tensor)}), in ? 4 : 0);`);
    });
    return;
  }

  // cp.async: chunks of VEC elements along the tensor's contiguous last dim
  const g = cName("g", s.tensor);
  const bytes = dtypeBytes(d.type.dtype), vec = 16 / bytes;
  const last = p.axes[p.axes.length - 1]!, lastStart = p.starts[p.starts.length - 1]!;
  const rows = rank === 2 ? d.type.shape[0]! : 1, chunks = d.type.shape[rank - 1]! / vec;
  const rowAxis = rank === 2 ? p.axes[0]! : -1;
  const aligned = [`prt::aligned16(${g})`, `base % ${vec} == 0`, ...(rank === 2 ? [`${g}_s${rowAxis} % ${vec} == 0`] : []), `${lastStart} >= 0`];
  const threads = threadsOf(k), total = rows * chunks;
  o.block(`if (${aligned.join(" && ")})`, () => {
    if (rank === 2 && threads % chunks === 0 && total % threads === 0) {
      // each thread copies one column of chunks down rows threads / chunks apart: its column's
      // clamp and its first row's address are worked out once, and each chunk (unrolled) costs a
      // row test and a pointer step (the 64-bit clamp per chunk was ~30 instructions)
      const step = threads / chunks, per = total / threads;
      o.line(`const int c = (tid % ${chunks}) * ${vec}, r0 = tid / ${chunks};`);
      o.line(`const auto* src0 = ${g} + base + static_cast<long long>(r0) * ${g}_s${rowAxis} + c;`);
      o.line(`const long long rstep = static_cast<long long>(${step}) * ${g}_s${rowAxis};`);
      // A tile wholly inside the tensor (every key block before the diagonal in attention) copies
      // with no test per chunk, and its destination steps linearly when the rows a thread visits
      // keep their place in the swizzle's pattern; the per-chunk tests and 64-bit clamps were
      // ~150 instructions a warp per [128, 64] tile (attention_y's SASS, H100, 2026-12-07).
      const dstep = rowStepElems(d, step);
      o.line(`const bool whole = ok && ${p.starts[0]} >= 0 && ${p.starts[0]} + ${rows} <= ${g}_d${rowAxis} && ${lastStart} + ${chunks * vec} <= ${g}_d${last};`);
      o.open("if (whole)");
      if (dstep !== null) o.line(`${T}* const d0 = &${dstElem("r0", "c")};`);
      o.pragma("#pragma unroll");
      o.block(`for (int u = 0; u < ${per}; ++u)`, () =>
        o.line(`prt::cp_async_16(${dstep !== null ? `d0 + u * ${dstep}` : `&${dstElem(`r0 + u * ${step}`, "c")}`}, src0 + u * rstep, 16);`));
      o.close();
      o.open("else");
      o.line(`const long long cols = ok ? ${g}_d${last} - (${lastStart} + c) : 0;`);
      o.line(`const int nc = cols <= 0 ? 0 : cols >= ${vec} ? ${vec} : static_cast<int>(cols);`);
      o.pragma("#pragma unroll");
      o.block(`for (int u = 0; u < ${per}; ++u)`, () => {
        o.line(`const int r = r0 + u * ${step}, gr = ${p.starts[0]} + r;`);
        o.line(`const int n = gr >= 0 && gr < ${g}_d${rowAxis} ? nc : 0;`);
        o.line(`prt::cp_async_16(&${dstElem("r", "c")}, n > 0 ? static_cast<const void*>(src0 + u * rstep) : static_cast<const void*>(${g}), n * ${bytes});`);
      });
      o.close();
      return;
    }
    o.block(`for (int i = tid; i < ${total}; i += ${threads})`, () => {
      if (rank === 2) {
        o.line(`const int r = i / ${chunks}, c = (i % ${chunks}) * ${vec};`);
        o.line(`const int gr = ${p.starts[0]} + r;`);
        o.line(`const long long left = ok && gr >= 0 && gr < ${g}_d${rowAxis} ? ${g}_d${last} - (${lastStart} + c) : 0;`);
      } else {
        o.line(`const int c = i * ${vec};`);
        o.line(`const long long left = ok ? ${g}_d${last} - (${lastStart} + c) : 0;`);
      }
      o.line(`const int n = left <= 0 ? 0 : left >= ${vec} ? ${vec} : static_cast<int>(left);`);
      const src = rank === 2 ? `${g} + base + static_cast<long long>(r) * ${g}_s${rowAxis} + c` : `${g} + base + c`;
      o.line(`prt::cp_async_16(&${rank === 2 ? dstElem("r", "c") : "dst[c]"}, n > 0 ? static_cast<const void*>(${src}) : static_cast<const void*>(${g}), n * ${bytes});`);
    });
  });
  o.open("else");
  scalar();
  o.close();
}

/** Elements between tile rows r and r + step at any one column, when that is the same for every r
 * (tileOffset is then linear in steps of `step` rows), else null. Unswizzled rows are `pitch` apart;
 * the swizzle of W-byte rows XORs an offset's 16-byte chunk with its bits 6 up (prt::swz), whose
 * pattern repeats every 4 W elements of 16 bits, so steps of whole patterns are linear. */
function rowStepElems(d: ReturnType<typeof bufferOf>, step: number): number | null {
  if (d.swizzle === 0) return step * d.pitch;
  const E = d.swizzle / 2; // elements of a swizzled row (one panel's)
  return (step * E) % (4 * d.swizzle) === 0 ? step * E : null;
}

export function renderStore(o: Emitter, k: LKernel, s: Extract<LStmt, { kind: "store" }>): void {
  const src = bufferOf(k, s.src);
  const ten = k.tensors.find((t) => t.name === s.tensor)!;
  const p = place(o, k, s.tensor, s.slices);
  const G = cType(ten.dtype);
  const conv = (x: string): string => (ten.dtype === src.type.dtype ? x : `prt::from_f32<${G}>(prt::to_f32(${x}))`);
  const inside = (e: { inside: string }, r: string, c: string): string => (s.mask ? `${e.inside} && (${renderExpr(s.mask, { k, row: r, col: c })})` : e.inside);
  o.open("if (ok)");
  if (isRowVector(src)) {
    // the 4 lanes of a quad hold the same rows: the first writes
    rowLoop(o, k, s.src, (r, ix) => {
      const e = element(s.tensor, p, r, "0");
      o.line(`if ((lane & 3) == 0 && ${inside(e, r, "0")}) ${e.at} = prt::from_f32<${G}>(${fragRead(k, s.src, ix)});`);
    });
  } else if (src.home === "frag") {
    fragLoop(o, k, s.src, (r, c, ix) => {
      const e = element(s.tensor, p, r, c);
      o.line(`if (${inside(e, r, c)}) ${e.at} = prt::from_f32<${G}>(${fragRead(k, s.src, ix)});`);
    });
  } else {
    const rank = src.type.shape.length;
    elemLoop(o, k, src.type.shape, (r, c) => {
      const e = element(s.tensor, p, r, c);
      const x = rank === 1 ? `${cName("t", s.src)}[${r}]` : `${cName("t", s.src)}[${tileOffset(src, r, c)}]`;
      o.line(`if (${inside(e, r, c)}) ${e.at} = ${conv(x)};`);
    });
  }
  o.close();
}
