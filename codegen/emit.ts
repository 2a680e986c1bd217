// The C emitter the renderers share: indented lines, and the two element loops every statement
// uses (threads striding over a shared tile; each thread over the fragment elements it owns).

import { bufferOf, threadsOf, tilingSlots, type LKernel } from "./lir.ts";

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

/** The C loop over the elements of a frag tile: body(r, c, sub) per owned element, `sub` the
 * fragment subscript ("[j][q][e]") of any frag tile of this tiling. */
export function fragLoop(o: Emitter, k: LKernel, name: string, body: (r: string, c: string, elem: string) => void): void {
  const b = bufferOf(k, name);
  const t = b.tiling!;
  const slots = tilingSlots(t), un = t.n / (8 * t.nt), units = (t.m / 16) * un;
  o.pragma("#pragma unroll");
  o.open(`for (int j = 0; j < ${slots}; ++j)`);
  o.line(`const int u = warp + j * ${t.warps};`);
  if (units % t.warps !== 0) o.open(`if (u < ${units})`);
  o.line(`const int m0 = (u / ${un}) * 16, n0 = (u % ${un}) * ${8 * t.nt};`);
  o.pragma("#pragma unroll");
  o.open(`for (int q = 0; q < ${t.nt}; ++q)`);
  o.pragma("#pragma unroll");
  o.open(`for (int e = 0; e < 4; ++e)`);
  o.line(`const int r = m0 + prt::frag_row(lane, e), c = n0 + q * 8 + prt::frag_col(lane, e);`);
  body("r", "c", "[j][q][e]");
  o.close();
  o.close();
  if (units % t.warps !== 0) o.close();
  o.close();
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
