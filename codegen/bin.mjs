#!/usr/bin/env node
// `retention` from the sources, for development (tests and the checkout's scripts use it): tsx
// (a devDependency) registers so that Node runs the TypeScript CLI directly. The installed
// package's `retention` is the compiled dist/codegen/bin.js (codegen/bin.ts).
import { register } from "tsx/esm/api";

register();
const { run } = await import("./cli.ts");
await run(process.argv.slice(2));
