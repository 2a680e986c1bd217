// The LIR validator, run between passes: the DSL's structural rules (by validating the DSL kernel the
// LIR still describes) plus every rule of the lowering choices made so far.

import type { BufferDecl, Kernel, Stmt } from "../dsl/ir.ts";
import { validateKernel } from "../dsl/validate.ts";
import { bufferOf, isPackedFrag, isRowVector, mapFragReads, readNodes, sameTiling, smemTileBytes, reducePartials, stmtAccess, walkStmts, type LKernel, type LStmt } from "./lir.ts";
import { groupPlan } from "./lower/fuse-operands.ts";
import { sameRows } from "./lower/place-fragments.ts";
import { SMEM_ALIGN, swizzleAlign, swizzleFor, whyNotAsync, whyNotTensorCores, whyNotWgmma, mmaShape } from "./lower/rules.ts";

/** The DSL kernel an LIR kernel computes (lowering-only statements dropped). */
export function toDsl(k: LKernel): Kernel {
  const stmts = (body: readonly LStmt[]): Stmt[] =>
    body.flatMap((s): Stmt[] => {
      switch (s.kind) {
        case "load":
          return [{ kind: "load", dst: s.dst, tensor: s.tensor, slices: s.slices }];
        case "mma": {
          const { impl: _impl, ...rest } = s;
          return [rest];
        }
        case "mmaGroup":
          return [...s.operands, ...s.mmas.map(({ impl: _impl, ...rest }): Stmt => rest)];
        case "reduce": {
          const { scratch: _scratch, ...rest } = s;
          return [rest];
        }
        case "for":
          return [{ ...s, body: stmts(s.body) }];
        case "if": {
          const { orelse, ...rest } = s;
          return [{ ...rest, body: stmts(s.body), ...(orelse ? { orelse: stmts(orelse) } : {}) }];
        }
        case "asyncCommit":
        case "asyncWait":
        case "wgmmaWait":
        case "barrier":
        case "bindStage":
          return [];
        default:
          return [s];
      }
    });
  const buffers: BufferDecl[] = k.buffers.map((b) => ({ name: b.name, type: b.type }));
  return { name: k.name, doc: k.doc, params: k.params, tensors: k.tensors, buffers, grid: k.grid, numWarps: k.numWarps, body: stmts(k.body) };
}

