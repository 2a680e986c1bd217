// The C emitter the renderers share: indented lines, and the two element loops every statement
// uses (threads striding over a shared tile; each thread over the fragment elements it owns).

import { bufferOf, threadsOf, tilingSlots, type LKernel, type WarpTiling } from "./lir.ts";

/** Lines with indentation. */
export class Emitter {
  readonly lines: string[] = [];
  private depth = 0;
  line(s: string): this {
    this.lines.push(s === "" ? "" : "  ".repeat(this.depth) + s);
    return this;
  }
  /** A #pragma line (kept apart so a reader sees where unrolling is asked for). */
  pragma(s: string): this {
    return this.line(s);
  }
  open(s: string): this {
    this.line(s === "" ? "{" : s + " {");
    this.depth++;
    return this;
  }
  indent(): this {
    this.depth++;
    return this;
  }
  close(suffix = ""): this {
    this.depth--;
    this.line("}" + suffix);
    return this;
  }
  block(head: string, body: () => void): this {
    this.open(head);
    body();
    return this.close();
  }
  text(): string {
    return this.lines.join("\n") + "\n";
  }
}

/** A fragment element of the current thread: slot j, n-tile q, element e of the m16n8 layout
 * (C expressions). Any frag tile of the same tiling holds its element (row, col) at this index;
 * a row vector of the same rows holds row `row` at [j][e >> 1]. */
export interface FragIndex {
  readonly j: string;
  readonly q: string;
  readonly e: string;
}

/** The C value (f32) of frag tile `name` at `ix` (lir.ts: F as floats, P packed, R per row). */
export function fragRead(k: LKernel, name: string, ix: FragIndex): string {
  const b = bufferOf(k, name), f = `f_${name}`;
  if (b.type.shape.length === 1) return `${f}[${ix.j}][(${ix.e}) >> 1]`;
  if (b.type.dtype !== "f32") return `prt::b16_half<${b.type.dtype === "f16" ? "__half" : "__nv_bfloat16"}>(${f}[${ix.j}][${ix.q}][(${ix.e}) >> 1], (${ix.e}) & 1)`;
  return `${f}[${ix.j}][${ix.q}][${ix.e}]`;
}

/** The slot loop of a tiling (j, and u = warp + j warps, guarded when units do not divide evenly)
 * with m0, n0 of the unit; body inside. */
function slotLoop(o: Emitter, t: WarpTiling, body: () => void): void {
  const slots = tilingSlots(t), un = t.n / (8 * t.nt), units = (t.m / 16) * un;
  o.pragma("#pragma unroll");
  o.open(`for (int j = 0; j < ${slots}; ++j)`);
  o.line(`const int u = warp + j * ${t.warps};`);
  if (units % t.warps !== 0) o.open(`if (u < ${units})`);
  o.line(`const int m0 = (u / ${un}) * 16, n0 = (u % ${un}) * ${8 * t.nt};`);
  o.line("(void)n0;");
  body();
  if (units % t.warps !== 0) o.close();
  o.close();
}

/** The C loop over the elements of a 2-D frag tile: body(r, c, ix) per owned element. */
export function fragLoop(o: Emitter, k: LKernel, name: string, body: (r: string, c: string, ix: FragIndex) => void): void {
  const t = bufferOf(k, name).tiling!;
  slotLoop(o, t, () => {
    o.pragma("#pragma unroll");
    o.open(`for (int q = 0; q < ${t.nt}; ++q)`);
    o.pragma("#pragma unroll");
    o.open(`for (int e = 0; e < 4; ++e)`);
    o.line(`const int r = m0 + prt::frag_row(lane, e), c = n0 + q * 8 + prt::frag_col(lane, e);`);
    body("r", "c", { j: "j", q: "q", e: "e" });
    o.close();
    o.close();
  });
}

/** The element pairs of a packed frag tile (elements 2p, 2p + 1: one row, two columns): body(r,
 * c0, ix0, ix1) with c0 the first column, then the caller packs the pair into [j][q][p]. */
export function fragPairLoop(o: Emitter, k: LKernel, name: string, body: (r: string, c: string, ix0: FragIndex, ix1: FragIndex) => void): void {
  const t = bufferOf(k, name).tiling!;
  slotLoop(o, t, () => {
    o.pragma("#pragma unroll");
    o.open(`for (int q = 0; q < ${t.nt}; ++q)`);
    o.pragma("#pragma unroll");
    o.open(`for (int p = 0; p < 2; ++p)`);
    o.line(`const int r = m0 + prt::frag_row(lane, 2 * p), c = n0 + q * 8 + prt::frag_col(lane, 2 * p);`);
    body("r", "c", { j: "j", q: "q", e: "(2 * p)" }, { j: "j", q: "q", e: "(2 * p + 1)" });
    o.close();
    o.close();
  });
}

/** The C loop over the rows a thread owns of a row vector: body(r, ix) with ix.e = 2 h (row g + 8 h). */
export function rowLoop(o: Emitter, k: LKernel, name: string, body: (r: string, ix: FragIndex) => void): void {
  const t = bufferOf(k, name).tiling!;
  slotLoop(o, t, () => {
    o.pragma("#pragma unroll");
    o.open(`for (int h = 0; h < 2; ++h)`);
    o.line(`const int r = m0 + (lane >> 2) + 8 * h;`);
    body("r", { j: "j", q: "0", e: "(2 * h)" });
    o.close();
  });
}

/** The C loop over the elements of a shared tile's logical shape, threads striding. */
export function elemLoop(o: Emitter, k: LKernel, shape: readonly number[], body: (r: string, c: string) => void): void {
  const nt = threadsOf(k);
  if (shape.length === 1) {
    o.open(`for (int r = tid; r < ${shape[0]}; r += ${nt})`);
    body("r", "0");
  } else {
    const cols = shape[1]!;
    o.open(`for (int i = tid; i < ${shape[0]! * cols}; i += ${nt})`);
    o.line(`const int r = i / ${cols}, c = i % ${cols};`);
    body("r", "c");
  }
  o.close();
}
