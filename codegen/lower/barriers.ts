// Passes: block barriers. `insertBarriers` puts __syncthreads() between every two statements and at
// the end of every loop body: each statement is a block-cooperative loop, so this is correct by
// construction. `elideBarriers` then keeps only the barriers that order a shared-memory hazard
// (read after write, write after read or write) between the statements they separate, compared by
// byte ranges so tiles that share bytes (plan-shared) are ordered too. A statement that only reads
// (or overwrites) the elements of a tile that its own threads wrote in the same element loop needs
// no barrier: maps and scalar loads over one shape give element e to the same thread (and maps
// that read frag tiles give a shared destination's element e to its owner in their tiling).
// Register fragments are thread-private and never need one. Async copies count as written when waited for.

import { printLStmt, printTiling } from "../lir-print.ts";
import { bodiesOf, bufferOf, exprReads, mapFragReads, readNodes, smemTileBytes, stmtAccess, withBodies, type LKernel, type LStmt } from "../lir.ts";

export function insertBarriers(k: LKernel): LKernel {
  const list = (body: readonly LStmt[], loop: boolean): LStmt[] => {
    const out: LStmt[] = [];
    body.forEach((s, i) => {
      if (i > 0) out.push({ kind: "barrier" });
      out.push(withBodies(s, (b) => list(b, s.kind === "for")));
    });
    if (loop && out.length) out.push({ kind: "barrier" });
    return out;
  };
  return { ...k, body: list(k.body.filter((s) => s.kind !== "barrier"), false) };
}

/** How a statement touches a tile: "any" element, or only elements it owns in the element loop
 * over a shape ("elem:RxC"): the thread that computes element e of a map's destination reads
 * element e of a same-shape tile, as the map or scalar load that wrote it (same shape) did. */
type Mode = string;
const ANY: Mode = "any";
type Access = ReadonlyMap<string, Mode>;

interface State {
  readonly written: Access;
  readonly read: Access;
  /** Async copies issued but not yet waited for. */
  readonly inflight: ReadonlySet<string>;
  /** The latest barrier not kept yet that the next conflicting access may keep. */
  readonly cand: LStmt | null;
}

function join(a: Access, b: Access): Map<string, Mode> {
  const out = new Map(a);
  for (const [n, m] of b) out.set(n, out.has(n) && out.get(n) !== m ? ANY : m);
  return out;
}
const union = (a: ReadonlySet<string>, b: ReadonlySet<string>): Set<string> => new Set([...a, ...b]);
const sameSet = (a: ReadonlySet<string>, b: ReadonlySet<string>): boolean => a.size === b.size && [...a].every((x) => b.has(x));
const sameAccess = (a: Access, b: Access): boolean => a.size === b.size && [...a].every(([n, m]) => b.get(n) === m);
const sameState = (a: State, b: State): boolean =>
  a.cand === b.cand && sameAccess(a.written, b.written) && sameAccess(a.read, b.read) && sameSet(a.inflight, b.inflight);
const EMPTY: Access = new Map();

function walkBarriers(body: readonly LStmt[], f: (b: LStmt) => void): void {
  for (const s of body) {
    if (s.kind === "barrier") f(s);
    for (const b of bodiesOf(s)) walkBarriers(b, f);
  }
}

/** The shared tiles a statement reads and writes, with how (see Mode). */
function accessModes(k: LKernel, s: LStmt): { reads: Map<string, Mode>; writes: Map<string, Mode> } {
  const { reads, writes } = stmtAccess(s);
  const r = new Map<string, Mode>([...reads].map((n) => [n, ANY]));
  const w = new Map<string, Mode>([...writes].map((n) => [n, ANY]));
  const shapeKey = (n: string): string => `elem:${bufferOf(k, n).type.shape.join("x")}`;
  const smem = (n: string): boolean => bufferOf(k, n).home === "smem";
  const sameShape = (a: string, b: string): boolean => shapeKey(a) === shapeKey(b);
  if (s.kind === "map" && smem(s.dst)) {
    // a map reading frag tiles writes its shared destination per fragment element of their tiling
    const fr = mapFragReads(k, s);
    const key = fr.length ? `frag:${printTiling(bufferOf(k, fr[0]!).tiling!)}` : shapeKey(s.dst);
    w.set(s.dst, key);
    const modes = new Map<string, Mode>();
    for (const rd of readNodes(s.expr)) {
      const own = rd.index[0]!.op === "row" && (rd.index.length === 1 || rd.index[1]!.op === "col");
      const m = own && smem(rd.buf) && sameShape(rd.buf, s.dst) ? key : ANY;
      modes.set(rd.buf, modes.has(rd.buf) && modes.get(rd.buf) !== m ? ANY : m);
    }
    for (const [n, m] of modes) r.set(n, m);
  }
  // a frag reduce combining through its scratch writes dst[i] from thread i mod threads, as a 1-D map does
  if (s.kind === "reduce" && s.scratch !== null) w.set(s.dst, shapeKey(s.dst));
  if (s.kind === "load" && s.mode === "scalar" && s.stage === null && smem(s.dst)) w.set(s.dst, shapeKey(s.dst));
  if (s.kind === "store" && smem(s.src) && s.slices.every((x) => !exprReads(x.kind === "at" ? x.at : x.start).has(s.src)))
    r.set(s.src, shapeKey(s.src));
  return { reads: r, writes: w };
}

