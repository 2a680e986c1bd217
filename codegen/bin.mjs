#!/usr/bin/env node
// `retention` (package.json "bin"): registers tsx so Node runs the TypeScript CLI directly.
import { register } from "tsx/esm/api";

register();
const { run } = await import("./cli.ts");
await run(process.argv.slice(2));
