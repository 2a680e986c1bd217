// Build the native addon on demand (tests, tools): `npm run build:native` if the addon is missing.
// A lock directory keeps concurrent callers (parallel test files) from building at once.

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, rmdirSync, statSync } from "node:fs";
import path from "node:path";
import { addonPath, REPO_ROOT } from "./native.ts";

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Returns the addon's path, building it first if it is missing. Throws with the build log on failure. */
export function ensureNativeAddon(opts: { timeoutMs?: number } = {}): string {
  const file = addonPath();
  if (existsSync(file)) return file;
  const timeoutMs = opts.timeoutMs ?? 300_000;
  const lock = path.join(REPO_ROOT, "build", "native.lock");
  mkdirSync(path.dirname(lock), { recursive: true });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch {
      if (existsSync(file)) return file; // someone else built it
      // a lock older than the timeout is stale (a killed build)
      try {
        if (Date.now() - statSync(lock).mtimeMs > timeoutMs) rmdirSync(lock);
      } catch {
        /* it went away */
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${lock} (another native build)`);
      sleepMs(200);
    }
  }
  try {
    if (existsSync(file)) return file;
    try {
      execFileSync("npm", ["run", "build:native"], {
        cwd: REPO_ROOT,
        stdio: "pipe",
        encoding: "utf8",
        timeout: timeoutMs,
      });
    } catch (e) {
      const err = e as { stdout?: string; stderr?: string; message: string };
      throw new Error(
        `\`npm run build:native\` failed: ${err.message}\n${(err.stdout ?? "").slice(-4000)}\n${(err.stderr ?? "").slice(-4000)}`,
      );
    }
    if (!existsSync(file)) throw new Error(`\`npm run build:native\` succeeded but ${file} is missing`);
    return file;
  } finally {
    rmdirSync(lock);
  }
}
