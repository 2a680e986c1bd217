// Pass: software pipelining of the loops the schedule gives `stages` > 1. An async load at the top
// of such a loop body whose tile is streamed (written only by that load, read only after it, used
// nowhere after the loop nor in a loop around it, indices free of tile reads) gets `stages` copies of its tile: a
// prologue issues the loads of the first stages-1 iterations, and iteration i issues the load of
// iteration i+stages-1 before waiting for its own (cp.async.wait_group stages-1), so the copies
// overlap the compute of the iterations before.

import { mapExprChildren, type Expr, type Slice } from "../../dsl/ir.ts";
import { bodiesOf, exprReads, stmtAccess, walkStmts, withBodies, type LKernel, type LStmt } from "../lir.ts";

type Load = Extract<LStmt, { kind: "load" }>;
type For = Extract<LStmt, { kind: "for" }>;

const i32 = (value: number): Expr => ({ op: "const", value, type: "i32" });
const isConst = (e: Expr, v: number): boolean => e.op === "const" && e.value === v;
/** a fn b, with the identities x + 0, x - 0 and x // 1 folded away (dumps stay readable). */
function bin(fn: "add" | "sub" | "idiv" | "mod" | "lt", a: Expr, b: Expr): Expr {
  if ((fn === "add" || fn === "sub") && isConst(b, 0)) return a;
  if (fn === "add" && isConst(a, 0)) return b;
  if (fn === "idiv" && isConst(b, 1)) return a;
  return { op: "binary", fn, a, b };
}

/** e with loop variable `name` replaced by `by`. */
export function substituteVar(e: Expr, name: string, by: Expr): Expr {
  if (e.op === "var") return e.name === name ? by : e;
  return mapExprChildren(e, (c) => substituteVar(c, name, by));
}

const substSlices = (ss: readonly Slice[], name: string, by: Expr): Slice[] =>
  ss.map((s) => (s.kind === "at" ? { kind: "at", at: substituteVar(s.at, name, by) } : { kind: "range", start: substituteVar(s.start, name, by), size: s.size }));

/** Whether `tile` is accessed outside `loop` where the loop's stage copies would disturb it: after
 * the loop, or anywhere when a loop encloses it (a later iteration of that loop runs the accesses
 * before it again). Accesses that precede a top-level loop (outside any loop) are fine: they see
 * copy 0, done before the prologue refills it (the barrier pass orders the two, the region being
 * the same), and the loop leaves the tile bound to some stage nobody reads again. */
function accessesOutside(k: LKernel, loop: LStmt, tile: string): boolean {
  const touches = (body: readonly LStmt[]): boolean => {
    let hit = false;
    walkStmts(body, (u) => {
      const { reads, writes } = stmtAccess(u);
      if (reads.has(tile) || writes.has(tile)) hit = true;
    });
    return hit;
  };
  const holdsLoop = (s: LStmt): boolean => {
    let hit = false;
    walkStmts([s], (u) => { if (u === loop) hit = true; });
    return hit;
  };
  let seen = false, before = false, after = false, enclosed = false;
  const visit = (body: readonly LStmt[], inLoop: boolean): void => {
    for (const s of body) {
      if (s === loop) [seen, enclosed] = [true, inLoop];
      else if ((s.kind === "for" || s.kind === "if") && holdsLoop(s)) {
        if (touches([withBodies(s, () => [])])) after = true; // its bounds or condition: conservatively out
        for (const b of bodiesOf(s)) visit(b, inLoop || s.kind === "for");
      } else if (touches([s])) {
        if (seen) after = true;
        else before = true;
      }
    }
  };
  visit(k.body, false);
  return after || (enclosed && before);
}

/** The loads of a loop body that can be streamed. */
function streamed(k: LKernel, loop: For, orig: LStmt): Load[] {
  if (exprReads(loop.start).size || exprReads(loop.end).size) return [];
  const out: Load[] = [];
  loop.body.forEach((s, i) => {
    if (s.kind !== "load" || s.mode !== "async" || s.stage !== null) return;
    if (s.slices.some((x) => exprReads(x.kind === "at" ? x.at : x.start).size)) return;
    if (accessesOutside(k, orig, s.dst)) return;
    let ok = true;
    // no access before it in the body, and no other write anywhere in the body
    loop.body.forEach((t, j) => {
      walkStmts([t], (u) => {
        if (u === s) return;
        const { reads, writes } = stmtAccess(u);
        if (writes.has(s.dst) || (j < i && reads.has(s.dst))) ok = false;
      });
    });
    if (ok) out.push(s);
  });
  return out;
}

/** Drop commit/wait pairs that no longer close any async load. */
function dropEmptyGroups(body: readonly LStmt[]): LStmt[] {
  const out: LStmt[] = [];
  let issued = false;
  for (let i = 0; i < body.length; i++) {
    const s = body[i]!;
    if (s.kind === "load" && s.mode === "async") issued = true;
    if (s.kind === "asyncCommit") {
      if (!issued) {
        if (body[i + 1]?.kind === "asyncWait") i++;
        continue;
      }
      issued = false;
    }
    out.push(s);
  }
  return out;
}

function pipelineLoop(k: LKernel, loop: For, orig: LStmt, copies: Map<string, number>): LStmt[] {
  const S = loop.stages;
  const loads = S > 1 ? streamed(k, loop, orig) : [];
  if (loads.length === 0) return [loop];
  for (const l of loads) copies.set(l.dst, S);
  const v: Expr = { op: "var", name: loop.var };
  const issue = (at: Expr, stage: Expr): LStmt[] =>
    loads.map((l) => ({ ...l, slices: substSlices(l.slices, loop.var, at), stage }));
  const prologue: LStmt[] = [];
  for (let j = 0; j < S - 1; j++) {
    const at = bin("add", loop.start, i32(j * loop.step));
    prologue.push({ kind: "if", cond: bin("lt", at, loop.end), body: issue(at, i32(j)) }, { kind: "asyncCommit" });
  }
  const it = bin("idiv", bin("sub", v, loop.start), i32(loop.step));
  const ahead = bin("add", v, i32((S - 1) * loop.step));
  const head: LStmt[] = [
    { kind: "if", cond: bin("lt", ahead, loop.end), body: issue(ahead, bin("mod", bin("add", it, i32(S - 1)), i32(S))) },
    { kind: "asyncCommit" },
    { kind: "asyncWait", pending: S - 1 },
    ...loads.map((l): LStmt => ({ kind: "bindStage", buf: l.dst, stage: bin("mod", it, i32(S)) })),
  ];
  const rest = dropEmptyGroups(loop.body.filter((s) => !loads.includes(s as Load)));
  return [...prologue, { ...loop, body: [...head, ...rest] }, { kind: "asyncWait", pending: 0 }];
}

export function pipelineLoops(k: LKernel): LKernel {
  const copies = new Map<string, number>();
  const list = (body: readonly LStmt[]): LStmt[] =>
    body.flatMap((s) => {
      if (s.kind === "if") return [withBodies(s, list)];
      if (s.kind !== "for") return [s];
      const inner: For = { ...s, body: list(s.body) };
      return pipelineLoop(k, inner, s, copies);
    });
  const body = list(k.body);
  return { ...k, body, buffers: k.buffers.map((b) => (copies.has(b.name) ? { ...b, copies: copies.get(b.name)! } : b)) };
}
