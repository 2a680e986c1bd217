// Every generated kernel compiles with nvcc for sm_80 and sm_90a (a compile failure is a test
// failure). All sources compile in parallel; fatbins that `npm run build:kernels` already built
// from identical inputs (same hash of flags, source and headers) are reused, not rebuilt.

import { execFileSync } from "node:child_process";
import { cpus } from "node:os";
import path from "node:path";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { REPO_ROOT } from "../codegen/gen.ts";
import { MANIFEST_FILE, parseManifest } from "../codegen/manifest.ts";
import { compileAll, jobsOf, NVCC, progressLine } from "../codegen/nvcc.ts";

const GENERATED = path.join(REPO_ROOT, "generated");
const BUILD = path.join(REPO_ROOT, "build", "kernels");

describe("nvcc", () => {
  it("compiles every generated kernel source for sm_80 and sm_90a", async () => {
    execFileSync(NVCC, ["--version"], { stdio: "pipe" }); // a missing nvcc fails here, by name
    const manifest = parseManifest(readFileSync(path.join(GENERATED, MANIFEST_FILE), "utf8"), MANIFEST_FILE);
    expect(manifest.nvccFlags).toEqual(expect.arrayContaining(["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a"]));
    const r = await compileAll(jobsOf(manifest, GENERATED, BUILD), {
      concurrency: cpus().length,
      onEvent: (e) => console.log(progressLine(e)),
    });
    console.log(`nvcc: ${r.compiled} compiled, ${r.skipped} reused, ${r.failures.length} failed in ${r.seconds.toFixed(1)} s`);
    expect(r.failures.map((f) => f.log)).toEqual([]);
    expect(r.compiled + r.skipped).toBe(manifest.files.length);
  }, 1_800_000);
});
