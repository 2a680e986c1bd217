// The validator: every structural rule of the IR, checked between stages. It returns the list of
// problems (empty = valid) so a pass can report them all at once; `assertValid` throws them.

import { exprChildren, type BufferDecl, type Expr, type ExprType, type Kernel, type Slice, type Stmt } from "./ir.ts";

interface Scope {
  readonly kernel: Kernel;
  readonly buffers: Map<string, BufferDecl>;
  readonly vars: Set<string>;
  /** Rank of the tile a `map` writes, when inside one (row/col/read allowed). */
  readonly mapRank: number | null;
}

export function validateKernel(k: Kernel): string[] {
  const errs: string[] = [];
  const where = (s: string): void => void errs.push(`${k.name}: ${s}`);
  const names = new Set<string>();
  for (const n of [...k.params.map((p) => p.name), ...k.tensors.map((t) => t.name), ...k.buffers.map((b) => b.name)]) {
    if (names.has(n)) where(`name '${n}' is declared twice`);
    names.add(n);
  }
  if (!Number.isInteger(k.numWarps) || k.numWarps < 1 || k.numWarps > 32) where(`numWarps must be 1..32, got ${k.numWarps}`);
  const buffers = new Map(k.buffers.map((b) => [b.name, b]));
  for (const b of k.buffers) {
    const sh = b.type.shape;
    if (sh.length < 1 || sh.length > 2 || sh.some((n) => !Number.isInteger(n) || n < 1))
      where(`tile ${b.name} has shape [${sh}], expected 1 or 2 positive integer dims`);
  }
  const top: Scope = { kernel: k, buffers, vars: new Set(), mapRank: null };
  const intExpr = (e: Expr, s: Scope, what: string): void => {
    const t = typeOf(e, s, where);
    if (t !== null && t !== "i32") where(`${what} must be i32, got ${t}`);
  };
  for (const t of k.tensors) t.dims.forEach((d, i) => intExpr(d, top, `dim ${i} of tensor ${t.name}`));
  k.grid.forEach((g, i) => intExpr(g, top, `grid axis ${i}`));
  // dims and the grid are evaluated on the host, before any table is read
  for (const t of k.tensors) if (t.dims.some(fetches)) where(`dims of tensor ${t.name} read a table (fetch): they are host values`);
  if (k.grid.some(fetches)) where(`the grid reads a table (fetch): it is a host value`);

  const tile = (name: string, what: string): BufferDecl | null => {
    const b = buffers.get(name);
    if (!b) where(`${what}: no tile named '${name}'`);
    return b ?? null;
  };
  const shapeEq = (a: readonly number[], b: readonly number[]): boolean =>
    a.length === b.length && a.every((x, i) => x === b[i]);

  const checkSlices = (stmt: string, tensorName: string, slices: readonly Slice[], t: BufferDecl | null, s: Scope): void => {
    const ten = k.tensors.find((x) => x.name === tensorName);
    if (!ten) return where(`${stmt}: no tensor named '${tensorName}'`);
    if (ten.dtype === "i32") where(`${stmt} ${tensorName}: an i32 table is read by fetch only`);
    if (slices.length !== ten.dims.length)
      where(`${stmt} ${tensorName}: ${slices.length} indices for a tensor of rank ${ten.dims.length}`);
    const sizes: number[] = [];
    slices.forEach((sl, i) => {
      if (sl.kind === "at") intExpr(sl.at, s, `${stmt} ${tensorName} index ${i}`);
      else {
        intExpr(sl.start, s, `${stmt} ${tensorName} range start ${i}`);
        sizes.push(sl.size);
      }
    });
    if (t && !shapeEq(sizes, t.type.shape))
      where(`${stmt} ${tensorName}: ranges of sizes [${sizes}] do not match tile ${t.name} of shape [${t.type.shape}]`);
  };

  const walk = (stmts: readonly Stmt[], s: Scope): void => {
    for (const st of stmts) {
      switch (st.kind) {
        case "load":
          checkSlices("load", st.tensor, st.slices, tile(st.dst, "load"), s);
          break;
        case "store": {
          const ten = k.tensors.find((x) => x.name === st.tensor);
          if (ten && ten.role !== "out") where(`store to input tensor ${st.tensor}`);
          const src = tile(st.src, "store");
          checkSlices("store", st.tensor, st.slices, src, s);
          if (st.mask && src) {
            if (readsMemory(st.mask)) where(`store to ${st.tensor}: the mask may not read tiles`);
            else if (typeOf(st.mask, { ...s, mapRank: src.type.shape.length }, where) !== "bool") where(`store to ${st.tensor}: the mask must be bool`);
          }
          break;
        }
        case "map": {
          const d = tile(st.dst, "map");
          if (d) {
            const t = typeOf(st.expr, { ...s, mapRank: d.type.shape.length }, where);
            if (t === "bool") where(`map into ${st.dst}: expression is bool, expected a number`);
          }
          break;
        }
        case "reduce":
        case "scan": {
          const d = tile(st.dst, st.kind), x = tile(st.src, st.kind);
          if (d && x) {
            if (st.kind === "scan" && !shapeEq(d.type.shape, x.type.shape))
              where(`scan ${st.src} -> ${st.dst}: shapes differ`);
            if (st.kind === "reduce") {
              const want = x.type.shape.length === 1 ? [1] : [x.type.shape[st.axis === 1 ? 0 : 1]!];
              if (!shapeEq(d.type.shape, want)) where(`reduce ${st.src} axis ${st.axis}: dst ${st.dst} has shape [${d.type.shape}], expected [${want}]`);
            }
            if (st.axis >= x.type.shape.length) where(`${st.kind} of ${st.src}: axis ${st.axis} out of range`);
          }
          break;
        }
        case "mma": {
          const d = tile(st.dst, "mma"), a = tile(st.a, "mma"), b = tile(st.b, "mma");
          if (d && a && b) {
            if (a.type.shape.length !== 2 || b.type.shape.length !== 2 || d.type.shape.length !== 2) {
              where(`mma ${st.dst}: operands must be 2-D tiles`);
              break;
            }
            const [m, ka] = st.transA ? [a.type.shape[1]!, a.type.shape[0]!] : [a.type.shape[0]!, a.type.shape[1]!];
            const [kb, n] = st.transB ? [b.type.shape[1]!, b.type.shape[0]!] : [b.type.shape[0]!, b.type.shape[1]!];
            if (ka !== kb) where(`mma ${st.dst}: inner dims differ (${st.a} gives ${ka}, ${st.b} gives ${kb})`);
            if (!shapeEq(d.type.shape, [m, n])) where(`mma ${st.dst}: dst shape [${d.type.shape}], expected [${m},${n}]`);
            if (d.type.dtype !== "f32") where(`mma ${st.dst}: accumulator must be f32, got ${d.type.dtype}`);
            if (a.type.dtype !== b.type.dtype) where(`mma ${st.dst}: operand dtypes differ (${a.type.dtype} vs ${b.type.dtype})`);
          }
          break;
        }
        case "expand":
        case "expandGrad": {
          intExpr(st.offset, s, `${st.kind} offset`);
          if (!Number.isInteger(st.deg) || st.deg < 1) where(`${st.kind}: deg must be a positive integer, got ${st.deg}`);
          if (st.kind === "expand") {
            const d = tile(st.dst, "expand"), x = tile(st.src, "expand");
            if (d && x && (d.type.shape.length !== 2 || x.type.shape.length !== 2 || d.type.shape[0] !== x.type.shape[0]))
              where(`expand ${st.src} -> ${st.dst}: both must be 2-D with the same number of rows`);
          } else {
            const d = tile(st.dst, "expandGrad"), x = tile(st.x, "expandGrad"), g = tile(st.dphi, "expandGrad");
            if (d && x && g) {
              if (!shapeEq(d.type.shape, x.type.shape)) where(`expandGrad: dst ${st.dst} and x ${st.x} shapes differ`);
              if (g.type.shape.length !== 2 || g.type.shape[0] !== x.type.shape[0])
                where(`expandGrad: dphi ${st.dphi} must be 2-D with the rows of ${st.x}`);
            }
          }
          break;
        }
        case "for": {
          intExpr(st.start, s, "loop start");
          intExpr(st.end, s, "loop end");
          if (!Number.isInteger(st.step) || st.step < 1) where(`loop ${st.var}: step must be a positive integer`);
          if (!Number.isInteger(st.stages) || st.stages < 1) where(`loop ${st.var}: stages must be >= 1`);
          if (s.vars.has(st.var)) where(`loop variable ${st.var} shadows another`);
          walk(st.body, { ...s, vars: new Set([...s.vars, st.var]) });
          break;
        }
        case "if": {
          const t = st.cond.op === "any" ? "bool" : typeOf(st.cond, s, where);
          if (t !== null && t !== "bool") where(`if: condition must be bool, got ${t}`);
          // program-uniform: no tile reads, row or col, except inside an `any` that is the whole condition
          if (st.cond.op === "any") {
            const pt = typeOf(st.cond.pred, { ...s, mapRank: st.cond.shape.length }, where);
            if (pt !== null && pt !== "bool") where(`if any: the predicate must be bool, got ${pt}`);
            if (st.cond.shape.length < 1 || st.cond.shape.length > 2 || st.cond.shape.some((n) => !Number.isInteger(n) || n < 1))
              where(`if any: shape [${st.cond.shape}], expected 1 or 2 positive integer dims`);
          } else if (readsTiles(st.cond)) where(`if: condition must be program-uniform (no tile reads, row or col)`);
          walk(st.body, s);
          if (st.orelse) walk(st.orelse, s);
          break;
        }
      }
    }
  };
  walk(k.body, top);
  return errs;
}


