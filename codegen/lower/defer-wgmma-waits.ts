// Pass (sm_90a): wgmma runs asynchronously until wgmma.wait_group, so a wgmma statement need not
// wait where it ends. Its wait moves down its statement list to just before the first statement
// that needs the result or could disturb the operands in flight:
//   - one that touches the accumulator (registers: read or written), or issues another wgmma;
//   - one that writes shared bytes the operands occupy (any tile overlapping them: plan-shared
//     lets tiles with disjoint live ranges share bytes), or a register A operand; the wait then
//     goes before the last barrier ahead of that write too, since the barrier is what orders this
//     thread's reads before the other threads' write;
//   - else the list's end (a loop body's end: the next iteration starts complete), or the last
//     barrier after the mma when there is one (it may order a write beyond the list's end).
// The statements passed over run while the tensor cores work: in the attention loop, the key
// block's gate sums and their barriers under q k^T (dsl/kernels/attention.ts issues the mma first).
// The wait is followed by a register fence of the accumulator (prt::wgmma_fence_regs), so the
// compiler cannot move its reads above the wait.

import { bufferOf, regionsOverlap, smemRegion, stmtAccess, walkStmts, withBodies, type LKernel, type LMma, type LStmt } from "../lir.ts";

const isWgmma = (s: LStmt): boolean =>
  (s.kind === "mma" && s.impl?.kind === "wgmma") || (s.kind === "mmaGroup" && s.mmas.some((m) => m.impl?.kind === "wgmma"));

/** The accesses of s and of every statement nested in it. */
function deepAccess(s: LStmt): { reads: Set<string>; writes: Set<string>; wgmma: boolean } {
  const reads = new Set<string>(), writes = new Set<string>();
  let wgmma = false;
  walkStmts([s], (u) => {
    const a = stmtAccess(u);
    a.reads.forEach((x) => reads.add(x));
    a.writes.forEach((x) => writes.add(x));
    if (isWgmma(u)) wgmma = true;
  });
  return { reads, writes, wgmma };
}

/** Where in `body` the wait of the wgmma at `at` goes (an index to insert before). */
function waitPoint(k: LKernel, body: readonly LStmt[], at: number): number {
  const m = body[at] as LMma;
  const operands = [m.a, m.b].map((x) => smemRegion(k, x));
  const regA = bufferOf(k, m.a).home === "frag" ? m.a : null;
  let lastBarrier = -1;
  for (let j = at + 1; j < body.length; j++) {
    const s = body[j]!;
    if (s.kind === "barrier") {
      lastBarrier = j;
      continue;
    }
    const { reads, writes, wgmma } = deepAccess(s);
    if (wgmma || reads.has(m.dst) || writes.has(m.dst)) return j;
    const disturbs = [...writes].some((w) => w === regA || operands.some((r) => regionsOverlap(r, smemRegion(k, w))));
    if (disturbs) return lastBarrier > at ? lastBarrier : j;
  }
  // the list's end; a barrier after the mma may order it before a write further on (the loop's
  // next iteration, the statements after an if), so the wait goes before that barrier
  return lastBarrier > at ? lastBarrier : body.length;
}

export function deferWgmmaWaits(k: LKernel): LKernel {
  if (k.target !== "sm_90a") return k;
  const list = (body: readonly LStmt[]): LStmt[] => {
    const out = body.map((s): LStmt => withBodies(s, list));
    for (let i = 0; i < out.length; i++) {
      const s = out[i]!;
      if (s.kind !== "mma" || s.impl?.kind !== "wgmma" || s.impl.deferred || bufferOf(k, s.dst).home !== "frag") continue;
      const at = waitPoint(k, out, i);
      if (at === i + 1) continue; // the next statement needs it: nothing runs under the mma
      out[i] = { ...s, impl: { ...s.impl, deferred: true } };
      out.splice(at, 0, { kind: "wgmmaWait", tiles: [s.dst] });
    }
    return out;
  };
  return { ...k, body: list(k.body) };
}
