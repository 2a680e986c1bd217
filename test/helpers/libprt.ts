// libprt.so, the native core as a plain shared library (runtime/native/CMakeLists.txt target
// `prt`), built beside the Node addon by `npm run build:native`.

import { existsSync } from "node:fs";
import path from "node:path";
import { ensureNativeAddon } from "../../runtime/build-native.ts";
import { REPO_ROOT } from "../../runtime/native.ts";

export const libprtPath = (): string => path.join(REPO_ROOT, "build", "native", "Release", "libprt.so");

/** Build the native targets when libprt.so is missing (an addon built before it existed). */
export function ensureLibprt(): string {
  ensureNativeAddon();
  if (!existsSync(libprtPath())) throw new Error(`${libprtPath()} is missing: run \`npm run build:native\``);
  return libprtPath();
}