/** Whether some node of e satisfies `at` (an `any`'s predicate is not entered: the vote is uniform). */
function someNode(e: Expr, at: (x: Expr) => boolean): boolean {
  return at(e) || (e.op !== "any" && exprChildren(e).some((c) => someNode(c, at)));
}

/** Whether e depends on the element (a tile read, row or col): not program-uniform. */
const readsTiles = (e: Expr): boolean => someNode(e, (x) => x.op === "read" || x.op === "row" || x.op === "col");
/** Whether e reads a table element. */
const fetches = (e: Expr): boolean => someNode(e, (x) => x.op === "fetch");
/** Whether e reads a tile element (row and col are fine). */
const readsMemory = (e: Expr): boolean => someNode(e, (x) => x.op === "read");

/** The static type of an expression, reporting misuse; null when an error made it unknown. */
export function typeOf(e: Expr, s: Scope, err: (m: string) => void): ExprType | null {
  switch (e.op) {
    case "const":
      return e.type;
    case "param": {
      const p = s.kernel.params.find((x) => x.name === e.name);
      if (!p) err(`no param named '${e.name}'`);
      return p ? p.type : null;
    }
    case "pid":
      return "i32";
    case "var":
      if (!s.vars.has(e.name)) err(`loop variable ${e.name} used outside its loop`);
      return "i32";
    case "row":
      if (s.mapRank === null) err(`'row' used outside a map`);
      return "i32";
    case "col":
      if (s.mapRank === null) err(`'col' used outside a map`);
      else if (s.mapRank < 2) err(`'col' used in a map over a 1-D tile`);
      return "i32";
    case "read": {
      const b = s.buffers.get(e.buf);
      if (!b) err(`read of unknown tile '${e.buf}'`);
      else if (b.type.shape.length !== e.index.length) err(`read of ${e.buf}: ${e.index.length} indices for rank ${b.type.shape.length}`);
      for (const i of e.index) {
        const t = typeOf(i, s, err);
        if (t !== null && t !== "i32") err(`read of ${e.buf}: index must be i32, got ${t}`);
      }
      return "f32";
    }
    case "fetch": {
      const ten = s.kernel.tensors.find((x) => x.name === e.tensor);
      if (!ten) err(`fetch: no tensor named '${e.tensor}'`);
      else if (ten.dtype !== "i32" || ten.role !== "in" || ten.dims.length !== 1)
        err(`fetch from ${e.tensor}: expected a 1-D i32 input table, got ${ten.role} ${ten.dtype} of rank ${ten.dims.length}`);
      const t = typeOf(e.index, s, err);
      if (t !== null && t !== "i32") err(`fetch from ${e.tensor}: index must be i32, got ${t}`);
      if (readsTiles(e.index)) err(`fetch from ${e.tensor}: the index must be program-uniform (no tile reads, row or col)`);
      return "i32";
    }
    case "unary": {
      const t = typeOf(e.a, s, err);
      if (e.fn === "not") {
        if (t !== null && t !== "bool") err(`not: operand must be bool`);
        return "bool";
      }
      if (t === "bool") err(`${e.fn}: operand is bool`);
      if (e.fn === "finite") return "bool";
      return e.fn === "neg" || e.fn === "abs" ? t : "f32";
    }
    case "pow":
      return typeOf(e.a, s, err);
    case "cast":
      typeOf(e.a, s, err);
      return e.to;
    case "any":
      // its predicate is typed by the `if` that holds it (the only place an `any` may be)
      err(`any: only as the whole condition of an if`);
      return "bool";
    case "select": {
      const c = typeOf(e.cond, s, err);
      if (c !== null && c !== "bool") err(`select: condition must be bool, got ${c}`);
      const a = typeOf(e.a, s, err), b = typeOf(e.b, s, err);
      if (a !== null && b !== null && a !== b) err(`select: branches differ (${a} vs ${b})`);
      return a;
    }
    case "binary": {
      const a = typeOf(e.a, s, err), b = typeOf(e.b, s, err);
      if (a === null || b === null) return null;
      if (e.fn === "and" || e.fn === "or") {
        if (a !== "bool" || b !== "bool") err(`${e.fn}: operands must be bool`);
        return "bool";
      }
      if (a !== b) err(`${e.fn}: operand types differ (${a} vs ${b})`);
      if (a === "bool") err(`${e.fn}: operands are bool`);
      if ((e.fn === "idiv" || e.fn === "mod") && a !== "i32") err(`${e.fn}: operands must be i32`);
      if (e.fn === "div" && a !== "f32") err(`div: operands must be f32 (use idiv for integers)`);
      return ["lt", "le", "gt", "ge", "eq", "ne"].includes(e.fn) ? "bool" : a;
    }
  }
}

export function assertValid(k: Kernel): Kernel {
  const errs = validateKernel(k);
  if (errs.length) throw new Error(`invalid kernel IR:\n  ${errs.join("\n  ")}`);
  return k;
}
