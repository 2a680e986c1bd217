#!/usr/bin/env node
// The package's install script (package.json "install"; `npm ci` in a checkout, `npm install` of the
// package, `npm rebuild`): dist/ (scripts/build-ts.mjs), the native runtime (cmake-js), then the
// default kernels (nvcc, minutes), saying which step runs and each kernel source as nvcc finishes it.
//
// Where that goes: npm shows a checkout's own install script as it runs, but hides a dependency's
// output (stdout and stderr) unless the script fails or npm runs with --foreground-scripts (npm
// 11.19.1). So, for a dependency install from a terminal, the progress lines also go to /dev/tty;
// everything always goes to stderr, which npm prints if a step fails.
import { spawn } from "node:child_process";
import { closeSync, openSync, writeSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** Whether npm hides this script's stderr: run by npm, for a dependency (not the project's own
 * script), not in the foreground, stderr not a terminal. (Exported for test/install-script.test.ts.) */
export function hiddenByNpm(env = process.env, stderrIsTTY = !!process.stderr.isTTY, cwd = process.cwd()) {
  if (stderrIsTTY || !env.npm_lifecycle_event) return false; // seen as it is, or not run by npm
  if (env.npm_config_foreground_scripts === "true") return false; // npm passes it through
  return !!env.INIT_CWD && path.resolve(env.INIT_CWD) !== path.resolve(cwd); // a dependency (the root's is shown)
}

/** The terminal, when npm hides our stderr and there is one (not in CI), else null. */
function openTty() {
  if (!hiddenByNpm()) return null;
  try {
    return openSync("/dev/tty", "w");
  } catch {
    return null; // no terminal (CI): npm shows the output only on failure, or with --foreground-scripts
  }
}

/** Lines of the kernel build worth showing on the terminal: nvcc's per-source progress and summary. */
export const isProgress = (line) => /^\[\s*\d+\/\d+\] \S+\.cu: /.test(line) || /^nvcc: /.test(line) || /^retention: /.test(line);

/** Progress sinks: stderr always; `progress` (the terminal) too for step lines and nvcc's. */
export function sinks(stderr, progress) {
  return {
    log: (line) => stderr(line + "\n"),
    say: (line) => {
      stderr(line + "\n");
      progress?.(line + "\n");
    },
  };
}

/** Run a command in the package root; its stderr is forwarded line by line (progress lines also to the terminal). */
function run(out, label, cmd, args) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: root, stdio: ["ignore", "inherit", "pipe"] });
    let rest = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      const lines = (rest + chunk).split("\n");
      rest = lines.pop();
      for (const l of lines) {
        if (isProgress(l)) out.say(`power-retention-compiler: ${l}`);
        else out.log(l);
      }
    });
    child.on("error", (e) => {
      out.say(`power-retention-compiler: ${label}: cannot run ${cmd}: ${e.message}`);
      resolve(1);
    });
    child.on("close", (code, signal) => {
      if (rest) out.log(rest);
      resolve(code ?? (signal ? 1 : 0));
    });
  });
}

/** Run [label, command, args] steps in order, saying which runs and how long each took; stops at the
 * first failure and returns its exit code. */
export async function runSteps(steps, out) {
  const t0 = performance.now();
  for (const [i, [label, cmd, args]] of steps.entries()) {
    const t = performance.now();
    const head = `power-retention-compiler: install step ${i + 1}/${steps.length}`;
    out.say(`${head}: ${label}`);
    const code = await run(out, label, cmd, args);
    if (code !== 0) {
      out.say(`${head} (${label}) failed (exit ${code}); npm prints the step's output with its error`);
      return code;
    }
    out.say(`${head} done in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  }
  out.say(`power-retention-compiler: installed in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return 0;
}

async function main() {
  let tty = openTty();
  const out = sinks(
    (s) => process.stderr.write(s),
    tty === null ? null : (s) => {
      try {
        if (tty !== null) writeSync(tty, s);
      } catch {
        tty = null;
      }
    },
  );
  const npm = process.env.npm_execpath ? [process.execPath, [process.env.npm_execpath]] : ["npm", []];
  const code = await runSteps([
    ["TypeScript: dist/", process.execPath, [path.join(root, "scripts", "build-ts.mjs")]],
    ["the native runtime (cmake-js: build/native)", npm[0], [...npm[1], "run", "build:native"]],
    ["the default kernels (nvcc: build/kernels; minutes)", process.execPath, [path.join(root, "dist", "codegen", "bin.js"), "build", "--out", "generated", "--build-dir", "build/kernels"]],
  ], out);
  if (tty !== null) closeSync(tty);
  return code;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) process.exitCode = await main();
