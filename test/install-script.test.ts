// The install script (scripts/install.mjs): which step runs and each kernel source as nvcc finishes
// it, on stderr always and on the terminal when npm hides a dependency's output (issue 27: about 5
// minutes of nvcc printed nothing). What npm 11.19.1 does, measured: a checkout's own install script
// (npm ci) and --foreground-scripts show its output; a dependency's (npm install of the package) is
// captured and shown only if it fails; /dev/tty still reaches the user's terminal.

import path from "node:path";
import { describe, expect, it } from "vitest";
import { hiddenByNpm, isProgress, runSteps, sinks } from "../scripts/install.mjs";

describe("when npm hides the install script's output", () => {
  const dep = { npm_lifecycle_event: "install", INIT_CWD: "/home/u/app" };
  const pkg = "/home/u/app/node_modules/power-retention-compiler";
  it.each([
    ["a dependency, npm's default", dep, false, pkg, true],
    ["a dependency with --foreground-scripts", { ...dep, npm_config_foreground_scripts: "true" }, false, pkg, false],
    ["the checkout's own npm ci", { ...dep, INIT_CWD: pkg }, false, pkg, false],
    ["stderr on a terminal", dep, true, pkg, false],
    ["not run by npm", {}, false, pkg, false],
  ] as const)("%s: %s", (_what, env, tty, cwd, hidden) => {
    expect(hiddenByNpm(env, tty, cwd)).toBe(hidden);
  });
});

describe("runSteps", () => {
  const node = process.execPath;
  const script = (js: string): [string, string[]] => [node, ["-e", js]];
  const capture = () => {
    const err: string[] = [], term: string[] = [];
    return { err, term, out: sinks((s) => void err.push(s), (s) => void term.push(s)) };
  };

  it("says each step, forwards nvcc's progress to the terminal and everything to stderr, and stops at a failure", async () => {
    const c = capture();
    const nvccLike = "console.error('nvcc: 2 sources -> build/kernels (2 at a time)'); console.error('cmake noise'); console.error('[1/2] a.cu: compiled in 1.0 s'); console.error('[2/2] b.cu: up to date')";
    const code = await runSteps([
      ["first", ...script(nvccLike)],
      ["second", ...script("console.error('broken'); process.exit(3)")],
      ["third", ...script("console.error('never')")],
    ], c.out);
    expect(code).toBe(3);
    const term = c.term.join("");
    expect(term).toMatch(/^power-retention-compiler: install step 1\/3: first\n/);
    expect(term).toContain("power-retention-compiler: nvcc: 2 sources -> build/kernels (2 at a time)\n");
    expect(term).toContain("power-retention-compiler: [1/2] a.cu: compiled in 1.0 s\npower-retention-compiler: [2/2] b.cu: up to date\n");
    expect(term).toMatch(/power-retention-compiler: install step 1\/3 done in \d+\.\d s\n/);
    expect(term).toContain("power-retention-compiler: install step 2/3: second\n");
    expect(term).toContain("power-retention-compiler: install step 2/3 (second) failed (exit 3)");
    expect(term).not.toContain("cmake noise");
    expect(term).not.toContain("third");
    const err = c.err.join("");
    expect(err).toContain("cmake noise\n");
    expect(err).toContain("broken\n");
    expect(err).not.toContain("never");
  });

  it("names a command that cannot start", async () => {
    const c = capture();
    expect(await runSteps([["missing", path.join("/nonexistent", "tool"), []]], c.out)).toBe(1);
    expect(c.term.join("")).toContain("power-retention-compiler: missing: cannot run /nonexistent/tool: spawn /nonexistent/tool ENOENT");
  });

  it("counts nvcc's per-source lines as progress, not other output", () => {
    for (const l of ["[ 3/18] p2_d64_e64_c64_bf16.cu: compiled in 41.2 s", "nvcc: 18 compiled, 0 up to date, 0 failed in 300.1 s", "retention: --out: no manifest.json"]) expect(isProgress(l), l).toBe(true);
    for (const l of ["-- Configuring done", "[1/10] Building CXX object CMakeFiles/prt.dir/core.cc.o", ""]) expect(isProgress(l), l).toBe(false);
  });
});
