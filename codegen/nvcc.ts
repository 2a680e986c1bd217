// nvcc driving: one fatbin per kernel source (every arch in it), compiled in parallel through execa,
// incremental by content hash: a fatbin is rebuilt only when the hash of (flags, source, included
// headers) differs from the one recorded beside it (`<fatbin>.sha256`).

import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import path from "node:path";
import { execa } from "execa";
import type { Arch, Manifest } from "./manifest.ts";

export const NVCC = process.env.NVCC ?? "nvcc";

/** sm_80 also embeds its PTX (compute_80), so a GPU newer than every built arch can JIT it; sm_90a's
 * wgmma-era PTX is arch-specific and would only JIT on sm_90a itself, which has the SASS. */
const GENCODE: Record<Arch, string> = {
  sm_80: "-gencode=arch=compute_80,code=[sm_80,compute_80]",
  sm_90a: "-gencode=arch=compute_90a,code=sm_90a",
};

/** Flags of every kernel compile (the source and -o come after). */
export function nvccFlags(archs: readonly Arch[]): string[] {
  return ["-fatbin", "-std=c++17", "-O3", ...archs.map((a) => GENCODE[a])];
}

export interface CompileJob {
  /** Absolute path of the .cu. */
  readonly source: string;
  /** Absolute path of the fatbin to write. */
  readonly output: string;
  /** Absolute paths of the headers it includes (their content keys the hash). */
  readonly deps: readonly string[];
  readonly flags: readonly string[];
}

export type CompileEvent =
  | { readonly kind: "skip"; readonly job: CompileJob; readonly done: number; readonly total: number }
  | { readonly kind: "done"; readonly job: CompileJob; readonly seconds: number; readonly done: number; readonly total: number }
  | { readonly kind: "fail"; readonly job: CompileJob; readonly seconds: number; readonly done: number; readonly total: number; readonly log: string };

export interface CompileResult {
  readonly compiled: number;
  readonly skipped: number;
  readonly failures: readonly { readonly job: CompileJob; readonly log: string }[];
  readonly seconds: number;
}

export function jobHash(job: CompileJob): string {
  const h = createHash("sha256");
  h.update(`${NVCC}\0${job.flags.join(" ")}\0`);
  for (const f of [job.source, ...job.deps]) h.update(readFileSync(f)).update("\0");
  return h.digest("hex");
}

const stampOf = (job: CompileJob): string => `${job.output}.sha256`;

/** Whether the fatbin on disk was built from exactly these inputs. */
export function upToDate(job: CompileJob): boolean {
  const stamp = stampOf(job);
  return existsSync(job.output) && existsSync(stamp) && readFileSync(stamp, "utf8").trim() === jobHash(job);
}

async function compileOne(job: CompileJob): Promise<string | null> {
  mkdirSync(path.dirname(job.output), { recursive: true });
  rmSync(stampOf(job), { force: true });
  const hash = jobHash(job); // of the inputs as they are when nvcc starts
  const r = await execa(NVCC, [...job.flags, "-o", job.output, job.source], { reject: false, all: true, cwd: path.dirname(job.source) });
  if (r.exitCode !== 0 || r.failed) {
    const cmd = `${NVCC} ${[...job.flags, "-o", job.output, job.source].join(" ")}`;
    // a missing compiler is a spawn error with no output: say so, and how to point at one
    if ((r as { code?: string }).code === "ENOENT") return `${cmd}\ncannot run '${NVCC}': not found (install the CUDA toolkit, put its bin/ on PATH, or set NVCC to nvcc's path)`;
    return `${cmd}\n${r.all || r.message}`;
  }
  writeFileSync(stampOf(job), hash + "\n");
  return null;
}

/** Compile every job not up to date, `concurrency` at a time. Never throws for a compile error:
 * failures come back with nvcc's output. */
export async function compileAll(
  jobs: readonly CompileJob[],
  opts: { concurrency?: number; onEvent?: (e: CompileEvent) => void } = {},
): Promise<CompileResult> {
  const t0 = performance.now();
  const total = jobs.length;
  let done = 0, compiled = 0, skipped = 0, next = 0;
  const failures: { job: CompileJob; log: string }[] = [];
  const worker = async (): Promise<void> => {
    while (next < jobs.length) {
      const job = jobs[next++]!;
      if (upToDate(job)) {
        skipped++;
        opts.onEvent?.({ kind: "skip", job, done: ++done, total });
        continue;
      }
      const t = performance.now();
      const log = await compileOne(job);
      const seconds = (performance.now() - t) / 1000;
      if (log === null) {
        compiled++;
        opts.onEvent?.({ kind: "done", job, seconds, done: ++done, total });
      } else {
        failures.push({ job, log });
        opts.onEvent?.({ kind: "fail", job, seconds, done: ++done, total, log });
      }
    }
  };
  const n = Math.max(1, Math.min(opts.concurrency ?? cpus().length, jobs.length));
  await Promise.all(Array.from({ length: n }, worker));
  return { compiled, skipped, failures, seconds: (performance.now() - t0) / 1000 };
}

/** The compile jobs of a generated folder, from its manifest. */
export function jobsOf(manifest: Manifest, srcDir: string, outDir: string): CompileJob[] {
  const flags = manifest.nvccFlags;
  return manifest.files.map((f) => ({
    source: path.resolve(srcDir, f.source),
    output: path.resolve(outDir, f.fatbin),
    deps: f.includes.map((h) => path.resolve(srcDir, h)),
    flags,
  }));
}

/** A progress printer for compileAll events. */
export function progressLine(e: CompileEvent): string {
  const n = String(e.total).length;
  const head = `[${String(e.done).padStart(n)}/${e.total}]`;
  const name = path.basename(e.job.source);
  if (e.kind === "skip") return `${head} ${name}: up to date`;
  if (e.kind === "done") return `${head} ${name}: compiled in ${e.seconds.toFixed(1)} s`;
  return `${head} ${name}: FAILED after ${e.seconds.toFixed(1)} s`;
}