export function validateLir(k: LKernel): string[] {
  const errs = validateKernel(toDsl(k));
  const where = (m: string): void => void errs.push(`${k.name}: ${m}`);
  if (errs.length) return errs;

  for (const b of k.buffers) {
    const cols = b.type.shape[1] ?? b.type.shape[0]!;
    if (b.home === "inline") {
      if (b.offset !== null || b.tiling !== null) where(`inline tile ${b.name} has an offset or a tiling`);
    } else if (b.home === "frag") {
      if (!b.tiling) where(`frag tile ${b.name} has no warp tiling`);
      else if (isRowVector(b)) {
        if (b.tiling.m !== b.type.shape[0] || b.tiling.n !== 8 * b.tiling.nt) where(`row vector ${b.name} [${b.type.shape}] is not the rows of a row-block tiling (${b.tiling.m}x${b.tiling.n})`);
        if (b.type.dtype !== "f32") where(`row vector ${b.name} must be f32`);
      } else if (b.type.shape.length !== 2 || b.tiling.m !== b.type.shape[0] || b.tiling.n !== b.type.shape[1])
        where(`frag tile ${b.name} [${b.type.shape}] does not match its tiling ${b.tiling.m}x${b.tiling.n}`);
      if (b.tiling && b.tiling.warps !== k.numWarps) where(`frag tile ${b.name}: tiling over ${b.tiling.warps} warps, kernel has ${k.numWarps}`);
      if (b.swizzle !== 0) where(`frag tile ${b.name} has a swizzle`);
    } else {
      if (b.pitch < cols) where(`tile ${b.name}: pitch ${b.pitch} < ${cols} columns`);
      if (b.swizzle !== 0) {
        if (b.home !== "smem" || swizzleFor(b) === null || (b.swizzle !== 128 && b.swizzle !== cols * 2) || (b.swizzle === 128 && cols % 64 !== 0))
          where(`tile ${b.name} [${b.type.shape}] ${b.type.dtype}: swizzle ${b.swizzle} does not fit its rows`);
        if (b.offset !== null && b.offset % swizzleAlign(b.swizzle) !== 0) where(`swizzled tile ${b.name}: offset ${b.offset} not ${swizzleAlign(b.swizzle)}-byte aligned`);
      }
      if (b.copies < 1) where(`tile ${b.name}: ${b.copies} copies`);
      if (b.offset !== null && b.offset % SMEM_ALIGN !== 0) where(`tile ${b.name}: offset ${b.offset} not ${SMEM_ALIGN}-byte aligned`);
      if (b.offset !== null && k.smemBytes !== null && b.offset + b.copies * smemTileBytes(b) > k.smemBytes)
        where(`tile ${b.name} ends past the block's ${k.smemBytes} bytes of shared memory`);
    }
  }
  if (k.smemBytes !== null && k.buffers.some((b) => b.home === "smem" && b.offset === null))
    where(`shared memory is planned but some tiles have no offset`);

  const frag = (n: string): boolean => bufferOf(k, n).home === "frag";
  const inline = (n: string): boolean => bufferOf(k, n).home === "inline";
  const computedBy = new Map<string, number>();
  walkStmts(k.body, (s) => {
    if (s.kind === "mmaGroup") for (const m of s.operands) computedBy.set(m.dst, (computedBy.get(m.dst) ?? 0) + 1);
  });
  for (const b of k.buffers)
    if (b.home === "inline" && computedBy.get(b.name) !== 1) where(`inline tile ${b.name} is computed by ${computedBy.get(b.name) ?? 0} mma groups, expected 1`);
  walkStmts(k.body, (s) => {
    if (s.kind !== "mmaGroup") for (const n of [...stmtAccess(s).reads, ...stmtAccess(s).writes]) if (inline(n)) where(`inline tile ${n} is used outside its mma group`);
    switch (s.kind) {
      case "mmaGroup": {
        const first = s.mmas[0];
        if (!first || s.operands.length === 0) {
          where(`mma group without ${first ? "computed operands" : "mmas"}`);
          break;
        }
        const names = new Set(s.operands.map((m) => m.dst));
        for (const m of s.operands) {
          const b = bufferOf(k, m.dst);
          if (b.home !== "inline") where(`mma group: computed tile ${m.dst} is not inline`);
          const T = bufferOf(k, first.a).type.dtype;
          if (b.type.dtype === "f32" || b.type.dtype !== T) where(`mma group: computed tile ${m.dst} is ${b.type.dtype}, expected the mma's ${T} (f16/bf16)`);
          if (mapFragReads(k, m).length) where(`mma group: ${m.dst} reads frag tiles`);
          if (!s.mmas.some((x) => x.a === m.dst || x.b === m.dst)) where(`mma group: ${m.dst} feeds none of its mmas`);
        }
        const sides = new Set<string>();
        s.mmas.forEach((x, i) => {
          if (x.impl?.kind !== "tc") where(`mma group into ${x.dst}: every mma must run on tensor cores`);
          else if (first.impl?.kind === "tc" && !sameTiling(x.impl.tiling, first.impl.tiling)) where(`mma group into ${x.dst}: tilings differ`);
          if (x.dst !== first.dst) where(`mma group: destinations ${first.dst} and ${x.dst} differ`);
          if (i > 0 && !x.accumulate) where(`mma group into ${x.dst}: mma ${i + 1} overwrites the accumulator`);
          if (mmaShape(k, x).k !== mmaShape(k, first).k) where(`mma group into ${x.dst}: k differs`);
          if (names.has(x.a) && names.has(x.b)) where(`mma group into ${x.dst}: both operands computed`);
          if (names.has(x.a)) sides.add(`A${x.transA ? "^T" : ""}`);
          if (names.has(x.b)) sides.add(`B${x.transB ? "^T" : ""}`);
          for (const o of [x.a, x.b]) if (!names.has(o) && bufferOf(k, o).home !== "smem" && !(o === x.a && isPackedFrag(bufferOf(k, o)))) where(`mma group into ${x.dst}: operand ${o} is neither computed nor in shared memory nor a packed frag A`);
          const why = whyNotTensorCores(k, x);
          if (why) where(`mma group into ${x.dst}: ${why}`);
        });
        if (sides.size > 1) where(`mma group into ${first.dst}: computed operands on several sides (${[...sides].join(", ")})`);
        for (const src of groupPlan(k, s).fragmentSources) {
          const b = bufferOf(k, src);
          if ((b.pitch * 2) % 16 !== 0) where(`mma group into ${first.dst}: fragment source ${src} rows are not 16-byte aligned (pitch ${b.pitch})`);
        }
        break;
      }
      case "mma": {
        if (s.dst === s.a || s.dst === s.b) where(`mma ${s.dst}: destination is also an operand`);
        if ((frag(s.a) && !isPackedFrag(bufferOf(k, s.a))) || frag(s.b) || inline(s.a) || inline(s.b)) where(`mma ${s.dst}: operands must be in shared memory (or A a packed frag tile)`);
        if (frag(s.a) && s.impl !== null && s.impl.kind !== "tc" && s.impl.kind !== "wgmma") where(`mma ${s.dst}: a packed frag A needs tensor cores`);
        if (s.impl === null) {
          if (frag(s.dst)) where(`mma ${s.dst}: frag destination without an implementation`);
          break;
        }
        const { m, n } = mmaShape(k, s);
        if (s.impl.kind === "tc") {
          const why = whyNotTensorCores(k, s);
          if (why) where(`mma ${s.dst} on tensor cores: ${why}`);
        }
        if (s.impl.kind === "wgmma") {
          const why = whyNotWgmma(k, s);
          if (why) where(`mma ${s.dst} as wgmma: ${why}`);
          const t = s.impl.tiling;
          if (t.nt * 8 !== t.n) where(`mma ${s.dst} as wgmma: tiling ${t.m}x${t.n} is not a row-block tiling`);
          if (k.buffers.some((b) => b.home === "smem" && (b.name === s.a || b.name === s.b) && b.swizzle === 0 && k.smemBytes !== null))
            where(`mma ${s.dst} as wgmma: a shared operand has no swizzled layout`);
        }
        if (s.impl.kind !== "fma") {
          const t = s.impl.tiling;
          if (t.m !== m || t.n !== n || t.warps !== k.numWarps) where(`mma ${s.dst}: tiling does not cover ${m}x${n} over ${k.numWarps} warps`);
          const d = bufferOf(k, s.dst);
          if (d.home === "frag" && d.tiling && !sameTiling(d.tiling, t)) where(`mma ${s.dst}: tiling differs from the fragment's`);
        } else if (frag(s.dst)) where(`mma ${s.dst}: plain FMA cannot write a frag tile`);
        break;
      }
      case "load":
        if (s.mode === "async") {
          const why = whyNotAsync(k, s);
          if (why) where(`async load of ${s.tensor} into ${s.dst}: ${why}`);
        }
        if (s.stage !== null && bufferOf(k, s.dst).copies < 2) where(`load into stage of ${s.dst}, which has one copy`);
        break;
      case "map": {
        const d = bufferOf(k, s.dst);
        const fr = mapFragReads(k, s).filter((n) => !isRowVector(bufferOf(k, n)));
        // a shared destination of the frag tiles' shape is written per fragment element, in the first one's tiling
        const dt = d.tiling ?? (fr.length ? bufferOf(k, fr[0]!).tiling : null);
        if (d.home === "smem" && mapFragReads(k, s).some((n) => isRowVector(bufferOf(k, n)))) where(`map into shared ${s.dst} reads a row vector`);
        if (d.home === "smem" && dt && (d.type.shape.length !== 2 || d.type.shape[0] !== dt.m || d.type.shape[1] !== dt.n))
          where(`map into shared ${s.dst} [${d.type.shape}] reads frag tiles of another shape`);
        for (const r of readNodes(s.expr)) {
          if (!frag(r.buf)) continue;
          const rb = bufferOf(k, r.buf);
          if (isRowVector(rb)) {
            if (!(r.index.length === 1 && r.index[0]!.op === "row")) where(`map into ${s.dst} reads row vector ${r.buf} other than at [row]`);
            else if (!dt || !sameRows(dt, rb.tiling!)) where(`map into ${s.dst} reads row vector ${r.buf} of other rows`);
            continue;
          }
          const own = r.index.length === 2 && r.index[0]!.op === "row" && r.index[1]!.op === "col";
          if (!own) where(`map into ${s.dst} reads frag tile ${r.buf} other than at [row, col]`);
          else if (!dt || !sameTiling(dt, rb.tiling!)) where(`map into ${s.dst} reads frag tile ${r.buf} of another tiling`);
          else if (isRowVector(d)) where(`map into row vector ${s.dst} reads 2-D frag tile ${r.buf}`);
        }
        break;
      }
      case "reduce": {
        const src = bufferOf(k, s.src);
        const dst = bufferOf(k, s.dst);
        if (frag(s.dst) && !(isRowVector(dst) && s.axis === 1 && src.home === "frag" && sameRows(src.tiling!, dst.tiling!)))
          where(`reduce ${s.src} -> ${s.dst}: the destination must be in shared memory or a row vector of the source's rows`);
        const units = src.home === "frag" && src.tiling ? reducePartials(src.tiling, s.axis) : 1;
        if (units === 1) {
          if (s.scratch !== null) where(`reduce ${s.src} -> ${s.dst}: scratch ${s.scratch} without partials to combine`);
        } else if (s.scratch === null) where(`reduce ${s.src} -> ${s.dst}: ${units} units share each row, no scratch to combine them in`);
        else {
          const x = bufferOf(k, s.scratch);
          const len = src.type.shape[s.axis === 1 ? 0 : 1];
          if (x.home !== "smem" || x.type.dtype !== "f32" || x.type.shape.length !== 2 || x.type.shape[0] !== units || x.type.shape[1] !== len)
            where(`reduce ${s.src} -> ${s.dst}: scratch ${s.scratch} must be a shared f32 [${units}, ${len}]`);
        }
        break;
      }
      case "scan":
        if (frag(s.src) || frag(s.dst)) where(`${s.kind} ${s.src} -> ${s.dst}: tiles must be in shared memory`);
        break;
      case "expand":
        if (frag(s.src) || frag(s.dst)) where(`expand ${s.src} -> ${s.dst}: tiles must be in shared memory`);
        break;
      case "expandGrad":
        if (frag(s.x) || frag(s.dphi) || frag(s.dst)) where(`expandGrad into ${s.dst}: tiles must be in shared memory`);
        if (s.dst === s.x || s.dst === s.dphi) where(`expandGrad into ${s.dst}: destination is also an input`);
        break;
      case "asyncWait":
        if (!Number.isInteger(s.pending) || s.pending < 0) where(`async.wait ${s.pending}: expected a count >= 0`);
        break;
      case "bindStage":
        if (bufferOf(k, s.buf).copies < 2) where(`bind ${s.buf}: the tile has one copy`);
        break;
      case "if":
        // the block votes over the shape with a strided element loop (render-cuda): shared tiles only
        if (s.cond.op === "any") for (const n of stmtAccess(s).reads) if (frag(n)) where(`if any: reads ${n}, a frag tile (shared tiles only)`);
        break;
      case "wgmmaWait":
        if (k.target !== "sm_90a") where(`wgmma.wait on ${k.target}`);
        for (const t of s.tiles) if (bufferOf(k, t).home !== "frag") where(`wgmma.wait (${t}): the accumulator is not a frag tile`);
        break;
      default:
        break;
    }
  });
  return errs;
}

export function assertValidLir(k: LKernel, after: string): LKernel {
  const errs = validateLir(k);
  if (errs.length) throw new Error(`invalid LIR after ${after}:\n  ${errs.join("\n  ")}`);
  return k;
}
