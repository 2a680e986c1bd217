// Where the runtime looks for kernels: the manifests `gen` writes and the fatbins `build` compiles.
//
// The search path, in order (the first manifest holding a (kernel, spec) wins):
//   1. env RETENTION_KERNELS: ':'-separated folders (or manifest.json files), the caller's own;
//   2. the current project's build/generated/: the project is the nearest folder at or above the
//      working directory with a package.json (where `npx retention gen --out build/generated/...`
//      run from the project puts a spec);
//   3. the package's own build: generated/ (the default set `npm ci` compiles) and build/generated/.
// A folder on the path is either a gen --out folder (it holds manifest.json) or a folder of them
// (each subfolder's manifest.json, in name order). env PRT_MANIFEST (':'-separated manifest files)
// replaces the whole search, for tests and tools that want exactly these manifests.
//
// Fatbins: env PRT_KERNEL_DIR if set; else the package's build/kernels (gen's default --build-dir)
// for the default set, and for any other manifest its own folder (gen --build-dir <out>), then the
// package's build/kernels.

import { existsSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { REPO_ROOT } from "./package-root.ts";

export const KERNELS_ENV = "RETENTION_KERNELS";

/** generated/manifest.json, where `gen` writes the default set. */
export const DEFAULT_MANIFEST = path.join(REPO_ROOT, "generated", "manifest.json");
/** The package's folder of extra specs: build/generated/<specKey>/. */
export const PACKAGE_EXTRA_DIR = path.join(REPO_ROOT, "build", "generated");
/** The package's folder of fatbins (gen's and build's default --build-dir). */
export const PACKAGE_KERNEL_DIR = path.join(REPO_ROOT, "build", "kernels");

/** One place on the search path and the manifests found there. */
export interface SearchPlace {
  /** A folder or a manifest file. */
  readonly place: string;
  /** Why it is searched: "RETENTION_KERNELS", "project", "package" or "PRT_MANIFEST". */
  readonly from: string;
  readonly manifests: readonly string[];
}

/** The nearest folder at or above `cwd` holding a package.json; `cwd` itself when there is none. */
export function projectRoot(cwd: string = process.cwd()): string {
  for (let dir = path.resolve(cwd); ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, "package.json"))) return dir;
    if (path.dirname(dir) === dir) return path.resolve(cwd);
  }
}

/** Where extra specs of the current project go: <project>/build/generated (the package's own in its checkout). */
export function projectExtraDir(): string {
  return path.join(projectRoot(), "build", "generated");
}

const isDir = (p: string): boolean => existsSync(p) && statSync(p).isDirectory();

/** The manifests a place holds: itself (a file), its manifest.json, or its subfolders' manifest.json. */
function manifestsAt(place: string): string[] {
  if (!isDir(place)) return existsSync(place) ? [place] : [];
  const own = path.join(place, "manifest.json");
  if (existsSync(own)) return [own];
  return readdirSync(place)
    .sort()
    .map((d) => path.join(place, d, "manifest.json"))
    .filter((f) => existsSync(f));
}

const envList = (name: string): string[] | null => {
  const v = process.env[name];
  return v ? v.split(":").filter(Boolean).map((f) => path.resolve(f)) : null;
};

/** The search path, in order, each place with the manifests it holds now (the same folder only once). */
export function kernelSearchPath(): SearchPlace[] {
  const exact = envList("PRT_MANIFEST");
  if (exact) return exact.map((f) => ({ place: f, from: "PRT_MANIFEST", manifests: existsSync(f) ? [f] : [] }));
  const places: [string, string][] = [
    ...(envList(KERNELS_ENV) ?? []).map((p): [string, string] => [p, KERNELS_ENV]),
    [projectExtraDir(), "project"],
    [DEFAULT_MANIFEST, "package"],
    [PACKAGE_EXTRA_DIR, "package"],
  ];
  const seen = new Set<string>();
  return places
    .filter(([p]) => !seen.has(p) && !!seen.add(p))
    .map(([place, from]) => ({ place, from, manifests: manifestsAt(place) }));
}

/** Every manifest file on the search path, in search order. */
export function manifestPaths(): string[] {
  return [...new Set(kernelSearchPath().flatMap((p) => p.manifests))];
}

/** The search path in words, for errors: each place, why it is searched and what it holds. */
export function describeSearchPath(places: readonly SearchPlace[] = kernelSearchPath()): string {
  const parts = places.map((p) => {
    const held = p.manifests.length === 0 ? "no manifest" : p.manifests.length === 1 && p.manifests[0] === p.place ? "found" : p.manifests.map((m) => path.relative(p.place, m)).join(", ");
    return `${p.place} (${p.from}: ${held})`;
  });
  const env = process.env.PRT_MANIFEST ? "" : `; ${KERNELS_ENV} ${process.env[KERNELS_ENV] ? "is set" : "is unset"}`;
  return parts.join(", ") + env;
}

/** The folders a manifest's fatbins are looked for in, in order. */
export function fatbinDirs(manifestFile: string): string[] {
  if (process.env.PRT_KERNEL_DIR) return [path.resolve(process.env.PRT_KERNEL_DIR)];
  if (manifestFile === DEFAULT_MANIFEST) return [PACKAGE_KERNEL_DIR];
  const own = path.dirname(manifestFile);
  return own === PACKAGE_KERNEL_DIR ? [own] : [own, PACKAGE_KERNEL_DIR];
}
