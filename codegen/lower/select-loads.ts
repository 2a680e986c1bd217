// Pass: global -> shared copies through cp.async. A load whose tile holds the tensor's dtype and
// whose rows are whole 16-byte chunks of the tensor's contiguous dim is issued as cp.async
// (zero-filled past the tensor's end; a scalar path covers run-time misalignment). A run of
// such loads forms one commit group, waited for right after the run.

import { withBodies, type LKernel, type LStmt } from "../lir.ts";
import { whyNotAsync } from "./rules.ts";

export function selectLoads(k: LKernel): LKernel {
  const list = (body: readonly LStmt[]): LStmt[] => {
    const out: LStmt[] = [];
    let open = false;
    const close = (): void => {
      if (open) out.push({ kind: "asyncCommit" }, { kind: "asyncWait", pending: 0 });
      open = false;
    };
    for (const s of body) {
      if (s.kind === "load" && s.mode === "scalar" && whyNotAsync(k, s) === null) {
        out.push({ ...s, mode: "async" });
        open = true;
        continue;
      }
      close();
      out.push(withBodies(s, list));
    }
    close();
    return out;
  };
  return { ...k, body: list(k.body) };
}
