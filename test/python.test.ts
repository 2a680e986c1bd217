// The Python package's own tests (runtime/python/tests), run by the test command so CI runs them:
// plain `python3 -m unittest` (CI's python3 may lack pytest; pytest runs the same files). Without
// torch or a GPU the torch tests skip with a printed reason and the rest (manifest reader, ctypes
// over libprt.so, "no driver" reporting, a run on the fake driver) still run.

import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../runtime/native.ts";
import { ensureLibprt, libprtPath } from "./helpers/libprt.ts";

const tmp = mkdtempSync(path.join(tmpdir(), "prt-python-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const python = spawnSync("python3", ["--version"], { encoding: "utf8" });
const skip = python.status !== 0 ? "python3 is not on PATH" : undefined;
if (skip) console.warn("python tests skipped: " + skip);

describe.skipIf(!!skip)("python package (runtime/python)", () => {
  it("passes its unittest suite", () => {
    ensureLibprt();
    const fake = path.join(tmp, "fake-libcuda.so");
    execFileSync("cc", ["-shared", "-fPIC", "-O1", "-o", fake, path.join(REPO_ROOT, "test", "fixtures", "fake_libcuda.c")], { stdio: "pipe" });
    const r = spawnSync("python3", ["-m", "unittest", "discover", "-v", "-s", "runtime/python/tests", "-t", "runtime/python"], {
      cwd: REPO_ROOT,
      encoding: "utf8",
      env: { ...process.env, PRT_LIB: libprtPath(), PRT_TEST_FAKE_LIBCUDA: fake },
    });
    const log = `${r.stdout}\n${r.stderr}`;
    console.log(log.split("\n").filter((l) => /skipped|ok$|FAIL|ERROR|Ran /.test(l)).join("\n"));
    expect(r.status, log).toBe(0);
  }, 120_000);
});
