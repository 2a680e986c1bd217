#!/usr/bin/env node
// `retention` as the package installs it (package.json "bin" -> dist/codegen/bin.js): plain Node
// runs the compiled CLI. In a checkout, `node codegen/bin.mjs` runs the TypeScript sources
// through tsx instead (no compile step after an edit).
import { run } from "./cli.ts";

await run(process.argv.slice(2));
