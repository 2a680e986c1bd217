// Run a plan (dsl/plan-types.ts) on the GPU: the twin of dsl/execute-cpu.ts. The plan says which
// buffers exist and which kernel launches fill them; this file only allocates, binds, launches and
// hands the outputs back. 'zeros' buffers are zeroed, 'input' buffers are the caller's, and 'nan'
// buffers (written by the plan before they are read) are poisoned with POISON_NAN when asked
// (opts.poison, or env PRT_POISON=1: the GPU tests do, so an element no kernel writes reads back as
// NaN) and otherwise left as allocated: poisoning is a memset of every output and temporary, 1.1 GB
// of per-chunk states for a 1 x 16384 forward, as the Python binding runs by default too.
//
// Everything that can be checked without the GPU (kernel lookup in the manifest, bindings, sizes,
// the caller's inputs) is checked before the first allocation.

import { dtypeBytes, type DType } from "../dsl/dtype.ts";
import { tensorDims } from "../dsl/interpret.ts";
import { printExpr } from "../dsl/print.ts";
import type { Kernel } from "../dsl/ir.ts";
import { numel, stepKernel, type Plan, type PlanStep } from "../dsl/plan-types.ts";
import { notReadError } from "../dsl/execute-cpu.ts";
export { stepKernel } from "../dsl/plan-types.ts";
import { scheduleKey, specKey, type Schedule } from "../dsl/spec.ts";
import { DeviceBuffer } from "./device.ts";
import {
  checkFatbin,
  DEFAULT_MANIFEST,
  defaultGenCommand,
  genCommand,
  launchKernel,
  loadKernel,
  loadManifests,
  lookupKernel,
  missingKernelsError,
  manifestGeneration,
  manifestSchedule,
  type KernelMiss,
  type ManifestKernel,
} from "./kernels.ts";
import { loadNative, type DevicePtr } from "./native.ts";
import { ArgumentError, requireGpu } from "./validate.ts";

/** Programs per grid axis of `k` for these params: its grid expressions, evaluated as the interpreter does. */
export function evalGrid(k: Kernel, params: Readonly<Record<string, number>>): [number, number, number] {
  // tensorDims evaluates integer expressions over params with the interpreter's own semantics
  // (idiv, mod, casts); a pseudo-tensor whose dims are the grid reuses it, so CPU and GPU agree.
  const probe: Kernel = { ...k, tensors: [{ name: "__grid", dtype: "f32", dims: k.grid, role: "in" }] };
  const g = tensorDims(probe, params).get("__grid")!;
  for (let i = 0; i < 3; i++)
    if (!Number.isInteger(g[i]) || g[i]! < 0)
      throw new Error(`${k.name}: grid[${i}] evaluates to ${g[i]} for params ${JSON.stringify(params)}; expected a non-negative integer`);
  return [g[0]!, g[1]!, g[2]!];
}

/** Schedules by "<kernel>/<specKey>" or kernel name (what the plan builders take, dsl/plan.ts). */
export type ScheduleTable = Readonly<Record<string, Schedule>>;

/**
 * Build a plan with the schedules the manifests hold for its steps (a manifest may carry autotuned
 * schedules, not the kernels' defaults), the caller's `given` ones taking precedence. `build` is
 * called with defaults first to learn the steps, then with the table, keyed per (kernel, spec).
 */
export function withManifestSchedules<T>(build: (sched: ScheduleTable) => T, planOf: (x: T) => Plan, given: ScheduleTable = {}): { built: T; schedules: ScheduleTable } {
  const table: Record<string, Schedule> = {};
  for (const step of planOf(build(given)).steps) {
    const name = step.kernel.name, key = `${name}/${specKey(step.spec)}`;
    if (name in given || key in given) continue;
    const sch = manifestSchedule(name, step.spec);
    if (sch) table[key] = sch;
  }
  const schedules = { ...table, ...given };
  return { built: build(schedules), schedules };
}

/** Something that holds a device buffer: a DeviceBuffer or a runtime Tensor. */
export type BufferSource = DeviceBuffer | { readonly buffer: DeviceBuffer; readonly shape: readonly number[]; readonly dtype: DType };

const bufferOf = (x: BufferSource): DeviceBuffer => (x instanceof DeviceBuffer ? x : x.buffer);
/** Bytes of a source, without touching the device (a Tensor's follow from its shape and dtype). */
const bytesOf = (x: BufferSource): number => (x instanceof DeviceBuffer ? x.bytes : numel(x.shape) * dtypeBytes(x.dtype));