export function elideBarriers(k: LKernel): LKernel {
  const region = new Map<string, [number, number] | null>();
  for (const b of k.buffers) {
    if (b.home !== "smem") region.set(b.name, null);
    else {
      if (b.offset === null) throw new Error(`${k.name}: elideBarriers needs planned shared memory (tile ${b.name})`);
      region.set(b.name, [b.offset, b.offset + b.copies * smemTileBytes(b)]);
    }
  }
  /** Whether touching tile `a` in mode `m` conflicts with the accesses in `set`: overlapping bytes,
   * unless it is the same tile touched element-wise in the same element loop. */
  const conflicts = (a: string, m: Mode, set: Access): boolean => {
    const ra = region.get(a);
    if (!ra) return false;
    for (const [b, mb] of set) {
      const rb = region.get(b);
      if (!rb || !(ra[0] < rb[1] && rb[0] < ra[1])) continue;
      if (a === b && m !== ANY && m === mb) continue;
      return true;
    }
    return false;
  };
  const kept = new Set<LStmt>();
  /** A state whose candidate barrier was kept later is a state right after that barrier. */
  const settle = (st: State): State => (st.cand && kept.has(st.cand) ? { ...st, written: EMPTY, read: EMPTY, cand: null } : st);
  /** Either of two states (after a branch or a loop); no barrier candidate survives the join. */
  const merge = (x: State, y: State): State => {
    const a = settle(x), b = settle(y);
    return { written: join(a.written, b.written), read: join(a.read, b.read), inflight: union(a.inflight, b.inflight), cand: null };
  };

  const access = (s: LStmt, st: State): State => {
    const { reads, writes } = accessModes(k, s);
    const smem = (n: string): boolean => region.get(n) !== null;
    const r = new Map([...reads].filter(([n]) => smem(n))), w = new Map([...writes].filter(([n]) => smem(n)));
    const conflict =
      [...r].some(([n, m]) => conflicts(n, m, st.written)) || [...w].some(([n, m]) => conflicts(n, m, st.written) || conflicts(n, m, st.read));
    let { written, read, cand } = st;
    if (conflict) {
      if (!cand) throw new Error(`${k.name}: elideBarriers: no barrier before the conflicting statement '${printLStmt(s, "")[0]}'`);
      kept.add(cand);
      written = EMPTY;
      read = EMPTY;
      cand = null;
    }
    const async = s.kind === "load" && s.mode === "async";
    return {
      written: async ? written : join(written, w),
      read: join(read, r),
      inflight: async ? union(st.inflight, new Set(w.keys())) : st.inflight,
      cand,
    };
  };

  const visit = (body: readonly LStmt[], st0: State): State => {
    let st = st0;
    for (const s of body) {
      switch (s.kind) {
        case "barrier":
          st = kept.has(s) ? { ...st, written: EMPTY, read: EMPTY, cand: null } : { ...st, cand: s };
          break;
        case "asyncWait":
          st = { ...st, written: join(st.written, new Map([...st.inflight].map((n) => [n, ANY]))), inflight: new Set() };
          break;
        case "for": {
          st = access(s, st);
          // iteration i+1 starts from the end of iteration i: follow the states until they repeat;
          // after the loop, any of them (or the state before it) holds. Barriers kept on the way
          // change earlier states, so repeat until a round keeps no new barrier.
          const entry = st;
          for (let round = 0; ; round++) {
            const kept0 = kept.size;
            let out = visit(s.body, entry);
            let after = merge(entry, out);
            let stable = false;
            for (let i = 0; i < 16 && !stable; i++) {
              const next = visit(s.body, out);
              stable = sameState(settle(next), settle(out));
              after = merge(after, next);
              out = next;
            }
            if (!stable || round > 16) walkBarriers(s.body, (b) => kept.add(b)); // never seen; keep them all to be safe
            if (kept.size === kept0) {
              st = after;
              break;
            }
          }
          break;
        }
        case "if": {
          st = access(s, st);
          // an `any` condition is a block vote (__syncthreads_or): a barrier after its reads
          if (s.cond.op === "any") st = { ...st, written: EMPTY, read: EMPTY, cand: null };
          st = merge(visit(s.body, st), s.orelse ? visit(s.orelse, st) : st);
          break;
        }
        default:
          st = access(s, st);
      }
    }
    return st;
  };
  visit(k.body, { written: EMPTY, read: EMPTY, inflight: new Set(), cand: null });

  const prune = (body: readonly LStmt[]): LStmt[] =>
    body
      .filter((s) => s.kind !== "barrier" || kept.has(s))
      .map((s) => withBodies(s, prune));
  return { ...k, body: prune(k.body) };
}
