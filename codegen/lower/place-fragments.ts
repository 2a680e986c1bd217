// Pass: keep accumulators and other element-wise register tiles in registers. Three kinds of
// `reg` tile live in each thread's registers, as the elements it owns in the m16n8 accumulator
// layout of a warp tiling, when every statement that touches them works element by element in
// that layout:
//   - F, a 2-D f32 tile: written by an mma with tensor cores, wgmma or fragment-layout FMA (the
//     tiling of that mma), loaded, stored, mapped (reading frag tiles of its tiling only at
//     [row, col], row vectors only at [row]), reduced (one value per row or column: in registers,
//     across the lanes that share it by shuffles, across warps through a small scratch);
//   - P, a 2-D f16/bf16 tile, two elements per register: written by maps from frag tiles of its
//     tiling, reduced, and read as the A operand of a tensor-core mma whose fragments it is
//     element for element (a row-block tiling: flash attention's P = exp(S - max) in P @ V);
//   - R, a 1-D f32 row vector of a row-block tiling (each warp owns whole rows): a thread holds the
//     two rows (g and g + 8) of each of its slots. Written by row reduces of F/P tiles and by maps
//     reading row vectors at [row] (and shared tiles anywhere), read by maps into F/P/R tiles at
//     [row], loaded, stored: the running max and sum of an online softmax.
// Everything else (scanned tiles, tiles fed to an mma as B or read at another element, row
// vectors a shared-memory loop reads) stays in shared memory. Decided as a fixed point, since maps
// tie tiles to each other; capped at MAX_FRAG_REGISTERS per tile and MAX_FRAG_REGISTERS_TOTAL for
// the tiles live at any one point (plan-shared's live ranges: tiles of disjoint phases do not
// compete, nvcc reuses their registers).

import type { Expr } from "../../dsl/ir.ts";
import { bufferOf, exprReads, mapStmts, readNodes, sameTiling, stmtAccess, reducePartials, walkStmts, type LBuffer, type LKernel, type LStmt, type WarpTiling } from "../lir.ts";
import { liveRanges } from "./plan-shared.ts";
import { chooseTiling, fragFeedsA, fragRegisters, MAX_FRAG_REGISTERS, MAX_FRAG_REGISTERS_TOTAL } from "./rules.ts";

type Kind = "F" | "P" | "R";
interface Candidate {
  readonly kind: Kind;
  readonly tiling: WarpTiling;
}

const unitsPerRow = (t: WarpTiling): number => t.n / (8 * t.nt);
/** Whether two tilings give each thread the same rows, one unit per row block (row vectors tie to both). */
export const sameRows = (a: WarpTiling, b: WarpTiling): boolean => a.m === b.m && a.warps === b.warps && unitsPerRow(a) === 1 && unitsPerRow(b) === 1;
const ownElement = (index: readonly Expr[]): boolean => index.length === 2 && index[0]!.op === "row" && index[1]!.op === "col";
const ownRow = (index: readonly Expr[]): boolean => index.length === 1 && index[0]!.op === "row";

/** Registers per thread a candidate takes. */
export function candidateRegisters(c: Candidate): number {
  const slots = fragRegisters(c.tiling) / (c.tiling.nt * 4);
  return c.kind === "R" ? slots * 2 : c.kind === "P" ? fragRegisters(c.tiling) / 2 : fragRegisters(c.tiling);
}

