// The package as a user gets it: `npm pack` (which compiles dist/ in prepack), unpacked into a
// fresh project's node_modules, then used from plain Node (no tsx) by its name: the runtime API,
// the DSL's CPU executor against the float64 reference, the `retention` CLI generating a spec into
// the project, and the runtime finding it there (search path). Types: a tiny consumer under tsc.
// No GPU: a valid call ends at the no-GPU error, after the kernel lookup.

import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../dsl/contract/package-root.ts";

const PKG = JSON.parse(readFileSync(path.join(REPO_ROOT, "package.json"), "utf8")) as { name: string; version: string; dependencies: Record<string, string> };
const TMP = mkdtempSync(path.join(tmpdir(), "prt-package-"));
const PROJ = path.join(TMP, "user-project");
const INSTALLED = path.join(PROJ, "node_modules", PKG.name);
let packed: string[] = [];

/** The user's environment: none of our development variables, no tsx loader. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of ["NODE_OPTIONS", "PRT_MANIFEST", "PRT_KERNEL_DIR", "PRT_NATIVE_ADDON", "RETENTION_KERNELS", "PRT_LIBCUDA"]) delete env[k];
  return env;
}

function sh(cmd: string, args: string[], cwd: string): SpawnSyncReturns<string> {
  const r = spawnSync(cmd, args, { cwd, env: cleanEnv(), encoding: "utf8", timeout: 120_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} (in ${cwd}) exited ${r.status ?? r.signal}:\n${r.stdout}\n${r.stderr}`);
  return r;
}

beforeAll(() => {
  // npm pack runs prepack (scripts/build-ts.mjs: dist/ from the sources as they are now)
  const r = sh("npm", ["pack", "--pack-destination", TMP, "--json"], REPO_ROOT);
  const info = JSON.parse(r.stdout) as { filename: string; files: { path: string }[] }[];
  packed = info[0]!.files.map((f) => f.path);
  mkdirSync(INSTALLED, { recursive: true });
  sh("tar", ["-xzf", path.join(TMP, info[0]!.filename), "-C", INSTALLED, "--strip-components", "1"], TMP);
  // the package's dependencies, as npm would place them beside it (ours, already installed)
  for (const dep of Object.keys(PKG.dependencies)) symlinkSync(path.join(REPO_ROOT, "node_modules", dep), path.join(PROJ, "node_modules", dep));
  writeFileSync(path.join(PROJ, "package.json"), JSON.stringify({ name: "user-project", private: true, type: "module" }));
}, 180_000);

afterAll(() => rmSync(TMP, { recursive: true, force: true }));

const USE = `
import { powerRetention, Tensor, ArgumentError, GpuUnavailableError, MissingKernelError, cudaAvailable, kernelSearchPath } from "${PKG.name}";
import { forwardOnCpu } from "${PKG.name}/dsl";
import { referenceForward, relativeError } from "${PKG.name}/reference";
const out = {};
// the CPU executor (the interpreter running the forward plan) against the float64 reference
const p = { b: 1, t: 37, hq: 2, h: 1, d: 16, e: 16, deg: 2, chunk: 16, dtype: "f32", scale: 0.25, gated: true, initialState: false, finalState: false };
const r = (n, s) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 1.37 + s));
const x = { Q: r(37 * 2 * 16, 0), K: r(37 * 16, 1), V: r(37 * 16, 2), logG: r(37, 3).map((v) => -Math.abs(v)) };
out.cpuError = relativeError(forwardOnCpu(p, x).Y, referenceForward({ shape: p, deg: 2, scale: 0.25, ...x }).Y);
// the runtime API: metadata-only tensors reach every check without a GPU
const meta = (shape, dtype = "f32") => ({ shape, dtype, device: 0, freed: false });
const Q = meta([1, 37, 2, 16]), K = meta([1, 37, 1, 16]), V = meta([1, 37, 1, 16]), G = meta([1, 37, 1]);
const err = (f) => { try { f(); return null; } catch (e) { return { name: e.constructor.name, typed: e instanceof ArgumentError || e instanceof GpuUnavailableError || e instanceof MissingKernelError, message: e.message, command: e.command }; } };
out.badOption = err(() => powerRetention(Q, K, V, G, { chunk_size: 16 }));
out.generated = err(() => powerRetention(Q, K, V, G, { chunk: 16 })); // the spec gen wrote into the project
out.notGenerated = err(() => powerRetention(Q, K, V, G, { chunk: 32 }));
out.upload = err(() => Tensor.upload([1, 2], [2]));
out.gpu = cudaAvailable();
out.search = kernelSearchPath().map((s) => [s.from, s.place, s.manifests]);
console.log(JSON.stringify(out));
`;

describe("the package, packed and installed into a project", () => {
  it("ships the compiled JavaScript with its declarations, and not the tests", () => {
    for (const f of ["dist/runtime/index.js", "dist/runtime/index.d.ts", "dist/dsl/index.js", "dist/dsl/index.d.ts", "dist/codegen/bin.js", "generated/manifest.json", "templates/prt_tile.cuh", "runtime/native/CMakeLists.txt", "scripts/build-ts.mjs", "scripts/install.mjs"])
      expect(packed, f).toContain(f);
    expect(packed.filter((f) => f.startsWith("test/") || f.startsWith("bench/") || f.startsWith("examples/"))).toEqual([]);
  });

  it("plain node: the CLI's gen writes into the project, and the runtime imported by name finds it there", () => {
    const bin = path.join(INSTALLED, "dist", "codegen", "bin.js");
    expect(sh(process.execPath, [bin, "--version"], PROJ).stdout).toBe(`retention ${PKG.version}\n`);
    sh(process.execPath, [bin, "gen", "--deg", "2", "--d", "16", "--chunk", "16", "--dtype", "f32", "--out", "build/generated/p2_d16_e16_c16_f32"], PROJ);
    writeFileSync(path.join(PROJ, "use.mjs"), USE);
    const r = JSON.parse(sh(process.execPath, ["use.mjs"], PROJ).stdout) as Record<string, any>;
    expect(r.cpuError).toBeLessThan(1e-5);
    expect(r.badOption).toMatchObject({ name: "ArgumentError", typed: true });
    expect(r.badOption.message).toMatch(/^powerRetention: opts.chunk_size: unknown option \(did you mean chunk\?\)/);
    // found in the project's build/generated: the call gets past the lookup to the missing GPU
    expect(r.gpu.ok).toBe(false);
    expect(r.generated).toMatchObject({ name: "GpuUnavailableError", typed: true });
    expect(r.upload).toMatchObject({ name: "GpuUnavailableError", typed: true });
    expect(r.notGenerated).toMatchObject({ name: "MissingKernelError", typed: true, command: "npx retention gen --deg 2 --d 16 --e 16 --chunk 32 --dtype f32 --out build/generated/p2_d16_e16_c32_f32 --compile" });
    expect(r.notGenerated.message).toContain(`${path.join(PROJ, "build", "generated")} (project: p2_d16_e16_c16_f32/manifest.json)`);
    expect(r.search).toEqual([
      ["project", path.join(PROJ, "build", "generated"), [path.join(PROJ, "build", "generated", "p2_d16_e16_c16_f32", "manifest.json")]],
      ["package", path.join(INSTALLED, "generated", "manifest.json"), [path.join(INSTALLED, "generated", "manifest.json")]],
      ["package", path.join(INSTALLED, "build", "generated"), []],
    ]);
  }, 120_000);

  it("its declarations type-check a consumer (tsc, NodeNext, strict, no lib check skipped)", () => {
    writeFileSync(
      path.join(PROJ, "consumer.ts"),
      `import { powerRetention, ArgumentError, type Tensor, type RetentionOptions, type RetentionResult } from "${PKG.name}";
import { forwardOnCpu, type Problem } from "${PKG.name}/dsl";
import { referenceForward } from "${PKG.name}/reference";
const opts: RetentionOptions = { deg: 2, chunk: 64 };
const p: Problem = { b: 1, t: 4, hq: 1, h: 1, d: 8, e: 8, deg: 2, chunk: 16, dtype: "f32", scale: 0.3, gated: false, initialState: false, finalState: false };
const y: Float32Array = forwardOnCpu(p, { Q: [], K: [], V: [] }).Y;
const f: (q: Tensor, k: Tensor, v: Tensor, g: Tensor | null, o?: RetentionOptions) => RetentionResult = powerRetention;
const e: Error = new ArgumentError("f", "x", "y");
// @ts-expect-error: chunk is a number
const bad: RetentionOptions = { chunk: "64" };
export { opts, y, f, e, bad, referenceForward };
`,
    );
    writeFileSync(
      path.join(PROJ, "tsconfig.json"),
      JSON.stringify({ compilerOptions: { module: "NodeNext", moduleResolution: "NodeNext", target: "ES2022", strict: true, noEmit: true, types: [], lib: ["ES2022"] }, files: ["consumer.ts"] }),
    );
    const r = spawnSync(process.execPath, [path.join(REPO_ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"], { cwd: PROJ, env: cleanEnv(), encoding: "utf8" });
    expect(r.stdout + r.stderr).toBe("");
    expect(r.status).toBe(0);
  }, 60_000);
});
