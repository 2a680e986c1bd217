// Pass: pad the rows of mma operand tiles. ldmatrix (and the FMA loops) read 8 rows of a tile at
// the same column; when a row is an even number of 16-byte units some of those rows share banks
// and the read serialises (8 ways at 128-byte rows). 16 bytes more per row spreads them over all 32.

// An mma group (fuse-operands) reads its shared operands and the fragment sources of its computed
// tiles with ldmatrix too; the f32 tiles it reads at their own element along k get kRowsPitch.
// The shared operands of wgmma (sm_90a) take the swizzled layout wgmma's descriptors address
// instead (rules.swizzleFor; its XOR pattern also keeps ldmatrix and the element loops free of
// bank conflicts).

import { walkStmts, type LKernel } from "../lir.ts";
import { groupPlan } from "./fuse-operands.ts";
import { kRowsPitch, paddedPitch, swizzleFor } from "./rules.ts";

export function padShared(k: LKernel): LKernel {
  const operands = new Set<string>(), kRows = new Set<string>(), swizzled = new Set<string>();
  walkStmts(k.body, (s) => {
    if (s.kind === "mma" && s.impl?.kind === "wgmma") swizzled.add(s.a).add(s.b);
    if (s.kind === "mma") operands.add(s.a).add(s.b);
    if (s.kind === "mmaGroup") {
      for (const m of s.mmas) operands.add(m.a).add(m.b);
      const plan = groupPlan(k, s);
      plan.fragmentSources.forEach((x) => operands.add(x));
      // [k, x] storage: B not transposed, A transposed
      if ((plan.side === "b") !== plan.trans) plan.ownF32.forEach((x) => kRows.add(x));
    }
  });
  const pitch = (b: (typeof k.buffers)[number]): number => (operands.has(b.name) ? paddedPitch(b) : kRows.has(b.name) ? kRowsPitch(b) : b.pitch);
  return {
    ...k,
    buffers: k.buffers.map((b) => {
      if (b.home !== "smem") return b;
      const sw = swizzled.has(b.name) ? swizzleFor(b) : null;
      return sw ? { ...b, swizzle: sw, pitch: b.type.shape[1]! } : { ...b, pitch: pitch(b) };
    }),
  };
}
