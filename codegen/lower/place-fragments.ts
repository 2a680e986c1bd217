// Pass: keep accumulators and other element-wise register tiles in registers. A 2-D f32 `reg` tile
// lives in each thread's registers, as the elements it owns in the m16n8 accumulator layout of a
// warp tiling, when every statement that touches it works element by element in that layout:
//   - an mma writes it with tensor cores or fragment-layout FMA (the tiling of that mma),
//   - a load fills it or a store writes it out (any element order works),
//   - a map writes it, or reads it at exactly [row, col] while writing another tile of the same
//     tiling (so the thread that owns the element computes it).
//   - a reduce reads it (one value per row or column: combined in registers, then across the
//     lanes that share the row or column by shuffles, then across warps through a small scratch).
// Tiles that are scanned, fed to an mma or read at another element stay in shared memory, and so
// do 1-D reg tiles (row vectors, reduce destinations) for now. Decided as a fixed point, since a map can tie
// several tiles to each other; capped at MAX_FRAG_REGISTERS per tile and MAX_FRAG_REGISTERS_TOTAL
// for the tiles live at any one point (plan-shared's live ranges: tiles of disjoint phases do not
// compete, nvcc reuses their registers).

import type { Expr } from "../../dsl/ir.ts";
import { bufferOf, exprReads, mapStmts, readNodes, sameTiling, stmtAccess, reducePartials, walkStmts, type LBuffer, type LKernel, type WarpTiling } from "../lir.ts";
import { liveRanges } from "./plan-shared.ts";
import { chooseTiling, fragRegisters, MAX_FRAG_REGISTERS, MAX_FRAG_REGISTERS_TOTAL } from "./rules.ts";

/** The tiling each reg tile would have as fragments (mma writers must agree), before the use checks. */
function proposedTilings(k: LKernel): Map<string, WarpTiling> {
  const out = new Map<string, WarpTiling>();
  const bad = new Set<string>();
  walkStmts(k.body, (s) => {
    if (s.kind !== "mma") return;
    if (s.impl === null || s.impl.kind === "fma") return void bad.add(s.dst);
    const t = out.get(s.dst);
    if (t && !sameTiling(t, s.impl.tiling)) bad.add(s.dst);
    out.set(s.dst, s.impl.tiling);
  });
  for (const b of k.buffers) {
    if (b.type.space !== "reg" || b.type.shape.length !== 2 || b.type.dtype !== "f32" || bad.has(b.name)) {
      out.delete(b.name);
      continue;
    }
    if (!out.has(b.name)) {
      // an mma's accumulator of the same shape sets the tiling (maps tie such tiles to it element by element)
      const [m, n] = [b.type.shape[0]!, b.type.shape[1]!];
      const peer = [...out].find(([x, t]) => t.m === m && t.n === n && !bad.has(x) && bufferOf(k, x).type.space === "reg")?.[1];
      const t = peer ?? chooseTiling(m, n, k.numWarps);
      if (t) out.set(b.name, t);
    }
    const t = out.get(b.name);
    if (t && fragRegisters(t) > MAX_FRAG_REGISTERS) out.delete(b.name);
  }
  return out;
}

