// `gen`: every (spec, kernel) of a selection lowered to CUDA, one .cu per spec (all its kernels,
// so nvcc runs once per spec), the device header and feature tables beside them, a manifest and a
// Makefile. `generate` is pure (file name -> content); `writeGenerated` puts it on disk.

import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import Handlebars from "handlebars";
import type { DType } from "../dsl/dtype.ts";
import { printExpr } from "../dsl/print.ts";
import { KERNELS } from "../dsl/kernels/index.ts";
import { checkSpec, scheduleKey, specKey, tableSchedule, type KernelDef, type Schedule, type Spec } from "../dsl/spec.ts";
import type { AlgorithmTable } from "../dsl/algorithm.ts";
import { validateKernel } from "../dsl/validate.ts";
import { threadsOf } from "./lir.ts";
import { fitsByArch, manifestArgs, MANIFEST_FILE, MANIFEST_FORMAT, parseManifest, type Arch, type Manifest, type ManifestKernel, type ManifestPlan } from "./manifest.ts";
import { nvccFlags } from "./nvcc.ts";
import { lowerKernel } from "./pipeline.ts";
import { SMEM_LIMIT } from "./lower/rules.ts";
import { homeStep, kernelSymbol, planData, planSchedules } from "./plan-data.ts";
import { cArgs, tablesUsed } from "./render-cuda.ts";
import { renderSymPowHeader, symPowHeaderName } from "./render-tables.ts";
import { renderWgmmaHeader, WGMMA_HEADER, wgmmaKey, wgmmaShapes, type WgmmaShape } from "./render-wgmma.ts";
import { REPO_ROOT } from "../dsl/contract/package-root.ts";

export { REPO_ROOT };
const TEMPLATES = path.join(REPO_ROOT, "templates");
export const DEVICE_HEADER = "prt_tile.cuh";

export interface Selection {
  readonly degs: readonly number[];
  readonly ds: readonly number[];
  /** Value dims; null: e = d for each d. */
  readonly es: readonly number[] | null;
  readonly chunks: readonly number[];
  readonly dtypes: readonly DType[];
  readonly archs: readonly Arch[];
  /** Kernel names; null: all registered kernels. */
  readonly kernels: readonly string[] | null;
}

/** The default specialisations (`npm run gen:default`, README's build command). */
export const DEFAULT_SELECTION: Selection = {
  degs: [2],
  ds: [32, 64, 128],
  es: null,
  chunks: [64, 128],
  dtypes: ["f16", "bf16", "f32"],
  archs: ["sm_80", "sm_90a"],
  kernels: null,
};

export function specsOf(sel: Selection): Spec[] {
  const out: Spec[] = [];
  for (const deg of sel.degs)
    for (const d of sel.ds)
      for (const e of sel.es ?? [d])
        for (const chunk of sel.chunks) for (const dtype of sel.dtypes) out.push(checkSpec({ deg, d, e, chunk, dtype }));
  return out;
}

