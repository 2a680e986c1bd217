// Which consecutive element-wise maps the renderer may run as one element loop. Each map is a
// block-cooperative loop in which thread `tid` computes the elements tid, tid + T, ... of its
// destination; two maps over the same shape give element e to the same thread. When no barrier
// separates them (elide-barriers found no hazard between threads), running them element by element
// in one loop changes only the order inside each thread, which is safe when
//   - a later map reads an earlier one's destination only at its own element [row, col]
//     (then that value is the earlier map's result for this element: a register, not a reload);
//   - no map reads or writes a later map's destination (a write of element e' before a read at e');
//   - the run's destinations share no bytes with any other tile the run touches (plan-shared lets
//     tiles with disjoint live ranges share bytes; element e of one is not element e of the other).
// What it buys: computedOperand's hi / lo pair (common.ts) is two maps of one value, x and
// x - round(x); fused, x is computed once, every load happens before the stores (so nvcc may reuse
// loads that two expressions share) and lo reads hi from a register.

import type { Expr } from "../../dsl/ir.ts";
import { bufferOf, exprReads, mapFragReads, readNodes, regionsOverlap, smemRegion, type LKernel, type LStmt } from "../lir.ts";

export type MapStmt = Extract<LStmt, { kind: "map" }>;

/** A map over a shared tile's element loop (not one reading frag tiles, which runs over fragments). */
const isSmemMap = (k: LKernel, s: LStmt): s is MapStmt => s.kind === "map" && bufferOf(k, s.dst).home === "smem" && mapFragReads(k, s).length === 0;

export const ownElement = (rank: number, index: readonly Expr[]): boolean =>
  rank === 1 ? index.length === 1 && index[0]!.op === "row" : index.length === 2 && index[0]!.op === "row" && index[1]!.op === "col";

/** Whether `next` may join the run `run` (all smem maps over one shape, consecutive). */
function joins(k: LKernel, run: readonly MapStmt[], next: MapStmt): boolean {
  const shape = bufferOf(k, run[0]!.dst).type.shape;
  const nshape = bufferOf(k, next.dst).type.shape;
  if (shape.length !== nshape.length || shape.some((x, i) => x !== nshape[i])) return false;
  const dsts = new Set(run.map((m) => m.dst));
  if (dsts.has(next.dst)) return false;
  if (run.some((m) => exprReads(m.expr).has(next.dst))) return false; // an earlier map reads the new destination
  for (const r of readNodes(next.expr)) if (dsts.has(r.buf) && !ownElement(shape.length, r.index)) return false;
  // byte-disjointness: every destination of the run against every other tile it touches
  const all = [...run, next];
  const touched = new Set<string>();
  for (const m of all) {
    touched.add(m.dst);
    exprReads(m.expr, touched);
  }
  for (const m of all)
    for (const t of touched) if (t !== m.dst && regionsOverlap(smemRegion(k, m.dst), smemRegion(k, t))) return false;
  return true;
}

/** The body split into runs: a run of two or more smem maps renders as one element loop; every
 * other statement is a run of one. */
export function mapRuns(k: LKernel, body: readonly LStmt[]): LStmt[][] {
  const out: LStmt[][] = [];
  for (const s of body) {
    const last = out.at(-1);
    if (last && isSmemMap(k, s) && last.every((x) => isSmemMap(k, x)) && joins(k, last as MapStmt[], s)) last.push(s);
    else out.push([s]);
  }
  return out;
}