/** The tiling each reg tile would have in registers (before the use checks). */
function proposed(k: LKernel): Map<string, Candidate> {
  const out = new Map<string, Candidate>();
  const bad = new Set<string>();
  walkStmts(k.body, (s) => {
    if (s.kind !== "mma") return;
    if (s.impl === null || s.impl.kind === "fma") return void bad.add(s.dst);
    const t = out.get(s.dst);
    if (t && !sameTiling(t.tiling, s.impl.tiling)) bad.add(s.dst);
    out.set(s.dst, { kind: "F", tiling: s.impl.tiling });
  });
  for (const b of k.buffers) {
    const isF = b.type.space === "reg" && b.type.shape.length === 2 && b.type.dtype === "f32";
    if (!isF || bad.has(b.name)) {
      out.delete(b.name);
      continue;
    }
    if (!out.has(b.name)) {
      // an mma's accumulator of the same shape sets the tiling (maps tie such tiles to it element by element)
      const [m, n] = [b.type.shape[0]!, b.type.shape[1]!];
      const peer = [...out].find(([x, c]) => c.tiling.m === m && c.tiling.n === n && !bad.has(x) && bufferOf(k, x).type.space === "reg")?.[1];
      const t = peer?.tiling ?? chooseTiling(m, n, k.numWarps);
      if (t) out.set(b.name, { kind: "F", tiling: t });
    }
  }
  // P: the tiling of the F tiles its writing maps read at [row, col]
  // R: the tiling of the F/P tile a row reduce into it reads, or of an F/P tile whose map reads it at [row]
  const sourceOf = new Map<string, WarpTiling>();
  walkStmts(k.body, (s) => {
    if (s.kind === "map") {
      const d = bufferOf(k, s.dst);
      if (d.type.space === "reg" && d.type.shape.length === 2 && d.type.dtype !== "f32" && !sourceOf.has(s.dst)) {
        const src = readNodes(s.expr).find((r) => out.get(r.buf)?.kind === "F" && ownElement(r.index));
        if (src) sourceOf.set(s.dst, out.get(src.buf)!.tiling);
      }
    }
  });
  for (const [name, t] of sourceOf) out.set(name, { kind: "P", tiling: t });
  walkStmts(k.body, (s) => {
    const rowsOf = (t: WarpTiling | undefined): WarpTiling | null => (t && unitsPerRow(t) === 1 ? t : null);
    if (s.kind === "reduce" && s.axis === 1) {
      const d = bufferOf(k, s.dst), t = rowsOf(out.get(s.src)?.tiling);
      if (t && d.type.space === "reg" && d.type.shape.length === 1 && d.type.dtype === "f32" && !out.has(s.dst)) out.set(s.dst, { kind: "R", tiling: t });
    }
    if (s.kind === "map") {
      const t = rowsOf(out.get(s.dst)?.kind !== "R" ? out.get(s.dst)?.tiling : undefined);
      if (!t) return;
      for (const r of readNodes(s.expr)) {
        const b = bufferOf(k, r.buf);
        if (ownRow(r.index) && b.type.space === "reg" && b.type.shape.length === 1 && b.type.dtype === "f32" && !out.has(r.buf)) out.set(r.buf, { kind: "R", tiling: t });
      }
    }
  });
  // ... and row vectors computed from row vectors (a chain of row statistics), to a fixed point
  for (let grew = true; grew; ) {
    grew = false;
    walkStmts(k.body, (s) => {
      if (s.kind !== "map" || out.has(s.dst)) return;
      const d = bufferOf(k, s.dst);
      if (d.type.space !== "reg" || d.type.shape.length !== 1 || d.type.dtype !== "f32") return;
      const src = readNodes(s.expr).find((r) => out.get(r.buf)?.kind === "R" && ownRow(r.index));
      if (src) out.set(s.dst, { kind: "R", tiling: out.get(src.buf)!.tiling }), (grew = true);
    });
  }
  for (const [name, c] of out) if (candidateRegisters(c) > MAX_FRAG_REGISTERS) out.delete(name);
  return out;
}

