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

/** The (kind, arch) of each image in a fatbin: its header (magic 0xBA55ED50, u16 version, u16 header
 * size, u64 payload size) is followed by entries of a u16 kind (1 PTX, 2 ELF), u16, u32 entry header
 * size, u64 payload size, ..., and the u32 SM number at byte 28. */
function fatbinEntries(b: Buffer): { kind: string; arch: number }[] {
  if (b.readUInt32LE(0) !== 0xba55ed50) throw new Error("not a fatbin (magic)");
  const start = b.readUInt16LE(6), end = start + Number(b.readBigUInt64LE(8));
  const out: { kind: string; arch: number }[] = [];
  for (let off = start; off < end; ) {
    const kind = b.readUInt16LE(off), headerSize = b.readUInt32LE(off + 4), size = Number(b.readBigUInt64LE(off + 8));
    out.push({ kind: kind === 1 ? "ptx" : kind === 2 ? "elf" : `kind ${kind}`, arch: b.readUInt32LE(off + 28) });
    off += headerSize + size;
  }
  return out;
}

describe("nvcc", () => {
  it("compiles every generated kernel source for sm_80 and sm_90a", async () => {
    execFileSync(NVCC, ["--version"], { stdio: "pipe" }); // a missing nvcc fails here, by name
    const manifest = parseManifest(readFileSync(path.join(GENERATED, MANIFEST_FILE), "utf8"), MANIFEST_FILE);
    expect(manifest.nvccFlags).toEqual(expect.arrayContaining(["-gencode=arch=compute_80,code=[sm_80,compute_80]", "-gencode=arch=compute_90a,code=sm_90a"]));
    const r = await compileAll(jobsOf(manifest, GENERATED, BUILD), {
      concurrency: cpus().length,
      onEvent: (e) => console.log(progressLine(e)),
    });
    console.log(`nvcc: ${r.compiled} compiled, ${r.skipped} reused, ${r.failures.length} failed in ${r.seconds.toFixed(1)} s`);
    expect(r.failures.map((f) => f.log)).toEqual([]);
    expect(r.compiled + r.skipped).toBe(manifest.files.length);
    // every fatbin carries compute_80 PTX beside the SASS, for a GPU newer than the built archs to JIT
    for (const f of manifest.files) {
      const entries = fatbinEntries(readFileSync(path.join(BUILD, f.fatbin)));
      expect(entries, f.fatbin).toEqual(expect.arrayContaining([{ kind: "ptx", arch: 80 }, { kind: "elf", arch: 80 }, { kind: "elf", arch: 90 }]));
    }
  }, 1_800_000);
});
