// The one-source-of-truth audit (codegen/audit.ts, ts-morph): the repository's kernels pass it, and
// each rule catches a planted violation.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { auditKernels, formatAudit } from "../codegen/audit.ts";
import { KERNELS } from "../dsl/kernels/index.ts";

describe("audit of dsl/kernels", () => {
  it("finds every registered kernel and no problem", () => {
    const a = auditKernels();
    expect(a.problems, formatAudit(a)).toEqual([]);
    expect(a.kernels.length).toBe(KERNELS.length);
  }, 60_000);

  describe("planted violations", () => {
    const root = mkdtempSync(path.join(tmpdir(), "retention-audit-"));
    afterAll(() => rmSync(root, { recursive: true, force: true }));
    const dir = path.join(root, "dsl", "kernels");
    mkdirSync(dir, { recursive: true });
    mkdirSync(path.join(root, "codegen"), { recursive: true });
    writeFileSync(path.join(root, "dsl", "spec.ts"), "export interface KernelDef { name: string; schedule: unknown; scheduleSpace: unknown; build: unknown }\n");
    writeFileSync(path.join(root, "codegen", "templates.ts"), "export const x = 1;\n");
    const kernelFile = (name: string, extra = ""): string =>
      `import type { KernelDef } from "../spec.ts";\n${extra}\nexport const ${name}: KernelDef = { name: "${name}", schedule: 0, scheduleSpace: 0, build: 0 };\n`;
    writeFileSync(path.join(dir, "good.ts"), kernelFile("good"));
    writeFileSync(path.join(dir, "unregistered.ts"), kernelFile("unregistered"));
    writeFileSync(path.join(dir, "cuda.ts"), kernelFile("cuda", 'const body = `extern "C" __global__ void k() { int i = threadIdx.x; }`;'));
    writeFileSync(path.join(dir, "backend.ts"), kernelFile("backend", 'import { x } from "../../codegen/templates.ts";'));
    writeFileSync(path.join(dir, "helpers.ts"), "export const half = (x: number): number => x / 2;\n");
    writeFileSync(
      path.join(dir, "index.ts"),
      'import type { KernelDef } from "../spec.ts";\nimport { good } from "./good.ts";\nimport { cuda } from "./cuda.ts";\nimport { backend } from "./backend.ts";\nimport { half } from "./helpers.ts";\n' +
        "export const KERNELS: readonly KernelDef[] = [good, cuda, backend, good, half as never];\n",
    );
    const a = auditKernels(dir);
    const has = (re: RegExp): boolean => a.problems.some((p) => re.test(p));

    it("reports a KernelDef missing from KERNELS", () => expect(has(/unregistered\.ts: exports KernelDef 'unregistered', which dsl\/kernels\/index\.ts does not register/)).toBe(true));
    it("reports CUDA source text in a kernel file", () => expect(has(/cuda\.ts:2: a string holds CUDA source text \('__global__'\)/)).toBe(true));
    it("reports an import from codegen/", () => expect(has(/backend\.ts: imports '..\/..\/codegen\/templates\.ts' from codegen\//)).toBe(true));
    it("reports duplicate and non-kernel KERNELS entries", () => {
      expect(has(/KERNELS lists 'good' twice/)).toBe(true);
      expect(has(/KERNELS entry 'half as never' is not a KernelDef/)).toBe(true);
    });
    it("treats files without KernelDefs as helpers", () => expect(a.helpers).toEqual([expect.stringMatching(/helpers\.ts$/)]));
  });
});