/** What a plan builder made (`built`: a Plan, or a result holding one) with the manifests'
 * schedules, its plan's steps checked against them (preparePlan), ready to run. */
export interface PreparedPlan<T> {
  readonly built: T;
  readonly schedules: ScheduleTable;
  readonly steps: readonly PreparedStep[];
}

const preparedCache = new Map<string, PreparedPlan<unknown>>();

/**
 * withManifestSchedules + preparePlan, remembered per `key` (what the plan is a function of: its
 * kind, the problem, the caller's schedules) while the manifests stay as they are: building and
 * checking a plan took about 1 ms of host time per forward + backward call (b = 16, t = 1024: more
 * than the kernels' 0.73 ms on the H100), a lookup takes a few microseconds. A plan that fails its
 * checks is not remembered (its error comes back on every call).
 */
export function preparedPlan<T>(
  key: string, build: (sched: ScheduleTable) => T, planOf: (x: T) => Plan, given: ScheduleTable = {},
  names?: { readonly caller: string; readonly argOf: Readonly<Record<string, string>> },
): PreparedPlan<T> {
  loadManifests(); // re-reads a manifest that changed (and moves manifestGeneration)
  const k = `${manifestGeneration()}\u0000${key}\u0000${JSON.stringify(given)}`;
  const hit = preparedCache.get(k);
  if (hit) return hit as PreparedPlan<T>;
  const { built, schedules } = withManifestSchedules(build, planOf, given);
  const prepared = { built, schedules, steps: preparePlan(planOf(built), names) };
  if (preparedCache.size >= 512) preparedCache.clear(); // sizes can vary without end
  preparedCache.set(k, prepared);
  return prepared;
}

// The temporaries of every plan run here live in one device buffer kept between calls (grown when a
// plan needs more): an allocation and a free per temporary per call cost more host time than a
// small problem's kernels. Every call ends synchronized, so the next one may reuse it at once.
let workspace: DeviceBuffer | null = null;

function workspaceOf(bytes: number): DeviceBuffer {
  if (workspace && workspace.bytes >= bytes) return workspace;
  workspace?.free();
  workspace = null;
  workspace = DeviceBuffer.alloc(Math.max(bytes, 256));
  return workspace;
}

/** Free the workspace the plans' temporaries share (it holds the largest plan's temporaries so far). */
export function releaseWorkspace(): void {
  workspace?.free();
  workspace = null;
}

export interface GpuRunOptions {
  /** Synchronize after every launch, so an asynchronous fault names the kernel that caused it. */
  readonly syncEachLaunch?: boolean;
  /** Plan buffers to hand back besides the plan's outputs (e.g. for debugging). */
  readonly keep?: readonly string[];
  /** The API function on whose behalf the plan runs, for error messages (default executeOnGpu). */
  readonly caller?: string;
  /** The API argument each plan param comes from (e.g. { b: "Q" }): a size over a limit is then an
   * ArgumentError naming it. */
  readonly argOf?: Readonly<Record<string, string>>;
  /** The API argument each input buffer is (default its buffer name), for errors. */
  readonly inputArg?: Readonly<Record<string, string>>;
  /** Called after each launch with its description (name{spec}{schedule} grid, block, smem). */
  readonly onLaunch?: (what: string) => void;
  /** The plan's steps as preparePlan checked them (preparedPlan); else they are checked here. */
  readonly prepared?: readonly PreparedStep[];
  /** Fill the 'nan' buffers with NaN first (default: env PRT_POISON=1). */
  readonly poison?: boolean;
}

/** A launch, fully resolved before anything runs. */
export interface PreparedStep {
  readonly step: PlanStep;
  readonly kernel: Kernel;
  readonly entry: ManifestKernel;
  readonly grid: [number, number, number];
  readonly what: string;
}

/** CUDA's grid size limits per axis. */
const GRID_LIMITS = [2 ** 31 - 1, 65535, 65535] as const;

const regenCommand = (k: ManifestKernel): string => (k.manifest === DEFAULT_MANIFEST ? defaultGenCommand() : genCommand(k.spec));

/** Check a plan against the manifest and itself; throws before any GPU work. With `names`, a grid
 * over CUDA's limits is an ArgumentError of `names.caller` naming the argument its sizes come from. */
