// Pass: mma operands computed in registers. A map that writes an f16/bf16 tile only for the
// tensor-core mmas right after it to consume (computedOperand / splitOperand's hi and lo in
// dsl/kernels/common.ts) costs, through shared memory, a store of every element, a barrier and an
// ldmatrix re-read per mma statement. Fused into one `mmaGroup` (lir.ts), each warp evaluates the
// maps at exactly the fragment elements it feeds to the mmas, per k-step, rounds them and packs
// them into mma registers; the tile gets home `inline` and no bytes. When
//   - the maps are the last statements before a run of tc mmas into one accumulator (same tiling
//     and k; every mma after the first accumulates);
//   - each map writes a 2-D f16/bf16 shared tile of one shape, reads no frag tile, reads the tiles
//     of earlier maps of the group only at its own element (a register then) and neither its own
//     destination nor the accumulator;
//   - every computed tile is an operand of the run on one side (A or B, one transposition), never
//     both operands of one mma, and used by no other statement of the kernel.
// Redundancy: warps whose units share k and n (B) or k and m (A) evaluate the same elements; the
// evaluation reads shared memory instead of writing it, and no barrier separates it from the mma.
// Inside the maps, a read of a 16-bit shared tile of the computed tile's shape at its own element
// comes from that tile's own mma fragment (one ldmatrix per k-step, `groupPlan`), not 8 scalar
// reads; f32 tiles read at their own element along k get a pitch that spreads the rows two apart
// over different banks (pad-shared, rules.kRowsPitch).

import { bufferOf, exprReads, mapFragReads, readNodes, sameTiling, stmtAccess, walkStmts, withBodies, type LKernel, type LMap, type LMma, type LStmt } from "../lir.ts";
import { ownElement } from "./fuse-maps.ts";
import { mmaShape } from "./rules.ts";

export type MmaGroup = Extract<LStmt, { kind: "mmaGroup" }>;

/** How a group reads: the side and transposition of its computed tiles, the 16-bit tiles whose
 * own-element reads come from their fragments, and the f32 tiles read at their own element. */
export interface GroupPlan {
  readonly side: "a" | "b";
  readonly trans: boolean;
  readonly fragmentSources: readonly string[];
  readonly ownF32: readonly string[];
}

export function groupPlan(k: LKernel, g: { operands: readonly LMap[]; mmas: readonly LMma[] }): GroupPlan {
  const inline = new Set(g.operands.map((m) => m.dst));
  const user = g.mmas.find((m) => inline.has(m.a) || inline.has(m.b))!;
  const side = inline.has(user.a) ? "a" : "b";
  const trans = side === "a" ? user.transA : user.transB;
  const shape = bufferOf(k, g.operands[0]!.dst).type.shape;
  const sources = new Set<string>(), f32 = new Set<string>();
  for (const m of g.operands)
    for (const r of readNodes(m.expr)) {
      const b = bufferOf(k, r.buf);
      if (b.home !== "smem" || !ownElement(2, r.index) || b.type.shape.length !== 2 || b.type.shape[0] !== shape[0] || b.type.shape[1] !== shape[1]) continue;
      if (b.type.dtype === "f32") f32.add(b.name);
      else if ((b.type.shape[1]! * 2) % 16 === 0) sources.add(b.name);
    }
  return { side, trans, fragmentSources: [...sources], ownF32: [...f32] };
}

/** Statements (by identity) accessing each tile, anywhere in the kernel. */
function accessCounts(k: LKernel): Map<string, number> {
  const n = new Map<string, number>();
  walkStmts(k.body, (s) => {
    const { reads, writes } = stmtAccess(s);
    for (const t of new Set([...reads, ...writes])) n.set(t, (n.get(t) ?? 0) + 1);
  });
  return n;
}

/** Whether `x` continues the run of mmas that `first` starts. */
function follows(k: LKernel, first: LMma, x: LStmt): x is LMma {
  if (x.kind !== "mma" || x.impl?.kind !== "tc" || first.impl?.kind !== "tc") return false;
  return x.dst === first.dst && x.accumulate && sameTiling(x.impl.tiling, first.impl.tiling) && mmaShape(k, x).k === mmaShape(k, first).k;
}

/** The maps (a suffix of `cands`) that can be computed inside `mmas`, or null. */
function chooseOperands(k: LKernel, cands: readonly LMap[], mmas: readonly LMma[], counts: Map<string, number>): LMap[] | null {
  const dst = mmas[0]!.dst;
  for (let q = 0; q < cands.length; q++) {
    const ms = cands.slice(q);
    const names = new Set(ms.map((m) => m.dst));
    const shape = bufferOf(k, ms[0]!.dst).type.shape;
    const ok = ms.every((m, i) => {
      const b = bufferOf(k, m.dst);
      if (b.home !== "smem" || b.type.dtype === "f32" || b.type.shape.length !== 2 || b.type.shape[0] !== shape[0] || b.type.shape[1] !== shape[1]) return false;
      if (mapFragReads(k, m).length) return false;
      const reads = exprReads(m.expr);
      if (reads.has(m.dst) || reads.has(dst)) return false;
      const earlier = new Set(ms.slice(0, i).map((x) => x.dst));
      for (const r of readNodes(m.expr)) if (names.has(r.buf) && (!earlier.has(r.buf) || !ownElement(2, r.index))) return false;
      const users = mmas.filter((x) => x.a === m.dst || x.b === m.dst).length;
      return users > 0 && counts.get(m.dst) === 1 + users + ms.filter((x) => x !== m && exprReads(x.expr).has(m.dst)).length;
    });
    if (!ok) continue;
    const sides = new Set<string>();
    let both = false;
    for (const x of mmas) {
      if (names.has(x.a) && names.has(x.b)) both = true;
      if (names.has(x.a)) sides.add(`a${x.transA}`);
      if (names.has(x.b)) sides.add(`b${x.transB}`);
    }
    if (!both && sides.size === 1) return ms;
  }
  return null;
}

export function fuseOperands(k: LKernel): LKernel {
  const counts = accessCounts(k);
  const inline = new Set<string>();
  const list = (body: readonly LStmt[]): LStmt[] => {
    const out: LStmt[] = [];
    for (let i = 0; i < body.length; ) {
      const s = body[i]!;
      if (s.kind === "for" || s.kind === "if") {
        out.push(withBodies(s, list));
        i++;
        continue;
      }
      if (s.kind === "mma" && s.impl?.kind === "tc") {
        let l = i + 1;
        while (l < body.length && follows(k, s, body[l]!)) l++;
        const mmas = body.slice(i, l) as LMma[];
        let p = out.length;
        while (p > 0 && out[p - 1]!.kind === "map") p--;
        const chosen = chooseOperands(k, out.slice(p) as LMap[], mmas, counts);
        if (chosen) {
          out.splice(out.length - chosen.length);
          out.push({ kind: "mmaGroup", operands: chosen, mmas });
          chosen.forEach((m) => inline.add(m.dst));
          i = l;
          continue;
        }
      }
      out.push(s);
      i++;
    }
    return out;
  };
  const body = list(k.body);
  return { ...k, body, buffers: k.buffers.map((b) => (inline.has(b.name) ? { ...b, home: "inline" as const, pitch: b.type.shape[1]!, tiling: null } : b)) };
}
