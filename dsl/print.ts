// A readable text form of the IR, for dumps (`gen --dump-ir`), snapshots and error messages.

import type { Expr, Kernel, Slice, Stmt } from "./ir.ts";

const INFIX: Record<string, string> = {
  add: "+", sub: "-", mul: "*", div: "/", idiv: "//", mod: "%",
  lt: "<", le: "<=", gt: ">", ge: ">=", eq: "==", ne: "!=", and: "&&", or: "||",
};

export function printExpr(e: Expr): string {
  switch (e.op) {
    case "const":
      return e.type === "bool" ? String(e.value !== 0) : e.type === "f32" && Number.isInteger(e.value) ? `${e.value}.0` : String(e.value);
    case "param":
      return `$${e.name}`;
    case "pid":
      return `pid.${"xyz"[e.axis]}`;
    case "var":
      return e.name;
    case "row":
      return "row";
    case "col":
      return "col";
    case "read":
      return `${e.buf}[${e.index.map(printExpr).join(", ")}]`;
    case "fetch":
      return `${e.tensor}@[${printExpr(e.index)}]`;
    case "unary":
      return e.fn === "neg" ? `-(${printExpr(e.a)})` : e.fn === "not" ? `!(${printExpr(e.a)})` : `${e.fn}(${printExpr(e.a)})`;
    case "binary":
      return INFIX[e.fn] ? `(${printExpr(e.a)} ${INFIX[e.fn]} ${printExpr(e.b)})` : `${e.fn}(${printExpr(e.a)}, ${printExpr(e.b)})`;
    case "pow":
      return `pow(${printExpr(e.a)}, ${e.n})`;
    case "select":
      return `select(${printExpr(e.cond)}, ${printExpr(e.a)}, ${printExpr(e.b)})`;
    case "cast":
      return `${e.to}(${printExpr(e.a)})`;
    case "any":
      return `any[${e.shape.join(", ")}](${printExpr(e.pred)})`;
  }
}

function printSlices(ss: readonly Slice[]): string {
  return ss.map((s) => (s.kind === "at" ? printExpr(s.at) : `${printExpr(s.start)}:+${s.size}`)).join(", ");
}

function printStmt(s: Stmt, ind: string): string[] {
  switch (s.kind) {
    case "load":
      return [`${ind}${s.dst} = load ${s.tensor}[${printSlices(s.slices)}]`];
    case "store":
      return [`${ind}store ${s.tensor}[${printSlices(s.slices)}] = ${s.src}${s.mask ? ` where ${printExpr(s.mask)}` : ""}`];
    case "map":
      return [`${ind}${s.dst}[row, col] = ${printExpr(s.expr)}`];
    case "reduce":
      return [`${ind}${s.dst} = reduce_${s.fn}(${s.src}, axis=${s.axis})`];
    case "scan":
      return [`${ind}${s.dst} = cumsum(${s.src}, axis=${s.axis}${s.reverse ? ", reverse" : ""})`];
    case "mma":
      return [`${ind}${s.dst} ${s.accumulate ? "+=" : "="} mma(${s.a}${s.transA ? "^T" : ""}, ${s.b}${s.transB ? "^T" : ""})`];
    case "expand":
      return [`${ind}${s.dst} = sympow${s.deg}(${s.src}, features from ${printExpr(s.offset)})`];
    case "expandGrad":
      return [`${ind}${s.dst} ${s.accumulate ? "+=" : "="} sympow${s.deg}_grad(${s.x}, ${s.dphi}, features from ${printExpr(s.offset)})`];
    case "for":
      return [
        `${ind}for ${s.var} in ${printExpr(s.start)}..${printExpr(s.end)} step ${s.step}${s.stages > 1 ? ` stages ${s.stages}` : ""}:`,
        ...s.body.flatMap((b) => printStmt(b, ind + "  ")),
      ];
    case "if":
      return [
        `${ind}if ${printExpr(s.cond)}:`,
        ...s.body.flatMap((b) => printStmt(b, ind + "  ")),
        ...(s.orelse ? [`${ind}else:`, ...s.orelse.flatMap((b) => printStmt(b, ind + "  "))] : []),
      ];
  }
}

export function printKernel(k: Kernel): string {
  const lines = [
    `kernel ${k.name}(${k.params.map((p) => `$${p.name}: ${p.type}`).join(", ")}) grid (${k.grid.map(printExpr).join(", ")}) warps ${k.numWarps}`,
    ...k.tensors.map((t) => `  ${t.role} ${t.name}: ${t.dtype}[${t.dims.map(printExpr).join(", ")}]`),
    ...k.buffers.map((b) => `  ${b.type.space} ${b.name}: ${b.type.dtype}[${b.type.shape.join(", ")}]`),
    ...k.body.flatMap((s) => printStmt(s, "  ")),
  ];
  return lines.join("\n") + "\n";
}