export function preparePlan(plan: Plan, names?: { readonly caller: string; readonly argOf: Readonly<Record<string, string>> }): PreparedStep[] {
  const buffers = new Map(plan.buffers.map((b) => [b.name, b]));
  for (const o of plan.outputs) if (!buffers.has(o)) throw new Error(`plan output '${o}' is not a plan buffer`);
  const manifests = loadManifests();
  const found = plan.steps.map((step) => lookupKernel(step.kernel.name, step.spec, step.schedule, manifests));
  const misses = found.filter((f): f is KernelMiss => !("symbol" in f));
  if (misses.length) throw missingKernelsError(misses, manifests);
  return plan.steps.map((step, i) => {
    const kernel = stepKernel(step);
    const entry = found[i] as ManifestKernel;
    const dims = tensorDims(kernel, step.params);
    for (const t of kernel.tensors) {
      const name = step.bind[t.name];
      if (!name) throw new Error(`step ${kernel.name}: kernel tensor '${t.name}' is not bound to a plan buffer`);
      const buf = buffers.get(name);
      if (!buf) throw new Error(`step ${kernel.name}: tensor '${t.name}' is bound to '${name}', which is not a plan buffer`);
      const n = dims.get(t.name)!.reduce((a, b) => a * b, 1);
      if (n !== numel(buf.shape) || t.dtype !== buf.dtype)
        throw new Error(
          `step ${kernel.name}: tensor '${t.name}' is ${t.dtype} [${dims.get(t.name)}] but plan buffer '${name}' is ${buf.dtype} [${buf.shape}]`,
        );
    }
    // the compiled kernel must be the DSL kernel of today: same arguments, grid and block
    const stale = (what: string): never => {
      throw new Error(`kernel ${entry.symbol} in ${entry.manifest}: ${what}: the generated code is stale; regenerate it with \`${regenCommand(entry)}\``);
    };
    const expected = [...kernel.tensors.map((t) => t.name), ...kernel.params.map((p) => p.name)];
    if (entry.args.join(",") !== expected.join(",")) stale(`takes (${entry.args.join(", ")}) but the DSL kernel takes (${expected.join(", ")})`);
    const grid0 = kernel.grid.map(printExpr);
    if (entry.grid && entry.grid.join(" | ") !== grid0.join(" | ")) stale(`its grid is (${entry.grid.join(", ")}) but the DSL kernel's is (${grid0.join(", ")})`);
    if (entry.threads !== 32 * kernel.numWarps) stale(`it runs ${entry.threads} threads per block but the DSL kernel has ${kernel.numWarps} warps`);
    const grid = evalGrid(kernel, step.params);
    GRID_LIMITS.forEach((lim, i) => {
      if (grid[i]! <= lim) return;
      const expr = printExpr(kernel.grid[i]!).replace(/\$/g, "");
      const msg =
        `${expr} = ${grid[i]} (${Object.entries(step.params).map(([k, v]) => `${k} = ${v}`).join(", ")}) is more than ${lim}, ` +
        `the most programs CUDA runs on axis ${"xyz"[i]} of kernel ${kernel.name}'s grid; split the call (smaller b or fewer heads per call)`;
      const param = names && Object.keys(names.argOf).find((k) => new RegExp(`\\b${k}\\b`).test(expr));
      if (names && param) throw new ArgumentError(names.caller, names.argOf[param]!, msg);
      throw new Error(msg);
    });
    const what = `${kernel.name}{${specKey(step.spec)}}{${scheduleKey(step.schedule)}}`;
    return { step, kernel, entry, grid, what };
  });
}

/**
 * Run `plan` on the GPU. `inputs` gives a device buffer (or Tensor) for every 'input' buffer of the
 * plan, of the buffer's size and dtype; kernels that write an input buffer update it in place.
 * Returns the plan's outputs (and `keep`) by name: buffers allocated here belong to the caller from
 * then on; an output that is an input is returned as the caller's own buffer. The temporaries live
 * in the shared workspace (releaseWorkspace frees it); an output allocated here is freed on error.
 */
