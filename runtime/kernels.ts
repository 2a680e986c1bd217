// The compiled kernels: find the one of a (kernel, spec, schedule) in the manifest that `gen` writes
// (generated/manifest.json), load its fatbin once, cache its function, and launch it with the
// arguments in the order the manifest records (tensors, then params).
//
// Lookups are pure (no GPU), so a spec that was never generated, or a fatbin that was never built,
// is reported on any machine, with the command that builds it.

import { existsSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import type { Kernel } from "../dsl/ir.ts";
import { scheduleKey, specKey, type Schedule, type Spec } from "../dsl/spec.ts";
import { KERNELS } from "../dsl/kernels/index.ts";
import { algorithmKey, chooseChunk, type AlgorithmEntry, type AlgorithmTable, type ChooseChunkArgs } from "../dsl/algorithm.ts";
import { genSpecFlags, parseManifest, type ManifestKernel as ManifestEntry } from "../dsl/contract/manifest.ts";
import { cudaAvailable } from "./device.ts";
import { DEFAULT_MANIFEST, describeSearchPath, fatbinDirs, kernelSearchPath, projectExtraDir } from "../dsl/contract/search-path.ts";
import { loadNative, type DevicePtr, type FunctionHandle, type KernelArg, type ModuleHandle } from "./native.ts";

/** One compiled kernel as the runtime sees it: a manifest entry (the contract's ManifestKernel,
 * dsl/contract/manifest.ts) with its paths resolved and its fatbin located. */
export interface ManifestKernel extends Pick<ManifestEntry, "name" | "spec" | "schedule" | "symbol" | "threads" | "smemBytes" | "fits"> {
  /** Argument names in the order of the C signature: tensors, then params. */
  readonly args: readonly string[];
  /** Programs per grid axis as printed DSL expressions (for the staleness check; the runtime
   * evaluates the kernel IR's own grid). */
  readonly grid: readonly string[] | null;
  /** The CUDA source's absolute path and hash. */
  readonly source: string;
  readonly hash: string;
  /** The fatbin's absolute path: the first of `fatbinCandidates` that exists, else the first. */
  readonly fatbin: string;
  /** Where the fatbin is looked for, in order (search-path.ts, fatbinDirs). */
  readonly fatbinCandidates: readonly string[];
  /** The manifest it came from. */
  readonly manifest: string;
  /** The command that compiles its fatbin. */
  readonly buildCommand: string;
}

export interface Manifest {
  readonly file: string;
  /** The archs the fatbins hold code for (e.g. sm_80, sm_90a). */
  readonly archs: readonly string[];
  readonly kernels: readonly ManifestKernel[];
  /** The measured algorithm table (dsl/algorithm.ts) gen copied in; {} when none. */
  readonly algorithms: AlgorithmTable;
}

export { DEFAULT_MANIFEST, manifestPaths, kernelSearchPath, fatbinDirs, KERNELS_ENV } from "../dsl/contract/search-path.ts";

/** A path for a command line run from the working directory: relative to it when inside it. */
function cliPath(p: string): string {
  const rel = path.relative(process.cwd(), p);
  return rel && !rel.startsWith("..") && !path.isAbsolute(rel) ? rel : p;
}

function buildDirOption(): string {
  return process.env.PRT_KERNEL_DIR ? ` --build-dir ${cliPath(path.resolve(process.env.PRT_KERNEL_DIR))}` : "";
}

/** The command that regenerates and compiles the default set (the package's generated/). */
export function defaultGenCommand(): string {
  return `npx retention gen --out ${cliPath(path.dirname(DEFAULT_MANIFEST))}${buildDirOption()} --compile`;
}

/**
 * The command (run from the working directory) that generates and compiles every kernel of `spec`
 * into a folder of its own, <project>/build/generated/<specKey>, which the runtime searches. (It
 * leaves generated/, the default set, alone: gen replaces the manifest of the folder it writes.)
 */
export function genCommand(spec: Spec): string {
  const out = cliPath(path.join(projectExtraDir(), specKey(spec)));
  return `npx retention gen ${genSpecFlags(spec)} --out ${out}${buildDirOption()} --compile`;
}

/** The command that compiles the sources a manifest lists (fatbins into gen's default --build-dir). */
export function buildCommand(manifestFile: string): string {
  const dir = path.dirname(manifestFile);
  const out = dir === path.dirname(DEFAULT_MANIFEST) ? "" : ` --out ${cliPath(dir)}`;
  return `npx retention build${out}${buildDirOption()}`;
}

export class MissingKernelError extends Error {
  constructor(
    message: string,
    readonly command: string,
  ) {
    super(message);
    this.name = "MissingKernelError";
  }
}

const sameSpec = (a: Spec, b: Spec): boolean =>
  a.deg === b.deg && a.d === b.d && a.e === b.e && a.chunk === b.chunk && a.dtype === b.dtype;
const sameSchedule = (a: Schedule, b: Schedule): boolean => scheduleKey(a) === scheduleKey(b);

/** A manifest entry (checked against the contract by parseManifest) as the runtime uses it. */
function entryOf(k: ManifestEntry, file: string, dirs: readonly string[]): ManifestKernel {
  const { spec, schedule } = k;
  const candidates = dirs.map((d) => path.resolve(d, k.fatbin));
  return {
    name: k.name,
    spec: { deg: spec.deg, d: spec.d, e: spec.e, chunk: spec.chunk, dtype: spec.dtype },
    schedule: {
      numWarps: schedule.numWarps, blockD: schedule.blockD, blockT: schedule.blockT, stages: schedule.stages,
      ...(typeof schedule.minBlocks === "number" && schedule.minBlocks > 1 ? { minBlocks: schedule.minBlocks } : {}),
    },
    symbol: k.symbol,
    args: k.args.map((a) => a.name),
    threads: k.threads,
    smemBytes: k.smemBytes,
    grid: Array.isArray(k.grid) ? k.grid : null,
    fits: k.fits ?? {},
    source: path.resolve(path.dirname(file), k.source),
    hash: k.sourceSha256 ?? "",
    fatbin: candidates.find((f) => existsSync(f)) ?? candidates[0]!,
    fatbinCandidates: candidates,
    manifest: file,
    buildCommand: buildCommand(file),
  };
}

const manifestCache = new Map<string, { mtimeMs: number; kdirs: string; manifest: Manifest }>();
let generation = 0;

/** A number that changes whenever a manifest is (re)read: what a cache of plans checked against the
 * manifests keys on (runtime/execute-gpu.ts preparedPlan), after a loadManifests(). */
export const manifestGeneration = (): number => generation;

/** One manifest file, parsed (re-read when it changes). */
export function loadManifest(file: string): Manifest {
  const mtimeMs = statSync(file).mtimeMs;
  const dirs = fatbinDirs(file);
  const kdirs = dirs.join("\u0000");
  const hit = manifestCache.get(file);
  if (hit && hit.mtimeMs === mtimeMs && hit.kdirs === kdirs) return hit.manifest;
  const raw = parseManifest(readFileSync(file, "utf8"), file); // the contract's checks (dsl/contract/manifest.ts)
  const manifest: Manifest = {
    file,
    archs: raw.archs,
    kernels: raw.kernels.map((k) => entryOf(k, file, dirs)),
    algorithms: typeof raw.algorithms === "object" && raw.algorithms !== null ? raw.algorithms : {},
  };
  manifestCache.set(file, { mtimeMs, kdirs, manifest });
  generation++;
  return manifest;
}

/** Every manifest on the search path (search-path.ts). Throws, with the command, when there is none. */
export function loadManifests(): Manifest[] {
  const places = kernelSearchPath();
  const found = [...new Set(places.flatMap((p) => p.manifests))];
  if (found.length === 0) {
    const cmd = defaultGenCommand();
    throw new MissingKernelError(`no kernel manifest found (looked in ${describeSearchPath(places)}): generate and compile the default kernels with \`${cmd}\``, cmd);
  }
  return found.map(loadManifest);
}

/** Where a lookup looked, for errors, each place once, as the subject of "has no" / "have no": the
 * PRT_MANIFEST files as given, else the search path with what each place held. */
function searchedIn(manifests: readonly Manifest[]): { where: string; plural: boolean } {
  if (!process.env.PRT_MANIFEST) return { where: `the kernel search path (${describeSearchPath()})`, plural: false };
  const files = manifests.map((m) => m.file);
  return { where: `the manifest${files.length > 1 ? "s" : ""} ${files.join(", ")} (PRT_MANIFEST)`, plural: files.length > 1 };
}

/** What a lookup that failed lacked: the spec altogether, or the schedule (listing those there are). */
export interface KernelMiss {
  readonly name: string;
  readonly spec: Spec;
  readonly schedule: Schedule;
  /** Schedule keys the manifests hold for (name, spec); empty when the spec is missing. */
  readonly have: readonly string[];
}

/** Whether the registered kernel `name` ignores its spec's chunk (KernelDef.chunkFree). */
const chunkFree = (name: string): boolean => KERNELS.find((k) => k.name === name)?.chunkFree === true;
const sameButChunk = (a: Spec, b: Spec): boolean => a.deg === b.deg && a.d === b.d && a.e === b.e && a.dtype === b.dtype;

/** The manifest entries of `name` for `spec`: that spec's, or for a chunk-free kernel (the quadratic
 * path at a chunk no manifest has) those of the smallest built chunk of the same deg, d, e, dtype. */
function entriesFor(name: string, spec: Spec, manifests: readonly Manifest[]): ManifestKernel[] {
  const exact = manifests.flatMap((m) => m.kernels.filter((k) => k.name === name && sameSpec(k.spec, spec)));
  if (exact.length || !chunkFree(name)) return exact;
  const other = manifests.flatMap((m) => m.kernels.filter((k) => k.name === name && sameButChunk(k.spec, spec)));
  const least = Math.min(...other.map((k) => k.spec.chunk));
  return other.filter((k) => k.spec.chunk === least);
}

/** The entry of (kernel, spec, schedule) from the first manifest that has it, or what is missing. */
export function lookupKernel(name: string, spec: Spec, schedule: Schedule, manifests: readonly Manifest[]): ManifestKernel | KernelMiss {
  const forSpec = entriesFor(name, spec, manifests);
  return forSpec.find((k) => sameSchedule(k.schedule, schedule)) ?? { name, spec, schedule, have: [...new Set(forSpec.map((k) => scheduleKey(k.schedule)))] };
}

/**
 * One error for every kernel a call lacks: where it looked (each place once), then what is missing
 * per spec (kernels, or a kernel under a schedule the manifests lack, with the ones they have), then
 * the command (one gen per spec) that builds them all.
 */
export function missingKernelsError(misses: readonly KernelMiss[], manifests: readonly Manifest[]): MissingKernelError {
  const { where, plural } = searchedIn(manifests);
  const specs = [...new Map(misses.map((m) => [specKey(m.spec), m.spec])).values()];
  const cmd = specs.map(genCommand).join(" && ");
  const parts = specs.flatMap((spec) => {
    const ms = misses.filter((m) => sameSpec(m.spec, spec));
    const noSpec = ms.filter((m) => m.have.length === 0).map((m) => m.name);
    return [
      ...(noSpec.length ? [`kernel${noSpec.length > 1 ? "s" : ""} ${noSpec.join(", ")} for spec ${specKey(spec)}`] : []),
      ...ms.filter((m) => m.have.length > 0).map((m) => `kernel ${m.name} for spec ${specKey(spec)} under schedule ${scheduleKey(m.schedule)} (only ${m.have.join(", ")})`),
    ];
  });
  const anySched = misses.some((m) => m.have.length > 0);
  const them = misses.length > 1 ? "them" : "it";
  return new MissingKernelError(
    `${where} ${plural ? "have" : "has"} no ${parts.join("; no ")}; ` +
      `${anySched ? "gen builds each kernel's default schedule (or pass a schedule the manifest has): " : `generate and compile ${them} with `}\`${cmd}\``,
    cmd,
  );
}

/** The entry of (kernel, spec, schedule); throws MissingKernelError with the gen command. */
export function findKernel(name: string, spec: Spec, schedule: Schedule, manifests: readonly Manifest[] = loadManifests()): ManifestKernel {
  const r = lookupKernel(name, spec, schedule, manifests);
  if ("symbol" in r) return r;
  throw missingKernelsError([r], manifests);
}

/**
 * The schedule the manifests hold for (kernel, spec), when the first manifest with that pair has
 * exactly one: what a plan should use so that the step finds its kernel, whether the manifest has
 * the kernel's default schedule or an autotuned one. Undefined otherwise (the plan's default
 * decides, and a lookup reports what is missing).
 */
export function manifestSchedule(name: string, spec: Spec): Schedule | undefined {
  let ms: Manifest[];
  try {
    ms = loadManifests();
  } catch {
    return undefined;
  }
  for (const m of ms) {
    const list = entriesFor(name, spec, [m]);
    if (list.length) return list.length === 1 ? list[0]!.schedule : undefined;
  }
  return undefined;
}

/** The kernel's fatbin as it is on disk now: the first of its candidates that exists, or null. */
export function resolveFatbin(k: ManifestKernel): string | null {
  return k.fatbinCandidates.find((f) => existsSync(f)) ?? null;
}

/** Throw, naming the file(s) and the command that builds it, when the kernel's fatbin is not on disk. */
export function checkFatbin(k: ManifestKernel): string {
  const f = resolveFatbin(k);
  if (f !== null) return f;
  const where = k.fatbinCandidates.length === 1 ? `${k.fatbin} does not exist` : `none of ${k.fatbinCandidates.join(", ")} exists`;
  throw new MissingKernelError(`the fatbin of kernel ${k.name} (${k.symbol}) is missing: ${where}; compile it with \`${k.buildCommand}\``, k.buildCommand);
}

/** The code a device of compute capability `cc` (e.g. 90) runs from a fatbin built for `archs`:
 * sm_90a's on 9.x when built; else sm_80's on 8.x and newer (its SASS on 8.x, elsewhere its
 * compute_80 PTX, which nvcc.ts embeds and the driver compiles at load: how a build with only
 * sm_80 runs its sm_80 path on a Hopper GPU, bench/device-session.sh sm80). */
export function archFor(cc: number, archs: readonly string[]): string | null {
  if (cc >= 90 && cc < 100 && archs.includes("sm_90a")) return "sm_90a";
  if (cc >= 80 && archs.includes("sm_80")) return "sm_80";
  return null;
}

/** Throw unless the kernel has code for a device of compute capability `cc` and fits its shared memory. */
export function checkArch(k: ManifestKernel, archs: readonly string[], cc: number, fatbin: string = k.fatbin): void {
  const arch = archFor(cc, archs);
  if (arch === null)
    throw new Error(
      `kernel ${k.symbol}: the fatbin ${fatbin} holds code for ${archs.join(", ") || "no arch"}, none of which runs on this GPU (compute capability ${Math.floor(cc / 10)}.${cc % 10})`,
    );
  if (k.fits[arch] === false)
    throw new Error(`kernel ${k.symbol} needs ${k.smemBytes} bytes of shared memory per block, more than ${arch} allows; it cannot launch on this GPU`);
}

const modules = new Map<string, ModuleHandle>();
const functions = new Map<string, FunctionHandle>();

/** The kernel's function handle: its fatbin loaded once, the function looked up once, the dynamic
 * shared memory limit raised when it needs more than the default 48 KiB. */
export function loadKernel(k: ManifestKernel): FunctionHandle {
  const fatbin = checkFatbin(k);
  const key = `${fatbin}\u0000${k.symbol}`;
  const hit = functions.get(key);
  if (hit !== undefined) return hit;
  const gpu = cudaAvailable();
  if (gpu.ok) checkArch(k, loadManifest(k.manifest).archs, gpu.cc, fatbin);
  const native = loadNative();
  let mod = modules.get(fatbin);
  if (mod === undefined) {
    mod = native.moduleLoad(fatbin);
    modules.set(fatbin, mod);
  }
  const fn = native.moduleGetFunction(mod, k.symbol);
  if (k.smemBytes > 48 * 1024) native.functionSetMaxDynamicSmem(fn, k.smemBytes);
  functions.set(key, fn);
  return fn;
}

/** Unload every module loaded so far (function handles become invalid). */
export function unloadKernels(): void {
  const native = loadNative();
  for (const m of modules.values()) native.moduleUnload(m);
  modules.clear();
  functions.clear();
}

/** Launch `fn` (the manifest kernel `k`, DSL kernel `kernel`) over `grid` with its arguments in the
 * manifest's order: tensors as device pointers (`ptrOf`), params typed as the kernel declares them. */
export function launchKernel(
  fn: FunctionHandle,
  k: ManifestKernel,
  kernel: Kernel,
  grid: readonly [number, number, number],
  params: Readonly<Record<string, number>>,
  ptrOf: (tensor: string) => DevicePtr,
  what: string,
): void {
  if (grid[0] * grid[1] * grid[2] === 0) return; // nothing to do (an empty launch is an error in CUDA)
  const args: KernelArg[] = k.args.map((name) => {
    if (kernel.tensors.some((t) => t.name === name)) return { kind: "ptr", value: ptrOf(name) };
    const p = kernel.params.find((q) => q.name === name);
    if (!p) throw new Error(`${what}: argument '${name}' of ${k.symbol} is neither a tensor nor a param of the DSL kernel`);
    const v = params[name];
    if (v === undefined || !Number.isFinite(v)) throw new Error(`${what}: param '${name}' expected a finite number, received ${v}`);
    return p.type === "i32" ? { kind: "i32", value: v } : { kind: "f32", value: v };
  });
  loadNative().launch(fn, grid, [k.threads, 1, 1], k.smemBytes, args, what);
}

const untuned = new Set<string>();

/** The chunk of a call that names none (dsl/algorithm.ts): the measured table of the first manifest
 * that has an entry for this device and spec, else the default rule (said once per device and spec,
 * on stderr). `built`: the chunks the manifests hold for the spec. */
export function autoChunk(a: ChooseChunkArgs, device: string | null, nothingBuilt: number, manifests: readonly Manifest[] = loadManifests()): number {
  const key = algorithmKey(a);
  const built = [...new Set(manifests.flatMap((m) => m.kernels.filter((k) => sameButChunk(k.spec, { ...a, chunk: 0 } as Spec)).map((k) => k.spec.chunk)))];
  if (built.length === 0) return nothingBuilt; // the lookup then reports what to build
  let entry: AlgorithmEntry | undefined;
  for (const m of manifests) if ((entry = device === null ? undefined : m.algorithms[device]?.[key])) break;
  if (!entry && !untuned.has(`${device}/${key}`)) {
    untuned.add(`${device}/${key}`);
    console.warn(`power-retention: no measured algorithm table for ${device ?? "this device"} and ${key}; the quadratic form up to the default length (codegen/algorithms.json, bench/algorithms.ts)`);
  }
  return chooseChunk(a, built, entry);
}
