// Pass: pad the rows of mma operand tiles. ldmatrix (and the FMA loops) read 8 rows of a tile at
// the same column; when a row is an even number of 16-byte units some of those rows share banks
// and the read serialises (8 ways at 128-byte rows). 16 bytes more per row spreads them over all 32.

import { walkStmts, type LKernel } from "../lir.ts";
import { paddedPitch } from "./rules.ts";

export function padShared(k: LKernel): LKernel {
  const operands = new Set<string>();
  walkStmts(k.body, (s) => {
    if (s.kind === "mma") operands.add(s.a).add(s.b);
  });
  return {
    ...k,
    buffers: k.buffers.map((b) => (b.home === "smem" && operands.has(b.name) ? { ...b, pitch: paddedPitch(b) } : b)),
  };
}
