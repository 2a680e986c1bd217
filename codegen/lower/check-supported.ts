// Pass: reject what the block-cooperative lowering cannot honour. The interpreter runs each
// statement element by element in order; on the GPU the elements of one statement are computed
// at the same time, so a statement must not read an element of its destination that another
// element's computation writes. (No kernel needs it; this makes the rule explicit.)

import { printExpr } from "../../dsl/print.ts";
import { readNodes, walkStmts, type LKernel } from "../lir.ts";

export function checkSupported(k: LKernel): LKernel {
  const errs: string[] = [];
  walkStmts(k.body, (s) => {
    switch (s.kind) {
      case "map": {
        const rank = k.buffers.find((b) => b.name === s.dst)!.type.shape.length;
        for (const r of readNodes(s.expr)) {
          if (r.buf !== s.dst) continue;
          const own = r.index[0]!.op === "row" && (rank === 1 || r.index[1]!.op === "col");
          if (!own) errs.push(`map into ${s.dst} reads ${s.dst}[${r.index.map(printExpr).join(", ")}], not its own element`);
        }
        break;
      }
      case "mma":
        if (s.dst === s.a || s.dst === s.b) errs.push(`mma into ${s.dst} also reads it as an operand`);
        break;
      case "expand":
        if (s.dst === s.src) errs.push(`expand into ${s.dst} reads it as its source`);
        break;
      case "expandGrad":
        if (s.dst === s.x || s.dst === s.dphi) errs.push(`expandGrad into ${s.dst} reads it as an input`);
        break;
      case "reduce":
        if (s.dst === s.src) errs.push(`reduce into ${s.dst} reads it as its source`);
        break;
      default:
        break;
    }
  });
  if (errs.length) throw new Error(`${k.name}: not supported by the CUDA lowering:\n  ${errs.join("\n  ")}`);
  return k;
}
