// `retention`: the command line of the generator.
//   retention gen [options]     lower the DSL kernels of a selection of specs to CUDA (+ manifest)
//   retention build [options]   compile a generated folder's sources to fatbins (incremental)
// Every option is documented in `--help`; a bad option or value is an error that names it.

import { cpus } from "node:os";
import path from "node:path";
import { existsSync, readFileSync, mkdirSync, writeFileSync } from "node:fs";
import { DTYPES, isDType, type DType } from "../dsl/dtype.ts";
import { KERNELS } from "../dsl/kernels/index.ts";
import { checkSpec } from "../dsl/spec.ts";
import { auditKernels, formatAudit } from "./audit.ts";
import { DEFAULT_SCHEDULES_FILE, DEFAULT_SELECTION, generate, loadSchedules, REPO_ROOT, scheduleForTable, writeGenerated, type Selection } from "./gen.ts";
import { ARCHS, MANIFEST_FILE, parseManifest, type Arch } from "./manifest.ts";
import { compileAll, jobsOf, progressLine } from "./nvcc.ts";
import { fatbinDirs, kernelSearchPath, KERNELS_ENV, projectExtraDir } from "../dsl/contract/search-path.ts";
import { didYouMean } from "../dsl/contract/suggest.ts";

export class UsageError extends Error {}

/** The package's version (package.json). */
export function packageVersion(): string {
  return (JSON.parse(readFileSync(path.join(REPO_ROOT, "package.json"), "utf8")) as { version: string }).version;
}

interface OptionSpec {
  readonly name: string;
  readonly value: string | null; // metavariable, null for a flag
  readonly help: string;
  readonly commands: readonly ("gen" | "build")[];
}

const list = (xs: readonly (string | number)[]): string => xs.join(",");

const OPTIONS: readonly OptionSpec[] = [
  { name: "deg", value: "N[,N...]", help: `degrees of the power (positive even integers; default ${list(DEFAULT_SELECTION.degs)})`, commands: ["gen"] },
  { name: "d", value: "N[,N...]", help: `head dims of Q and K (default ${list(DEFAULT_SELECTION.ds)})`, commands: ["gen"] },
  { name: "e", value: "N[,N...]", help: "value head dims (default: e = d for each d)", commands: ["gen"] },
  { name: "chunk", value: "N[,N...]", help: `chunk sizes, powers of two >= 16 (default ${list(DEFAULT_SELECTION.chunks)})`, commands: ["gen"] },
  { name: "dtype", value: "T[,T...]", help: `dtypes of Q, K, V: ${list(DTYPES)} (default ${list(DEFAULT_SELECTION.dtypes)})`, commands: ["gen"] },
  { name: "arch", value: "A[,A...]", help: `GPU archs to build for: ${list(ARCHS)} (default ${list(DEFAULT_SELECTION.archs)})`, commands: ["gen"] },
  { name: "kernels", value: "K[,K...]", help: `kernels to generate, or all (default all): ${KERNELS.map((k) => k.name).join(", ")}`, commands: ["gen"] },
  { name: "out", value: "DIR", help: "folder of the sources and manifest: gen writes it (required; the package's own default set is --out generated, npm run gen:default), build reads it (default generated)", commands: ["gen", "build"] },
  { name: "schedules", value: "FILE", help: `tuned schedules, JSON { "<kernel>/<specKey>": { numWarps, blockD, blockT, stages } } (bench/autotune.ts writes it); a listed (kernel, spec) gets that schedule instead of its default (default: codegen/schedules.json when it exists)`, commands: ["gen"] },
  { name: "no-schedules", value: null, help: "ignore codegen/schedules.json: every kernel gets its default schedule", commands: ["gen"] },
  { name: "compile", value: null, help: "after gen, compile the sources to fatbins (see build)", commands: ["gen"] },
  { name: "build-dir", value: "DIR", help: "folder of the fatbins (default build/kernels)", commands: ["gen", "build"] },
  { name: "jobs", value: "N", help: `nvcc processes at once (default: the cores, ${cpus().length} here)`, commands: ["gen", "build"] },
  { name: "dump-ir", value: "DIR", help: "write each kernel's IR after every lowering pass and its final CUDA into DIR/<symbol>/", commands: ["gen"] },
  { name: "no-audit", value: null, help: "skip the one-source-of-truth audit of dsl/kernels (codegen/audit.ts)", commands: ["gen"] },
  { name: "help", value: null, help: "show this help", commands: ["gen", "build"] },
  { name: "version", value: null, help: "print the version and exit", commands: ["gen", "build"] },
];

