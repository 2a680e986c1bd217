// Pass: place shared tiles in the block's dynamic shared memory. Each tile is live from its first
// to its last access in program order (an access inside a loop keeps it live for the whole
// outermost loop); tiles whose live ranges do not overlap share bytes. First fit, largest first
// among tiles born at the same point, offsets 16-byte aligned (cp.async, ldmatrix).

import { bodiesOf, smemTileBytes, stmtAccess, walkStmts, type LKernel, type LStmt } from "../lir.ts";
import { SMEM_ALIGN, SWIZZLE_BASE_SLACK, swizzleAlign } from "./rules.ts";

/** Live range [first, last] of every tile, in pre-order statement positions. */
export function liveRanges(k: LKernel): Map<string, [number, number]> {
  const span = new Map<LStmt, [number, number]>();
  let pos = 0;
  const number = (body: readonly LStmt[]): void => {
    for (const s of body) {
      const start = pos++;
      for (const b of bodiesOf(s)) number(b);
      span.set(s, [start, pos - 1]);
    }
  };
  number(k.body);
  const live = new Map<string, [number, number]>();
  walkStmts(k.body, (s, loops) => {
    const { reads, writes } = stmtAccess(s);
    const outer = loops.find((l) => l.kind === "for");
    const [lo, hi] = outer ? span.get(outer)! : span.get(s)!;
    for (const n of [...reads, ...writes]) {
      const r = live.get(n);
      live.set(n, r ? [Math.min(r[0], lo), Math.max(r[1], hi)] : [lo, hi]);
    }
  });
  return live;
}

const align = (x: number): number => Math.ceil(x / SMEM_ALIGN) * SMEM_ALIGN;

export function planShared(k: LKernel): LKernel {
  const live = liveRanges(k);
  const tiles = k.buffers
    .filter((b) => b.home === "smem")
    .map((b) => ({ name: b.name, bytes: align(b.copies * smemTileBytes(b)), to: swizzleAlign(b.swizzle), range: live.get(b.name) ?? ([-1, -1] as [number, number]) }))
    .sort((a, b) => a.range[0] - b.range[0] || b.bytes - a.bytes || (a.name < b.name ? -1 : 1));
  const placed: { offset: number; bytes: number; range: [number, number] }[] = [];
  const offsets = new Map<string, number>();
  for (const t of tiles) {
    const busy = placed
      .filter((p) => p.range[0] <= t.range[1] && t.range[0] <= p.range[1])
      .sort((a, b) => a.offset - b.offset);
    const up = (x: number): number => Math.ceil(x / t.to) * t.to; // swizzled tiles start on their pattern's repeat
    let offset = 0;
    for (const p of busy) {
      if (up(offset) + t.bytes <= p.offset) break;
      offset = Math.max(offset, p.offset + p.bytes);
    }
    offset = up(offset);
    placed.push({ offset, bytes: t.bytes, range: t.range });
    offsets.set(t.name, offset);
  }
  // swizzled tiles: the block's base is aligned to 1024 bytes at run time, which may skip that much
  const slack = k.buffers.some((b) => b.home === "smem" && b.swizzle !== 0) ? SWIZZLE_BASE_SLACK : 0;
  const smemBytes = placed.reduce((m, p) => Math.max(m, p.offset + p.bytes), 0) + slack;
  return {
    ...k,
    buffers: k.buffers.map((b) => (b.home === "smem" ? { ...b, offset: offsets.get(b.name)! } : b)),
    smemBytes,
  };
}
