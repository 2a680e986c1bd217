// The command line: --help documents every option, bad options and values are errors naming them.

import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { helpText, jobsOption, parseArgs, selectionOf } from "../codegen/cli.ts";
import { REPO_ROOT } from "../codegen/gen.ts";
import { parseManifest } from "../codegen/manifest.ts";

const BIN = path.join(REPO_ROOT, "codegen", "bin.mjs");
const cli = (...args: string[]): { code: number | null; stdout: string; stderr: string } => {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", cwd: REPO_ROOT });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

describe("retention --help", () => {
  it("lists every command and option", () => {
    const r = cli("--help");
    expect(r.code).toBe(0);
    for (const o of ["gen", "build", "--deg", "--d ", "--e ", "--chunk", "--dtype", "--arch", "--kernels", "--out", "--compile", "--build-dir", "--jobs", "--dump-ir", "--help"])
      expect(r.stdout).toContain(o);
    expect(cli("gen", "--help").stdout).toBe(helpText());
  }, 30_000);

  it("gives examples that parse, each gen example with its --out (issue 27: one failed with '--out DIR is required')", () => {
    const examples = helpText().split("\n").filter((l) => l.startsWith("  retention "));
    expect(examples.length).toBeGreaterThanOrEqual(3);
    for (const l of examples) {
      const argv = l.trim().split(/ +/).slice(1);
      const p = parseArgs(argv);
      if (p.command === "gen") {
        expect(p.values.get("out"), l).toBeDefined();
        selectionOf(p);
      }
    }
  });
});

describe("what gen says next", () => {
  const tmp = mkdtempSync(path.join(tmpdir(), "prt-cli-next-"));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const one = ["--d", "16", "--chunk", "16", "--dtype", "f32", "--kernels", "attention", "--no-audit"];

  it("outside the search path: the build command, and the variable that makes the runtime look there", () => {
    const out = path.join(tmp, "k");
    const r = cli("gen", ...one, "--out", out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`gen: next, compile them: npx retention build --out ${out} (or run gen with --compile)`);
    expect(r.stderr).toContain(`gen: the runtime does not search ${out}: set RETENTION_KERNELS=${out} where you run it, or generate under build/generated/`);
  }, 60_000);

  it("under the project's build/generated: found there; a --build-dir elsewhere is named with PRT_KERNEL_DIR", () => {
    // a project of its own (a folder with a package.json), so that the checkout's search path is left alone
    const project = path.join(tmp, "project"), kdir = path.join(tmp, "fatbins");
    mkdirSync(project);
    writeFileSync(path.join(project, "package.json"), "{}\n");
    const r = spawnSync(process.execPath, [BIN, "gen", ...one, "--out", "build/generated/p2_d16", "--build-dir", kdir], { encoding: "utf8", cwd: project });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain(`gen: next, compile them: npx retention build --out build/generated/p2_d16 --build-dir ${kdir}`);
    expect(r.stderr).toContain("gen: the runtime finds build/generated/p2_d16/manifest.json on its kernel search path (the project's build/generated)");
    const pkgKernels = path.join(REPO_ROOT, "build", "kernels");
    expect(r.stderr).toContain(`gen: the runtime looks for its fatbins in build/generated/p2_d16, then ${pkgKernels}, not in ${kdir}: set PRT_KERNEL_DIR=${kdir}`);
  }, 60_000);
});

describe("bad options", () => {
  it("names an unknown option and the ones expected", () => {
    const r = cli("gen", "--frobnicate", "3");
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown option --frobnicate; expected one of --deg, --d, .*--dump-ir/);
  }, 30_000);
  it.each([
    ["gen", "chunks", "chunk"],
    ["gen", "degree", "deg"],
    ["gen", "chunk_size", "chunk"],
    ["gen", "Dtype", "dtype"],
    ["gen", "kernel", "kernels"],
    ["gen", "build_dir", "build-dir"],
    ["gen", "comple", "compile"],
    ["build", "outt", "out"],
  ])("%s --%s: did you mean --%s?", (command, wrong, meant) => {
    expect(() => parseArgs([command, `--${wrong}`, "1"])).toThrow(new RegExp(`^unknown option --${wrong} \\(did you mean --${meant}\\?\\); expected one of `));
  });
  it("suggests nothing for a name like no option, or one that does not apply to the command", () => {
    expect(() => parseArgs(["gen", "--x", "1"])).toThrow(/^unknown option --x; expected one of/);
    expect(() => parseArgs(["build", "--degree", "4"])).toThrow(/^unknown option --degree; expected one of --out, --build-dir, --jobs, --help, --version$/);
  });
  it("names the option of a bad value and the values expected", () => {
    const r = cli("gen", "--dtype", "f64");
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--dtype: expected f32, f16, bf16, received 'f64'");
  }, 30_000);
  it("gen without --out is an error, not a rewrite of the package's generated/", () => {
    const r = cli("gen", "--d", "32");
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("gen: --out DIR is required");
  }, 30_000);
  it("prints the version", () => {
    const r = cli("--version");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^retention \d+\.\d+\.\d+\n$/);
    expect(cli("gen", "--version").stdout).toBe(r.stdout);
  }, 30_000);
  it("names a missing nvcc and how to point at one", () => {
    const tmp = path.join(REPO_ROOT, "build", "test-no-nvcc");
    const r = spawnSync(process.execPath, [BIN, "build", "--out", "generated", "--build-dir", tmp, "--jobs", "1"], {
      encoding: "utf8", cwd: REPO_ROOT, env: { ...process.env, NVCC: "/nonexistent/nvcc" },
    });
    rmSync(tmp, { recursive: true, force: true });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("cannot run '/nonexistent/nvcc': not found (install the CUDA toolkit, put its bin/ on PATH, or set NVCC to nvcc's path)");
  }, 60_000);
  it("names a corrupt manifest by its path", () => {
    expect(() => parseManifest("{bad", "/x/manifest.json")).toThrow(/^\/x\/manifest.json: not valid JSON \(.*\); regenerate it with `retention gen --out <its folder>`$/);
    expect(() => parseManifest('{"format": 2}', "/x/manifest.json")).toThrow("/x/manifest.json: 'files' is missing or not a list");
    expect(() => parseManifest("null", "/x/manifest.json")).toThrow("/x/manifest.json: expected a JSON object");
  });
  it("names an unknown command", () => {
    expect(() => parseArgs(["compile"])).toThrow(/unknown command 'compile' \(expected gen or build/);
  });
  it.each([
    [["gen", "--chunk", "48"], /--chunk: expected powers of two >= 16 \(decimal\), received '48'/],
    [["gen", "--deg", "3"], /--deg: expected positive even integers \(decimal\), received '3'/],
    [["gen", "--d", "x"], /--d: expected positive integers \(decimal\), received 'x'/],
    [["gen", "--arch", "sm_75"], /--arch: expected sm_80, sm_90a, received 'sm_75'/],
    [["gen", "--kernels", "attention,nope"], /--kernels: expected all or some of attention, .*received 'nope'/],
    [["gen", "--jobs", "0"], /--jobs: expected a positive integer \(decimal\), received '0'/],
    [["gen", "--out"], /option --out expects a value: DIR/],
    [["gen", "--compile=yes"], /option --compile takes no value/],
    [["build", "--dtype", "f16"], /option --dtype does not apply to build/],
    [["gen", "stray"], /unexpected argument 'stray'/],
    [["gen", "--deg", "0x2"], /--deg: expected positive even integers \(decimal\), received '0x2'/],
    [["gen", "--deg", "2e0"], /--deg: expected positive even integers \(decimal\), received '2e0'/],
    [["gen", "--d", " 64"], /--d: expected positive integers \(decimal\), received ' 64'/],
    [["gen", "--deg", "2,2"], /--deg: '2' is listed twice/],
    [["gen", "--d", "64,064"], /--d: 64 is listed twice/],
    [["gen", "--dtype", "bf16,bf16"], /--dtype: 'bf16' is listed twice/],
    [["gen", "--deg", "1000"], /--deg\/--d\/--e: spec \(deg 1000, d 32, e 32\): the state would hold D \* e = .* lower deg or d/],
  ])("%j", (argv, message) => {
    expect(() => {
      const p = parseArgs(argv);
      selectionOf(p);
      jobsOption(p);
    }).toThrow(message);
  });
});