/** Other spellings people reach for (the PyTorch API's names, single dashes' habits). */
const OPTION_HINTS: Readonly<Record<string, string>> = {
  degree: "deg", power: "deg", p: "deg", "chunk-size": "chunk", chunk_size: "chunk", "head-dim": "d", head_dim: "d",
  output: "out", "out-dir": "out", outdir: "out", o: "out", j: "jobs", dtypes: "dtype",
};

export function helpText(): string {
  const opt = (o: OptionSpec): string => {
    const head = `  --${o.name}${o.value ? ` ${o.value}` : ""}`;
    return `${head.padEnd(26)} ${o.help}${o.commands.length === 1 ? ` [${o.commands[0]}]` : ""}`;
  };
  return [
    "Usage: retention <command> [options]",
    "",
    "Commands:",
    "  gen      lower the DSL kernels (dsl/kernels) of every spec in the selection to CUDA:",
    "           one .cu per spec with all its kernels, the device header, feature tables,",
    "           manifest.json and a Makefile; the defaults are the default set (npm run gen:default)",
    "  build    compile the sources listed in <out>/manifest.json to fatbins in <build-dir>,",
    "           in parallel, skipping those whose inputs' hash is unchanged (npm run build:kernels)",
    "",
    "Options (lists are comma-separated; a spec is every combination of deg, d, e, chunk, dtype):",
    ...OPTIONS.map(opt),
    "",
    "Examples:",
    "  retention gen --d 64 --chunk 128 --dtype bf16 --out build/generated/p2_d64_c128 --compile",
    "  retention gen --d 64 --chunk 128 --dtype bf16 --kernels attention,update_state --out /tmp/k --dump-ir /tmp/ir",
    "  retention build --out build/generated/p2_d64_c128",
    "",
    "The runtime finds what gen writes under the project's build/generated/ (the project: the nearest",
    `folder at or above the working directory with a package.json), or in the folders listed in ${KERNELS_ENV}.`,
    "",
  ].join("\n");
}

interface Parsed {
  readonly command: "gen" | "build" | "help";
  readonly values: ReadonlyMap<string, string>;
  readonly flags: ReadonlySet<string>;
}

export function parseArgs(argv: readonly string[]): Parsed {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") return { command: "help", values: new Map(), flags: new Set() };
  if (command === "--version" || command === "-v" || command === "version") return { command: "help", values: new Map(), flags: new Set(["version"]) };
  if (command !== "gen" && command !== "build")
    throw new UsageError(`unknown command '${command}' (expected gen or build; see --help)`);
  const values = new Map<string, string>(), flags = new Set<string>();
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i]!;
    if (arg === "-h") {
      flags.add("help");
      continue;
    }
    if (!arg.startsWith("--")) throw new UsageError(`unexpected argument '${arg}' (options start with --; see --help)`);
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const o = OPTIONS.find((x) => x.name === name);
    const known = OPTIONS.filter((x) => x.commands.includes(command)).map((x) => `--${x.name}`);
    if (!o) {
      const guess = didYouMean(name, known.map((k) => k.slice(2)), OPTION_HINTS);
      const hint = guess !== null && known.includes(`--${guess}`) ? guess : null;
      throw new UsageError(`unknown option --${name}${hint ? ` (did you mean --${hint}?)` : ""}; expected one of ${known.join(", ")}`);
    }
    if (!o.commands.includes(command)) throw new UsageError(`option --${name} does not apply to ${command} (expected one of ${known.join(", ")})`);
    if (o.value === null) {
      if (eq >= 0) throw new UsageError(`option --${name} takes no value`);
      flags.add(name);
      continue;
    }
    const v = eq >= 0 ? arg.slice(eq + 1) : rest[++i];
    if (v === undefined || v === "") throw new UsageError(`option --${name} expects a value: ${o.value}`);
    if (values.has(name)) throw new UsageError(`option --${name} is given twice`);
    values.set(name, v);
  }
  return { command, values, flags };
}

/** A comma list with no value twice (`--deg 2,2` would generate and compile one file twice at once). */
function items(name: string, v: string): string[] {
  const xs = v.split(",");
  const dup = xs.find((x, i) => xs.indexOf(x) !== i);
  if (dup !== undefined) throw new UsageError(`--${name}: '${dup}' is listed twice`);
  return xs;
}

/** Decimal integers only: '0x2', '2e0', '2.0', ' 2' are errors, not 2. */
function ints(name: string, v: string, check: (n: number) => boolean, expected: string): number[] {
  const ns = items(name, v).map((s) => {
    const n = /^[0-9]{1,9}$/.test(s) ? Number(s) : NaN;
    if (!Number.isInteger(n) || !check(n)) throw new UsageError(`--${name}: expected ${expected} (decimal), received '${s}'`);
    return n;
  });
  const dup = ns.find((x, i) => ns.indexOf(x) !== i);
  if (dup !== undefined) throw new UsageError(`--${name}: ${dup} is listed twice`);
  return ns;
}

