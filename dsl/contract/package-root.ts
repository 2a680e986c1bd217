// The package's root folder, from wherever this module runs: the source tree (dsl/contract/*.ts under
// tsx) or the compiled one (dist/dsl/contract/*.js). Data the code reads at run time (templates/,
// generated/, build/, codegen/schedules.json, dsl/kernels sources for the audit) lives beside
// package.json, not beside the compiled files.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const PACKAGE_NAME = "power-retention-compiler";

/** The nearest folder at or above `from` whose package.json names this package. */
export function findPackageRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const pj = path.join(dir, "package.json");
    if (existsSync(pj)) {
      try {
        if ((JSON.parse(readFileSync(pj, "utf8")) as { name?: unknown }).name === PACKAGE_NAME) return dir;
      } catch {
        // an unreadable package.json on the way up is not ours
      }
    }
    if (path.dirname(dir) === dir) throw new Error(`no package.json naming ${PACKAGE_NAME} at or above ${from}`);
  }
}

/** The package root (the repository checkout, or node_modules/power-retention-compiler). */
export const REPO_ROOT = findPackageRoot(path.dirname(fileURLToPath(import.meta.url)));