/** Remove from `set` every tile some statement uses other than element-wise in its tiling. */
function prune(k: LKernel, set: Map<string, WarpTiling>): boolean {
  const drop = new Set<string>();
  const ownElement = (index: readonly Expr[]): boolean =>
    index.length === 2 && index[0]!.op === "row" && index[1]!.op === "col";
  walkStmts(k.body, (s) => {
    const { reads, writes } = stmtAccess(s);
    for (const name of [...reads, ...writes]) {
      const t = set.get(name);
      if (!t) continue;
      switch (s.kind) {
        case "mma":
          if (s.a === name || s.b === name || s.impl === null || s.impl.kind === "fma" || !sameTiling(s.impl.tiling, t)) drop.add(name);
          break;
        case "load":
        case "store":
          if (s.slices.some((x) => exprReads(x.kind === "at" ? x.at : x.start).has(name))) drop.add(name);
          break;
        case "map": {
          // into a frag tile of the same tiling, or into a shared tile of the same shape (written
          // per fragment element: then every frag tile the map reads must share one tiling)
          const dstT = set.get(s.dst);
          const dst = k.buffers.find((b) => b.name === s.dst)!.type.shape;
          const peers = [...exprReads(s.expr)].map((n) => set.get(n)).filter((x) => x !== undefined);
          for (const r of readNodes(s.expr)) {
            if (r.buf !== name) continue;
            if (!ownElement(r.index)) drop.add(name);
            else if (dstT ? !sameTiling(dstT, t) : dst.length !== 2 || dst[0] !== t.m || dst[1] !== t.n || peers.some((p) => !sameTiling(p, t)))
              drop.add(name);
          }
          break;
        }
        case "reduce":
          if (s.src !== name) drop.add(name);
          break;
        case "reduce":
          if (s.src !== name) drop.add(name);
          break;
        default:
          drop.add(name);
      }
    }
  });
  for (const n of drop) set.delete(n);
  return drop.size > 0;
}

/** The most fragment registers live at one point, and the tiles live there. */
function peakRegisters(set: Map<string, WarpTiling>, live: Map<string, [number, number]>): { regs: number; tiles: string[] } {
  const span = (n: string): [number, number] => live.get(n) ?? [0, 0];
  let best = { regs: 0, tiles: [] as string[] };
  for (const n of set.keys()) {
    const at = span(n)[0]; // the peak is at some tile's first use
    const tiles = [...set.keys()].filter((m) => span(m)[0] <= at && at <= span(m)[1]);
    const regs = tiles.reduce((s, n) => s + fragRegisters(set.get(n)!), 0);
    if (regs > best.regs) best = { regs, tiles };
  }
  return best;
}

export function fragmentTilings(k: LKernel): Map<string, WarpTiling> {
  const set = proposedTilings(k);
  const live = liveRanges(k);
  for (;;) {
    while (prune(k, set));
    const peak = peakRegisters(set, live);
    if (peak.regs <= MAX_FRAG_REGISTERS_TOTAL) return set;
    // over budget: give up the largest tile live at the peak (ties: the last declared), then re-check the ties
    const order = (n: string): number => k.buffers.findIndex((b) => b.name === n);
    const [victim] = peak.tiles.sort((a, b) => fragRegisters(set.get(b)!) - fragRegisters(set.get(a)!) || order(b) - order(a));
    set.delete(victim!);
  }
}

/** Reduces of frag tiles whose rows (axis 1) or columns (axis 0) several units share get a shared
 * scratch [units, rows or columns] for the cross-warp combine, one per (destination, shape),
 * named after the destination. */
function withScratch(k: LKernel, set: Map<string, WarpTiling>): LKernel {
  const names = new Set([...k.params.map((p) => p.name), ...k.tensors.map((t) => t.name), ...k.buffers.map((b) => b.name)]);
  const made = new Map<string, string>(); // "dst:units" -> scratch name
  const extra: LBuffer[] = [];
  const body = mapStmts(k.body, (s) => {
    if (s.kind !== "reduce" || !set.has(s.src)) return s;
    const t = set.get(s.src)!, units = reducePartials(t, s.axis);
    if (units === 1) return s;
    const len = s.axis === 1 ? t.m : t.n;
    const key = `${s.dst}:${units}x${len}`;
    let name = made.get(key);
    if (!name) {
      name = `${s.dst}_part`;
      for (let i = 2; names.has(name); i++) name = `${s.dst}_part${i}`;
      names.add(name);
      made.set(key, name);
      extra.push({ name, type: { shape: [units, len], dtype: "f32", space: "shared" }, home: "smem", pitch: len, copies: 1, offset: null, tiling: null });
    }
    return { ...s, scratch: name };
  });
  return { ...k, buffers: [...k.buffers, ...extra], body };
}

export function placeFragments(k: LKernel): LKernel {
  const set = fragmentTilings(k);
  return withScratch({
    ...k,
    buffers: k.buffers.map((b) => (set.has(b.name) ? { ...b, home: "frag" as const, tiling: set.get(b.name)! } : b)),
  }, set);
}