const isPow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

export function selectionOf(p: Parsed): Selection {
  const v = (n: string): string | undefined => p.values.get(n);
  const deg = v("deg"), d = v("d"), e = v("e"), chunk = v("chunk"), dtype = v("dtype"), arch = v("arch"), kernels = v("kernels");
  const dtypes = (dtype === undefined ? undefined : items("dtype", dtype))?.map((s) => {
    if (!isDType(s)) throw new UsageError(`--dtype: expected ${DTYPES.join(", ")}, received '${s}'`);
    return s as DType;
  });
  const archs = (arch === undefined ? undefined : items("arch", arch))?.map((s) => {
    if (!(ARCHS as readonly string[]).includes(s)) throw new UsageError(`--arch: expected ${ARCHS.join(", ")}, received '${s}'`);
    return s as Arch;
  });
  const names = kernels === undefined || kernels === "all" ? null : items("kernels", kernels);
  for (const n of names ?? [])
    if (!KERNELS.some((k) => k.name === n)) throw new UsageError(`--kernels: expected all or some of ${KERNELS.map((k) => k.name).join(", ")}, received '${n}'`);
  const sel: Selection = {
    degs: deg ? ints("deg", deg, (n) => n >= 2 && n % 2 === 0, "positive even integers") : DEFAULT_SELECTION.degs,
    ds: d ? ints("d", d, (n) => n >= 1, "positive integers") : DEFAULT_SELECTION.ds,
    es: e ? ints("e", e, (n) => n >= 1, "positive integers") : DEFAULT_SELECTION.es,
    chunks: chunk ? ints("chunk", chunk, (n) => n >= 16 && isPow2(n), "powers of two >= 16") : DEFAULT_SELECTION.chunks,
    dtypes: dtypes ?? DEFAULT_SELECTION.dtypes,
    archs: archs ?? DEFAULT_SELECTION.archs,
    kernels: names,
  };
  // every spec of the selection is checked now, so that a bad combination (deg 1000) is named as such
  for (const dg of sel.degs) for (const dd of sel.ds) for (const ee of sel.es ?? [dd]) {
    try {
      checkSpec({ deg: dg, d: dd, e: ee, chunk: sel.chunks[0]!, dtype: sel.dtypes[0]! });
    } catch (err) {
      throw new UsageError(`--deg/--d/--e: ${(err as Error).message}`);
    }
  }
  return sel;
}

export function jobsOption(p: Parsed): number {
  const j = p.values.get("jobs");
  return j === undefined ? cpus().length : ints("jobs", j, (n) => n >= 1, "a positive integer")[0]!;
}

const log = (s: string): void => void process.stderr.write(s + "\n");

async function build(srcDir: string, buildDir: string, jobs: number): Promise<number> {
  const manifestPath = path.join(srcDir, MANIFEST_FILE);
  let text: string;
  try {
    text = readFileSync(manifestPath, "utf8");
  } catch {
    throw new UsageError(`--out: no ${MANIFEST_FILE} in ${srcDir} (run \`retention gen\` first)`);
  }
  const jobsList = jobsOf(parseManifest(text, manifestPath), srcDir, buildDir);
  log(`nvcc: ${jobsList.length} sources -> ${path.relative(process.cwd(), buildDir) || "."} (${jobs} at a time)`);
  const r = await compileAll(jobsList, { concurrency: jobs, onEvent: (e) => log(progressLine(e)) });
  for (const f of r.failures) log(`\n${f.log}`);
  log(`nvcc: ${r.compiled} compiled, ${r.skipped} up to date, ${r.failures.length} failed in ${r.seconds.toFixed(1)} s`);
  return r.failures.length ? 1 : 0;
}

