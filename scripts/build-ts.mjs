#!/usr/bin/env node
// Compile the TypeScript (dsl/, codegen/, runtime/) to dist/: JavaScript plus .d.ts, what the
// package's "exports" and "bin" point at (tsconfig.build.json). Runs first in `npm ci`'s install
// script and in `npm pack` (prepack).
//
// typescript is a devDependency: a checkout has it (node_modules/typescript beside package.json)
// and compiles; an installed package has none and needs none, since its tarball was packed with
// dist/ in it. So: compile when our own tsc is there, else require the shipped dist/ and say so.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");
const entry = path.join(root, "dist", "runtime", "index.js");

if (existsSync(tsc)) {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [tsc, "-p", path.join(root, "tsconfig.build.json")], { stdio: "inherit", cwd: root });
  if (r.status !== 0) {
    console.error(`build:ts: tsc -p tsconfig.build.json failed (exit ${r.status ?? r.signal})`);
    process.exit(1);
  }
  console.error(`build:ts: dist/ compiled in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
} else if (existsSync(entry)) {
  console.error(`build:ts: no TypeScript here (${tsc}); using the dist/ the package was packed with`);
} else {
  console.error(`build:ts: neither TypeScript (${tsc}) nor a compiled dist/ (${entry}): install the package from a packed tarball (npm pack), or run npm ci in a checkout`);
  process.exit(1);
}