/** Remove from `set` every tile some statement uses other than element-wise in its tiling. */
function prune(k: LKernel, set: Map<string, Candidate>): boolean {
  const drop = new Set<string>();
  const is2d = (c: Candidate | undefined): c is Candidate => c !== undefined && c.kind !== "R";
  walkStmts(k.body, (s) => {
    const { reads, writes } = stmtAccess(s);
    for (const name of [...reads, ...writes]) {
      const c = set.get(name);
      if (!c) continue;
      const t = c.tiling;
      switch (s.kind) {
        case "mma": {
          const impl = s.impl;
          if (impl === null || impl.kind === "fma") drop.add(name);
          else if (s.b === name) drop.add(name);
          else if (s.dst === name && (c.kind !== "F" || !sameTiling(impl.tiling, t))) drop.add(name);
          else if (s.a === name) {
            const ok = c.kind === "P" && !s.transA && impl.kind !== "fmaFrag" && fragFeedsA(t, impl.tiling.m, t.n) && sameRows(t, impl.tiling);
            if (!ok) drop.add(name);
          }
          break;
        }
        case "load":
        case "store":
          if (c.kind === "P" || s.slices.some((x) => exprReads(x.kind === "at" ? x.at : x.start).has(name))) drop.add(name);
          if (s.kind === "store" && s.mask && exprReads(s.mask).has(name)) drop.add(name);
          break;
        case "map": {
          const dc = set.get(s.dst);
          const dst = bufferOf(k, s.dst).type.shape;
          const reading = readNodes(s.expr).filter((r) => r.buf === name);
          if (s.dst === name && c.kind === "R") {
            // a row vector is computed from row vectors at [row] and shared tiles, nothing 2-D in registers
            if (readNodes(s.expr).some((r) => is2d(set.get(r.buf)))) drop.add(name);
          }
          for (const r of reading) {
            if (c.kind === "R") {
              const ok = ownRow(r.index) && dc !== undefined && sameRows(dc.tiling, t);
              if (!ok) drop.add(name);
              continue;
            }
            if (!ownElement(r.index)) drop.add(name);
            else if (dc) {
              if (dc.kind === "R" || !sameTiling(dc.tiling, t)) drop.add(name);
            } else {
              // into a shared tile of this shape, written per fragment element of one tiling
              const peers = [...exprReads(s.expr)].map((n) => set.get(n)).filter(is2d);
              if (dst.length !== 2 || dst[0] !== t.m || dst[1] !== t.n || peers.some((p) => !sameTiling(p.tiling, t))) drop.add(name);
              if (readNodes(s.expr).some((x) => set.get(x.buf)?.kind === "R")) drop.add(name);
            }
          }
          break;
        }
        case "reduce":
          if (s.src === name) {
            if (c.kind === "R") drop.add(name);
          } else if (c.kind !== "R" || s.axis !== 1) drop.add(name);
          else {
            const src = set.get(s.src);
            if (!is2d(src) || !sameRows(src.tiling, t)) drop.add(name);
          }
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
function peakRegisters(set: Map<string, Candidate>, live: Map<string, [number, number]>): { regs: number; tiles: string[] } {
  const span = (n: string): [number, number] => live.get(n) ?? [0, 0];
  let best = { regs: 0, tiles: [] as string[] };
  for (const n of set.keys()) {
    const at = span(n)[0]; // the peak is at some tile's first use
    const tiles = [...set.keys()].filter((m) => span(m)[0] <= at && at <= span(m)[1]);
    const regs = tiles.reduce((s, n) => s + candidateRegisters(set.get(n)!), 0);
    if (regs > best.regs) best = { regs, tiles };
  }
  return best;
}

export function fragmentTilings(k: LKernel): Map<string, Candidate> {
  const set = proposed(k);
  const live = liveRanges(k);
  for (;;) {
    while (prune(k, set));
    const peak = peakRegisters(set, live);
    if (peak.regs <= MAX_FRAG_REGISTERS_TOTAL) return set;
    // over budget: give up the largest tile live at the peak (ties: the last declared), then re-check the ties
    const order = (n: string): number => k.buffers.findIndex((b) => b.name === n);
    const regs = (n: string): number => candidateRegisters(set.get(n)!);
    const [victim] = peak.tiles.sort((a, b) => regs(b) - regs(a) || order(b) - order(a));
    set.delete(victim!);
  }
}

/** Reduces of frag tiles whose rows (axis 1) or columns (axis 0) several units share get a shared
 * scratch [units, rows or columns] for the cross-warp combine, one per (destination, shape),
 * named after the destination. */
function withScratch(k: LKernel): LKernel {
  const names = new Set([...k.params.map((p) => p.name), ...k.tensors.map((t) => t.name), ...k.buffers.map((b) => b.name)]);
  const made = new Map<string, string>(); // "dst:units" -> scratch name
  const extra: LBuffer[] = [];
  const body = mapStmts(k.body, (s) => {
    if (s.kind !== "reduce") return s;
    const src = bufferOf(k, s.src);
    if (src.home !== "frag") return s;
    const t = src.tiling!, units = reducePartials(t, s.axis);
    if (units === 1) return s;
    const len = s.axis === 1 ? t.m : t.n;
    const key = `${s.dst}:${units}x${len}`;
    let name = made.get(key);
    if (!name) {
      name = `${s.dst}_part`;
      for (let i = 2; names.has(name); i++) name = `${s.dst}_part${i}`;
      names.add(name);
      made.set(key, name);
      extra.push({ name, type: { shape: [units, len], dtype: "f32", space: "shared" }, home: "smem", pitch: len, swizzle: 0, copies: 1, offset: null, tiling: null });
    }
    return { ...s, scratch: name };
  });
  return { ...k, buffers: [...k.buffers, ...extra], body };
}

export function placeFragments(k: LKernel): LKernel {
  const set = fragmentTilings(k);
  const placed = {
    ...k,
    buffers: k.buffers.map((b) => (set.has(b.name) ? { ...b, home: "frag" as const, tiling: set.get(b.name)!.tiling } : b)),
  };
  return withScratch(placed);
}