export async function main(argv: readonly string[]): Promise<number> {
  const p = parseArgs(argv);
  if (p.flags.has("version")) {
    process.stdout.write(`retention ${packageVersion()}\n`);
    return 0;
  }
  if (p.command === "help" || p.flags.has("help")) {
    process.stdout.write(helpText());
    return 0;
  }
  const outOpt = p.values.get("out");
  const out = path.resolve(outOpt ?? path.join(REPO_ROOT, "generated"));
  const buildDir = path.resolve(p.values.get("build-dir") ?? path.join(REPO_ROOT, "build", "kernels"));
  const jobs = jobsOption(p);
  if (p.command === "build") return build(out, buildDir, jobs);

  const selection = selectionOf(p);
  if (outOpt === undefined)
    throw new UsageError("gen: --out DIR is required (gen replaces the folder's sources); the package's own default set is regenerated with --out generated (npm run gen:default)");
  if (!p.flags.has("no-audit")) {
    const a = auditKernels();
    if (a.problems.length) throw new Error(`the kernel audit failed:\n${formatAudit(a)}`);
  }
  const schedulesOpt = p.values.get("schedules");
  if (schedulesOpt !== undefined && p.flags.has("no-schedules")) throw new UsageError("--schedules and --no-schedules exclude each other");
  const schedulesFile = schedulesOpt !== undefined ? path.resolve(schedulesOpt) : !p.flags.has("no-schedules") && existsSync(DEFAULT_SCHEDULES_FILE) ? DEFAULT_SCHEDULES_FILE : null;
  const tuned = schedulesFile ? loadSchedules(schedulesFile) : null;
  if (schedulesFile && tuned) log(`gen: ${tuned.size} tuned schedule${tuned.size === 1 ? "" : "s"} from ${path.relative(process.cwd(), schedulesFile) || schedulesFile}`);
  const dumpDir = p.values.get("dump-ir");
  const t0 = performance.now();
  const g = generate({
    selection,
    scheduleFor: tuned ? scheduleForTable(tuned) : undefined,
    onWarning: (m) => log(`warning: ${m}`),
    dump: dumpDir
      ? (symbol, step, text) => {
          const dir = path.resolve(dumpDir, symbol);
          mkdirSync(dir, { recursive: true });
          writeFileSync(path.join(dir, `${step}.${step.endsWith("-cuda") ? "cu" : "ir"}`), text);
        }
      : undefined,
  });
  const w = writeGenerated(out, g);
  const specs = g.manifest.files.length, kernels = g.manifest.kernels.length;
  log(`gen: ${kernels} kernels in ${specs} sources -> ${cliPath(out)} (${((performance.now() - t0) / 1000).toFixed(1)} s)` +
    (w.removed.length ? `; removed stale ${w.removed.join(", ")}` : ""));
  if (dumpDir) log(`gen: IR after each pass and the CUDA in ${dumpDir}`);
  if (!p.flags.has("compile")) {
    const bd = p.values.get("build-dir");
    log(`gen: next, compile them: npx retention build --out ${cliPath(out)}${bd ? ` --build-dir ${cliPath(buildDir)}` : ""} (or run gen with --compile)`);
    for (const l of whereTheRuntimeLooks(out, buildDir)) log(`gen: ${l}`);
    return 0;
  }
  const code = await build(out, buildDir, jobs);
  if (code === 0) for (const l of whereTheRuntimeLooks(out, buildDir)) log(`gen: ${l}`);
  return code;
}

/** A path as typed from the working directory: relative when inside it. */
function cliPath(p: string): string {
  const rel = path.relative(process.cwd(), p);
  return rel && !rel.startsWith("..") && !path.isAbsolute(rel) ? rel : p;
}

/** Whether the runtimes (TS, Python, run from this working directory) will find the manifest gen
 * wrote to `out` and the fatbins build puts in `buildDir`, and what to set when they will not. */
export function whereTheRuntimeLooks(out: string, buildDir: string): string[] {
  const manifest = path.join(out, MANIFEST_FILE);
  const place = kernelSearchPath().find((pl) => pl.manifests.includes(manifest));
  const lines = [
    place
      ? `the runtime finds ${cliPath(manifest)} on its kernel search path (${place.from === "project" ? "the project's build/generated" : place.from === "package" ? "the package's own" : place.from})`
      : `the runtime does not search ${cliPath(out)}: set ${KERNELS_ENV}=${path.resolve(out)} where you run it, or generate under ${cliPath(projectExtraDir())}/`,
  ];
  const dirs = fatbinDirs(manifest);
  if (!dirs.includes(path.resolve(buildDir)))
    lines.push(`the runtime looks for its fatbins in ${dirs.map(cliPath).join(", then ")}, not in ${cliPath(buildDir)}: set PRT_KERNEL_DIR=${path.resolve(buildDir)} (it then looks nowhere else), or use --build-dir ${cliPath(out)}`);
  return lines;
}

/** The process entry (bin.ts compiled, or bin.mjs through tsx): exit 2 on usage errors, 1 on failures. */
export async function run(argv: readonly string[]): Promise<void> {
  try {
    process.exitCode = await main(argv);
  } catch (e) {
    const usage = e instanceof UsageError;
    log(`retention: ${e instanceof Error ? e.message : String(e)}`);
    process.exitCode = usage ? 2 : 1;
  }
}