export function executeOnGpu(
  plan: Plan,
  inputs: Readonly<Record<string, BufferSource>>,
  opts: GpuRunOptions = {},
): Record<string, DeviceBuffer> {
  // ---- everything that needs no GPU ------------------------------------------------------------
  const prepared = opts.prepared ?? preparePlan(plan, opts.argOf ? { caller: opts.caller ?? "executeOnGpu", argOf: opts.argOf } : undefined);
  for (const b of plan.buffers) {
    if (b.init !== "input") {
      if (inputs[b.name]) throw new Error(notReadError(b.name, b.init));
      continue;
    }
    const x = inputs[b.name];
    if (!x) throw new Error(`plan input '${b.name}' missing`);
    const bytes = numel(b.shape) * dtypeBytes(b.dtype);
    if (bytesOf(x) !== bytes)
      throw new Error(`plan input '${b.name}': expected ${bytes} bytes for ${b.dtype} [${b.shape}], received ${bytesOf(x)}`);
    if (!(x instanceof DeviceBuffer) && x.dtype !== b.dtype)
      throw new Error(`plan input '${b.name}': expected dtype ${b.dtype}, received ${x.dtype}`);
  }
  const handBack = new Set([...plan.outputs, ...(opts.keep ?? [])]);
  for (const k of handBack) if (!plan.buffers.some((b) => b.name === k)) throw new Error(`keep: '${k}' is not a plan buffer`);
  requireGpu(opts.caller ?? "executeOnGpu");
  for (const b of plan.buffers) {
    const x = inputs[b.name];
    if (b.init === "input" && !(x instanceof DeviceBuffer) && !((x as { buffer?: unknown }).buffer instanceof DeviceBuffer))
      throw new ArgumentError(opts.caller ?? "executeOnGpu", opts.inputArg?.[b.name] ?? b.name,
        "expected a Tensor (Tensor.upload, zeros or empty), received an object with a tensor's fields but no device memory");
  }
  for (const p of prepared) checkFatbin(p.entry);

  // ---- on the GPU ----------------------------------------------------------------------------
  const native = loadNative();
  const fns = prepared.map((p) => loadKernel(p.entry));
  const poison = opts.poison ?? process.env.PRT_POISON === "1";
  const mem = new Map<string, DeviceBuffer>();
  const ptr = new Map<string, DevicePtr>();
  const owned: [string, DeviceBuffer][] = [];
  // temporaries: 256-aligned places in the shared workspace
  const temps = plan.buffers.filter((b) => b.init !== "input" && !handBack.has(b.name));
  const offsets: number[] = [];
  let total = 0;
  for (const b of temps) offsets.push(total), (total += Math.ceil((numel(b.shape) * dtypeBytes(b.dtype)) / 256) * 256);
  let ok = false;
  try {
    const ws = workspaceOf(total);
    temps.forEach((b, i) => {
      const p = ws.ptr + BigInt(offsets[i]!), bytes = numel(b.shape) * dtypeBytes(b.dtype);
      ptr.set(b.name, p);
      if (bytes && b.init === "zeros") native.memsetD8(p, 0, bytes);
      else if (bytes && poison) native.memsetD8(p, 0xff, bytes); // POISON_NAN: every byte 0xff
    });
    for (const b of plan.buffers) {
      if (b.init === "input") {
        mem.set(b.name, bufferOf(inputs[b.name]!));
        continue;
      }
      if (!handBack.has(b.name)) continue;
      const buf = DeviceBuffer.alloc(numel(b.shape) * dtypeBytes(b.dtype));
      owned.push([b.name, buf]);
      mem.set(b.name, buf);
      if (b.init === "zeros") buf.zero();
      else if (poison) buf.poison();
    }
    for (const [name, buf] of mem) ptr.set(name, buf.ptr);
    prepared.forEach((p, i) => {
      launchKernel(fns[i]!, p.entry, p.kernel, p.grid, p.step.params, (t) => ptr.get(p.step.bind[t]!)!, p.what);
      if (opts.syncEachLaunch) native.synchronize();
      opts.onLaunch?.(`${p.what} grid=(${p.grid}) block=${p.entry.threads} smem=${p.entry.smemBytes}`);
    });
    native.synchronize();
    ok = true;
  } finally {
    for (const [name, buf] of owned) {
      if (ok && handBack.has(name)) continue;
      try {
        buf.free();
      } catch (e) {
        if (ok) throw e; // else keep the error that got us here (a sticky fault fails every free)
      }
    }
  }
  return Object.fromEntries([...handBack].map((o) => [o, mem.get(o)!]));
}