export function kernelsOf(sel: Selection): readonly KernelDef[] {
  const names = KERNELS.map((k) => k.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new Error(`dsl/kernels/index.ts: two kernels are named '${dup}' (names make the C symbols)`);
  if (sel.kernels === null) return KERNELS;
  return sel.kernels.map((n) => {
    const k = KERNELS.find((x) => x.name === n);
    if (!k) throw new Error(`--kernels: no kernel named '${n}' (expected one of ${KERNELS.map((x) => x.name).join(", ")}, or all)`);
    return k;
  });
}

export { kernelSymbol };

const sha256 = (s: string): string => createHash("sha256").update(s).digest("hex");

let templates: { file: HandlebarsTemplateDelegate; makefile: HandlebarsTemplateDelegate; manifest: HandlebarsTemplateDelegate } | null = null;
function compiledTemplates(): NonNullable<typeof templates> {
  if (templates) return templates;
  const hb = Handlebars.create();
  const read = (f: string): string => readFileSync(path.join(TEMPLATES, f), "utf8");
  hb.registerPartial("launchStubs", read("launch-stubs.cu.hbs"));
  hb.registerHelper("json", (v: unknown) => JSON.stringify(v));
  templates = {
    file: hb.compile(read("kernel-file.cu.hbs"), { noEscape: true, strict: true }),
    makefile: hb.compile(read("Makefile.hbs"), { noEscape: true, strict: true }),
    // one line per header, file and kernel: a diff shows what changed where
    manifest: hb.compile(read("manifest.json.hbs"), { noEscape: true, strict: true }),
  };
  return templates;
}

/** Where `gen` reads autotuned schedules by default (written by bench/autotune.ts), when it exists. */
export const DEFAULT_SCHEDULES_FILE = path.join(REPO_ROOT, "codegen", "schedules.json");

/** Tuned schedules by "<kernel>/<specKey>" (the schedules file's keys). */
export type ScheduleFile = Readonly<Record<string, Schedule>>;

const SCHEDULE_FIELDS = ["numWarps", "blockD", "blockT", "stages"] as const;

/**
 * Parse and check a schedules file: every key names a registered kernel and a well-formed spec
 * key, every schedule has the four positive integer fields, builds for its spec, and passes the
 * DSL validator. Throws an error naming the file and the entry.
 */
export function parseSchedules(text: string, where: string): Map<string, Schedule> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`${where}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new Error(`${where}: expected an object { "<kernel>/<specKey>": schedule }`);
  const out = new Map<string, Schedule>();
  for (const key of Object.keys(raw).sort()) {
    const bad = (m: string): never => {
      throw new Error(`${where}: entry '${key}': ${m}`);
    };
    const m = /^([a-z0-9_]+)\/p(\d+)_d(\d+)_e(\d+)_c(\d+)_(f16|bf16|f32)$/.exec(key);
    if (!m) bad(`expected a key '<kernel>/p<deg>_d<d>_e<e>_c<chunk>_<dtype>'`);
    const def = KERNELS.find((k) => k.name === m![1]);
    if (!def) bad(`no kernel named '${m![1]}' (expected one of ${KERNELS.map((k) => k.name).join(", ")})`);
    let spec: Spec;
    try {
      spec = checkSpec({ deg: Number(m![2]), d: Number(m![3]), e: Number(m![4]), chunk: Number(m![5]), dtype: m![6] as DType });
    } catch (e) {
      return bad((e as Error).message);
    }
    const v = (raw as Record<string, unknown>)[key];
    if (typeof v !== "object" || v === null) bad(`expected a schedule { numWarps, blockD, blockT, stages }, received ${JSON.stringify(v)}`);
    const o = v as Record<string, unknown>;
    // blockD is 0 for kernels with no feature blocks (the attention kernels); the kernel's own build
    // and the DSL validator below decide whether a schedule fits that kernel.
    for (const f of SCHEDULE_FIELDS) {
      const least = f === "blockD" ? 0 : 1;
      if (!Number.isInteger(o[f]) || (o[f] as number) < least)
        bad(`schedule.${f}: expected ${least === 0 ? "a non-negative" : "a positive"} integer, received ${JSON.stringify(o[f])}`);
    }
    const extra = Object.keys(o).filter((f) => !(SCHEDULE_FIELDS as readonly string[]).includes(f) && f !== "minBlocks");
    if (extra.length) bad(`unknown schedule field${extra.length > 1 ? "s" : ""} ${extra.join(", ")} (expected ${SCHEDULE_FIELDS.join(", ")}, and optionally minBlocks)`);
    if (o.minBlocks !== undefined && (!Number.isInteger(o.minBlocks) || (o.minBlocks as number) < 1 || (o.minBlocks as number) > 32))
      bad(`schedule.minBlocks: expected an integer in 1..32, received ${JSON.stringify(o.minBlocks)}`);
    const sch: Schedule = {
      numWarps: o.numWarps as number, blockD: o.blockD as number, blockT: o.blockT as number, stages: o.stages as number,
      ...(o.minBlocks !== undefined && o.minBlocks !== 1 ? { minBlocks: o.minBlocks as number } : {}),
    };
    let problems: string[];
    try {
      problems = validateKernel(def!.build(spec, sch));
    } catch (e) {
      return bad(`schedule ${scheduleKey(sch)} does not build: ${(e as Error).message}`);
    }
    if (problems.length) bad(`schedule ${scheduleKey(sch)} fails the DSL validator: ${problems.join("; ")}`);
    out.set(key, sch);
  }
  return out;
}

/** Read a schedules file (parseSchedules). */
export function loadSchedules(file: string): Map<string, Schedule> {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new Error(`--schedules: cannot read ${file} (${(e as Error).message})`);
  }
  return parseSchedules(text, file);
}

/** A GenOptions.scheduleFor from a schedules table: the listed schedule, else the kernel's default. */
export function scheduleForTable(table: ReadonlyMap<string, Schedule>): (k: KernelDef, spec: Spec) => Schedule {
  return (k, spec) => tableSchedule((key) => (key.includes("/") ? table.get(key) : undefined), k, spec);
}

/** The measured algorithm table (dsl/algorithm.ts) gen copies into every manifest. */
export const DEFAULT_ALGORITHMS_FILE = path.join(REPO_ROOT, "codegen", "algorithms.json");

export function loadAlgorithms(file: string = DEFAULT_ALGORITHMS_FILE): AlgorithmTable {
  if (!existsSync(file)) return {};
  const raw = JSON.parse(readFileSync(file, "utf8")) as unknown;
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new Error(`${file}: expected { "<device>": { "<p_d_e_dtype>": { quadraticMaxT, chunk } } }`);
  for (const [dev, specs] of Object.entries(raw as Record<string, unknown>))
    for (const [key, e] of Object.entries(specs as Record<string, unknown>)) {
      const x = e as Record<string, unknown>;
      if (!/^p\d+_d\d+_e\d+_(f16|bf16|f32)$/.test(key) || !Number.isInteger(x.quadraticMaxT) || !Number.isInteger(x.chunk))
        throw new Error(`${file}: entry ${dev} / ${key}: expected a key p<deg>_d<d>_e<e>_<dtype> and integers quadraticMaxT, chunk; received ${JSON.stringify(e)}`);
    }
  return raw as AlgorithmTable;
}

export interface GenOptions {
  readonly selection: Selection;
  /** The algorithm table to copy into the manifest (default codegen/algorithms.json). */
  readonly algorithms?: AlgorithmTable;
  /** Schedule per kernel and spec (an autotune result); default: the kernel's own default. */
  readonly scheduleFor?: (k: KernelDef, spec: Spec) => Schedule;
  /** Receives the IR after each pass and the final CUDA of every kernel. */
  readonly dump?: (kernelSymbol: string, step: string, text: string) => void;
  readonly onWarning?: (message: string) => void;
}

export interface Generated {
  /** File name (relative to the output folder) -> content. */
  readonly files: ReadonlyMap<string, string>;
  readonly manifest: Manifest;
}

export function generate(opts: GenOptions): Generated {
  const sel = opts.selection;
  const tpl = compiledTemplates();
  const files = new Map<string, string>();
  const header = readFileSync(path.join(TEMPLATES, DEVICE_HEADER), "utf8");
  files.set(DEVICE_HEADER, header);
  const flags = nvccFlags(sel.archs);
  const kernels: ManifestKernel[] = [];
  const plans: ManifestPlan[] = [];
  const manifestFiles: Manifest["files"][number][] = [];
  const defs = kernelsOf(sel);
  const wgmma = new Map<string, WgmmaShape>();
  // a chunk-free kernel is generated once per deg, d, e and dtype, under the smallest chunk (homeStep)
  const homeChunk = Math.min(...sel.chunks);
  for (const spec of specsOf(sel)) {
    const key = specKey(spec);
    const source = `${key}.cu`, fatbin = `${key}.fatbin`;
    const tables = new Map<string, string>();
    const parts = defs.filter((def) => !def.chunkFree || spec.chunk === homeChunk).map((def) => {
      const sch = opts.scheduleFor?.(def, spec) ?? def.schedule(spec);
      const symbol = kernelSymbol(def.name, spec, sch);
      let lowered;
      try {
        lowered = lowerKernel(def.build(spec, sch), { symbol, targets: sel.archs, minBlocks: sch.minBlocks, dump: opts.dump ? (step, text) => opts.dump!(symbol, step, text) : undefined });
      } catch (e) {
        throw new Error(`kernel ${def.name}, spec ${key}, schedule ${scheduleKey(sch)}: ${e instanceof Error ? e.message : String(e)}`);
      }
      // one launch size for every target's body: the largest (each target's own must fit it)
      const k = lowered.lir, smem = Math.max(...lowered.lirs.map((x) => x.smemBytes!));
      const fits = fitsByArch(smem, sel.archs);
      if (sel.archs.every((a) => !fits[a]))
        throw new Error(`kernel ${def.name}, spec ${key}: needs ${smem} bytes of shared memory per block, more than any requested arch allows (${sel.archs.map((a) => `${a}: ${SMEM_LIMIT[a]}`).join(", ")}); choose a schedule with smaller tiles`);
      for (const a of sel.archs) if (!fits[a]) opts.onWarning?.(`${symbol}: ${smem} bytes of shared memory do not fit ${a} (${SMEM_LIMIT[a]}); it will not launch there`);
      for (const t of tablesUsed(k)) tables.set(symPowHeaderName(t.d, t.deg), renderSymPowHeader(t.d, t.deg));
      for (const x of lowered.lirs) for (const w of wgmmaShapes(x)) wgmma.set(wgmmaKey(w), w);
      const args = cArgs(k);
      return {
        def, sch, symbol, k, smem, fits, cuda: lowered.cuda,
        stub: { symbol, threads: threadsOf(k), smemBytes: smem, params: args.join(", "), argNames: args.map((a) => a.split(" ").pop()).join(", ") },
      };
    });
    for (const [name, text] of tables) files.set(name, text);
    const tableNames = [...tables.keys()].sort();
    const text = tpl.file({
      file: source,
      specKey: key,
      spec,
      tables: tableNames,
      kernels: parts.map((p) => ({ name: p.def.name, cuda: p.cuda.trimEnd(), ...p.stub })),
    });
    files.set(source, text);
    const hash = sha256(text);
    manifestFiles.push({ source, sha256: hash, fatbin, includes: [DEVICE_HEADER, WGMMA_HEADER, ...tableNames] });
    for (const p of parts)
      kernels.push({
        name: p.def.name,
        specKey: key,
        spec,
        scheduleKey: scheduleKey(p.sch),
        schedule: p.sch,
        symbol: p.symbol,
        args: manifestArgs(p.k),
        grid: [printExpr(p.k.grid[0]), printExpr(p.k.grid[1]), printExpr(p.k.grid[2])],
        threads: threadsOf(p.k),
        smemBytes: p.smem,
        fits: p.fits,
        source,
        sourceSha256: hash,
        fatbin,
      });
    // the plans as data for the native runtime, with the schedules of the kernels just generated
    const scheduleFor = opts.scheduleFor ?? ((k: KernelDef, s: Spec) => k.schedule(s));
    plans.push(...planData(spec, planSchedules(spec, scheduleFor), (st) => homeStep(st, homeChunk, scheduleFor)));
  }
  files.set(WGMMA_HEADER, renderWgmmaHeader([...wgmma.values()]));
  const headers = [...files.keys()].filter((f) => f.endsWith(".cuh")).sort().map((file) => ({ file, sha256: sha256(files.get(file)!) }));
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    generator: "retention gen (codegen/gen.ts)",
    algorithms: opts.algorithms ?? loadAlgorithms(),
    archs: sel.archs,
    nvccFlags: flags,
    headers,
    files: manifestFiles,
    kernels,
    plans,
  };
  files.set(MANIFEST_FILE, tpl.manifest(manifest));
  files.set("Makefile", tpl.makefile({ flags: flags.join(" "), files: manifestFiles }));
  return { files, manifest };
}

/** Write a generation into `dir`, removing the files an earlier manifest there listed that this
 * one no longer produces (never anything else). */
export function writeGenerated(dir: string, g: Generated): { written: number; removed: string[] } {
  mkdirSync(dir, { recursive: true });
  const removed: string[] = [];
  const old = path.join(dir, MANIFEST_FILE);
  if (existsSync(old)) {
    try {
      const m = parseManifest(readFileSync(old, "utf8"), old);
      const owned = [...m.files.map((f) => f.source), ...m.headers.map((h) => h.file), "Makefile"];
      for (const f of owned)
        if (!g.files.has(f) && existsSync(path.join(dir, f))) {
          rmSync(path.join(dir, f));
          removed.push(f);
        }
    } catch {
      /* an unreadable old manifest: leave the folder's other files alone */
    }
  }
  for (const [name, text] of g.files) {
    const file = path.join(dir, name);
    if (!existsSync(file) || readFileSync(file, "utf8") !== text) writeFileSync(file, text);
  }
  return { written: g.files.size, removed };
}
