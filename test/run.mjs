#!/usr/bin/env node
// The test command: runs vitest once, then prints the plain closing line CI's log reader counts
// ("N passed, N failed, N skipped"), with failed suites counted as failures. Exit code is vitest's.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const out = join(mkdtempSync(join(tmpdir(), "retention-test-")), "vitest.json");
const args = ["node_modules/vitest/vitest.mjs", "run", "--reporter=default", "--reporter=json", `--outputFile.json=${out}`, ...process.argv.slice(2)];
const r = spawnSync(process.execPath, args, { stdio: "inherit", env: { ...process.env, NO_COLOR: "1", FORCE_COLOR: "0" } });
let passed = 0, failed = 0, skipped = 0;
if (existsSync(out)) {
  const j = JSON.parse(readFileSync(out, "utf8"));
  passed = j.numPassedTests ?? 0;
  failed = (j.numFailedTests ?? 0) + (j.numFailedTestSuites ?? 0);
  skipped = (j.numPendingTests ?? 0) + (j.numTodoTests ?? 0);
} else failed = 1;
const code = r.status ?? 1;
if (code !== 0 && failed === 0) failed = 1;
// every property test draws from FC_SEED (test/helpers/problems.ts validates it): say which, so a failure reproduces
console.log(`\nFC_SEED=${process.env.FC_SEED || "42 (default)"}`);
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(code);
