// The public TypeScript API: device tensors, powerRetention (forward), its backward, and a decoder.
//
// Composition lives in the plans (dsl/plan.ts, dsl/plan-backward.ts, dsl/plan-decode.ts), the same
// ones the CPU interpreter runs; this file checks arguments, picks the schedules the manifest holds,
// runs the plan on the GPU (runtime/execute-gpu.ts) and wraps what comes back in Tensors.
// Every argument check runs before any GPU work, so bad calls fail the same way without a GPU.

import type { DType, TensorDType } from "../dsl/dtype.ts";
import { backwardPlan } from "../dsl/plan-backward.ts";
import { decodePlan, decodeStateBuffers, type DecodeProblem, type DecodeState } from "../dsl/plan-decode.ts";
import { forwardPlan, type Problem, type ScheduleTable } from "../dsl/plan.ts";
import { checkCuSeqlens, VARLEN_TABLES, varlenBackwardPlan, varlenForwardPlan, varlenTables, type VarlenProblem } from "../dsl/plan-varlen.ts";
import { numel } from "../dsl/plan-types.ts";
import { cudaAvailable, DeviceBuffer } from "./device.ts";
import { autoChunk } from "./kernels.ts";
import { executeOnGpu, preparedPlan, preparePlan, withManifestSchedules, type BufferSource } from "./execute-gpu.ts";
import { Tensor } from "./tensor.ts";
import { encode } from "./convert.ts";
import {
  ArgumentError,
  checkDType,
  checkQKVG,
  checkGateValues,
  checkOptionNames,
  checkRetentionOptions,
  checkState,
  checkTensor,
  checkTensorDType,
  checkTensorShape,
  requireGpu,
  show,
  type TensorInfo,
} from "./validate.ts";

export { Tensor } from "./tensor.ts";
export { cudaAvailable, type CudaAvailability } from "./device.ts";
export { ArgumentError, GpuUnavailableError, DEFAULT_CHUNK } from "./validate.ts";
export { MissingKernelError, genCommand, buildCommand, findKernel, loadManifests } from "./kernels.ts";
export { KERNELS_ENV, kernelSearchPath, manifestPaths, fatbinDirs, projectRoot, type SearchPlace } from "../dsl/contract/search-path.ts";
export { evalGrid, executeOnGpu, preparedPlan, preparePlan, releaseWorkspace, withManifestSchedules } from "./execute-gpu.ts";
export { NativeRuntime, NativePlan, loadNativePlans, BUF_INPUT, BUF_OUTPUT, BUF_TEMP, type NativeProblem, type NativeBuffer } from "./native-plans.ts";
export { f16Bits, bf16Bits, f16Value, bf16Value } from "./convert.ts";

/** A recurrent state: S [b, h, D, e] and Z [b, h, D], f32 (D = binomial(d + deg - 1, deg)). */
export interface RetentionState {
  readonly S: Tensor;
  readonly Z: Tensor;
}

export interface RetentionOptions {
  /** Degree p of the power, a positive even integer. Default 2. */
  readonly deg?: number;
  /** Default 1 / sqrt(d). */
  readonly scale?: number;
  /** Chunk size c, a power of two >= 16; c >= t is the quadratic form. Changes how the work is
   * split, not the result. Default: chosen per problem (dsl/algorithm.ts): the quadratic form
   * while it is cheaper (a table measured on the GPU, or the default rule), else a built chunk. */
  readonly chunk?: number;
  /** The state before the first token (default zero). Read, not kept: the caller still owns it. */
  readonly initialState?: RetentionState;
  /** Also return the state after the last token. */
  readonly returnState?: boolean;
  /** Schedules by kernel name, over the ones the manifest holds for the spec. */
  readonly schedules?: ScheduleTable;
  /** Synchronize after every launch (slower; an asynchronous fault then names its kernel). */
  readonly syncEachLaunch?: boolean;
  /** Read logG back to the host first (a sync) and reject values > 0 or NaN, naming the first
   * (validate.ts, checkGateValues). Off by default: the kernels do not check gates. */
  readonly checkGates?: boolean;
  /** Packed variable-length sequences (README "Variable-length sequences"): Q, K, V, logG hold
   * ns sequences back to back along t (b = 1), sequence s on rows [cuSeqlens[s], cuSeqlens[s + 1]);
   * no token attends across a boundary. ns + 1 offsets on the host, from 0 to t, not decreasing
   * (an empty sequence is allowed). initialState and the returned state then hold one state per
   * sequence: [ns, h, D, e] and [ns, h, D]. */
  readonly cuSeqlens?: readonly number[] | Int32Array;
}

/**
 * What the backward needs from a forward call. It references the call's inputs and Y (owned by the
 * caller: keep them alive until the backward ran) and owns lse and the per-chunk states Sin, Zin
 * (absent when the forward took the one-chunk short path): free() releases those.
 */
export interface RetentionSaved {
  readonly problem: Problem;
  readonly schedules: ScheduleTable;
  readonly Q: Tensor;
  readonly K: Tensor;
  readonly V: Tensor;
  readonly logG: Tensor | null;
  readonly initialState: RetentionState | null;
  readonly Y: Tensor;
  /** log of the normaliser l_i, [b, t, hq] f32. */
  readonly lse: Tensor;
  /** The state's part of y [b, t, hq, e] and of the weights [b, t, hq] (f32), under the final normaliser. */
  readonly yS: Tensor;
  readonly wS: Tensor;
  /** The state each chunk read, [b, h, n, D, e] and [b, h, n, D] f32, or null on the short path. */
  readonly Sin: Tensor | null;
  readonly Zin: Tensor | null;
  readonly syncEachLaunch: boolean;
  free(): void;
}

export interface RetentionResult {
  /** [b, t, hq, e], the dtype of Q. */
  readonly Y: Tensor;
  /** The state after the last token, when `returnState`. */
  readonly state?: RetentionState;
  readonly saved: RetentionSaved;
}

/** The argument each plan size comes from, for size-limit errors (execute-gpu.ts, argOf). */
const CALL_SIZES = { b: "Q", t: "Q", n: "Q", hq: "Q", h: "K" } as const;
const DECODER_SIZES = { b: "opts.b", hq: "opts.hq", h: "opts.h", tq: "opts.chunk", tn: "Q" } as const;

const gpuInputs = (x: Record<string, Tensor | null | undefined>): Record<string, BufferSource> =>
  Object.fromEntries(Object.entries(x).filter((e): e is [string, Tensor] => !!e[1]));

function wrap(buffers: Record<string, DeviceBuffer>, plan: { buffers: readonly { name: string; shape: readonly number[]; dtype: TensorDType }[] }, name: string): Tensor {
  const b = plan.buffers.find((x) => x.name === name)!;
  if (b.dtype === "i32") throw new Error(`plan output '${name}' is an i32 table, not a tensor of values`);
  return Tensor.fromBuffer(buffers[name]!, b.shape, b.dtype);
}

/**
 * Power retention (SPEC.md): Y [b,t,hq,e] from Q [b,t,hq,d], K [b,t,h,d], V [b,t,h,e] (one dtype)
 * and logG [b,t,h] (f32, <= 0) or null for no gate.
 */
export function powerRetention(Q: Tensor, K: Tensor, V: Tensor, logG: Tensor | null, opts: RetentionOptions = {}): RetentionResult {
  const fn = "powerRetention";
  if (typeof opts !== "object" || opts === null) throw new ArgumentError(fn, "opts", `expected an options object, received ${String(opts)}`);
  checkOptionNames(fn, "opts", opts, ["deg", "scale", "chunk", "initialState", "returnState", "schedules", "syncEachLaunch", "checkGates", "cuSeqlens"], ["returnState", "syncEachLaunch", "checkGates"]);
  const sizes = checkQKVG(fn, Q, K, V, logG);
  const o = checkRetentionOptions(fn, sizes.d, opts, sizes.e);
  const cu = opts.cuSeqlens === undefined ? null : checkCuSeqlensArg(fn, opts.cuSeqlens, sizes);
  const states = cu ? cu.length - 1 : sizes.b; // one state per sequence
  const init = opts.initialState ? checkState(fn, "opts.initialState", opts.initialState, { ...sizes, b: states, deg: o.deg }, (Q as TensorInfo).device) : null;
  if (opts.checkGates && logG) checkGateValues(fn, "logG", logG.download(), [sizes.b, sizes.t, sizes.h]);
  // no chunk given: the algorithm per problem (dsl/algorithm.ts), the quadratic form while it is cheaper
  const device = cudaAvailable();
  // (packed sequences take the chunked form: its windows are chunks, each sequence starting one)
  const chunk = opts.chunk !== undefined ? o.chunk
    : autoChunk({ ...sizes, deg: o.deg, initialState: init !== null, finalState: opts.returnState === true || cu !== null }, device.ok ? device.name : null, o.chunk);
  const dense: Problem = {
    ...sizes, deg: o.deg, chunk, scale: o.scale,
    gated: logG !== null && logG !== undefined,
    initialState: init !== null,
    finalState: opts.returnState === true,
  };
  const problem: Problem | VarlenProblem = cu ? { ...dense, cuSeqlens: cu } : dense;
  const { built: plan, schedules, steps } = preparedPlan(JSON.stringify(["forward", problem]),
    (s) => (isVarlen(problem) ? varlenForwardPlan(problem, s) : forwardPlan(problem, s)), (x) => x, opts.schedules, { caller: fn, argOf: CALL_SIZES });
  const out = withTables(problem, (tables) => executeOnGpu(
    plan,
    { ...gpuInputs({ Q, K, V, logG, S0: opts.initialState?.S, Z0: opts.initialState?.Z }), ...tables },
    { syncEachLaunch: opts.syncEachLaunch, caller: fn, argOf: CALL_SIZES, inputArg: { S0: "opts.initialState.S", Z0: "opts.initialState.Z" }, prepared: steps },
  ));
  const Y = wrap(out, plan, "Y");
  const lse = wrap(out, plan, "lse");
  const yS = wrap(out, plan, "yS");
  const wS = wrap(out, plan, "wS");
  const Sin = out.Sin ? wrap(out, plan, "Sin") : null;
  const Zin = out.Zin ? wrap(out, plan, "Zin") : null;
  const saved: RetentionSaved = {
    problem, schedules, Q, K, V, logG: logG ?? null,
    initialState: opts.initialState ?? null,
    Y, lse, yS, wS, Sin, Zin,
    syncEachLaunch: opts.syncEachLaunch === true,
    free() {
      lse.free();
      yS.free();
      wS.free();
      Sin?.free();
      Zin?.free();
    },
  };
  const state = problem.finalState ? { S: wrap(out, plan, "Sfinal"), Z: wrap(out, plan, "Zfinal") } : undefined;
  return state ? { Y, state, saved } : { Y, saved };
}

export interface RetentionGradients {
  readonly dQ: Tensor; // [b, t, hq, d], dtype
  readonly dK: Tensor; // [b, t, h, d], dtype
  readonly dV: Tensor; // [b, t, h, e], dtype
  /** [b, t, h] f32; null when the forward had no gate. */
  readonly dlogG: Tensor | null;
  /** Gradient of the initial state, when the forward was given one. */
  readonly dInitialState?: RetentionState;
}

export interface BackwardOptions {
  /** Gradient of the returned final state (the forward must have had `returnState`); default zero. */
  readonly dState?: RetentionState;
}

/** The gradients of powerRetention for the incoming gradient dY [b, t, hq, e] (the dtype of Y). */
export function powerRetentionBackward(saved: RetentionSaved, dY: Tensor, opts: BackwardOptions = {}): RetentionGradients {
  const fn = "powerRetentionBackward";
  if (typeof saved !== "object" || saved === null || !("problem" in saved))
    throw new ArgumentError(fn, "saved", `expected the 'saved' of a powerRetention result, received ${String(saved)}`);
  if (typeof opts !== "object" || opts === null) throw new ArgumentError(fn, "opts", `expected an options object, received ${String(opts)}`);
  checkOptionNames(fn, "opts", opts, ["dState"]);
  const fwd = saved.problem;
  // everything the plan reads must still be alive
  const live: [string, Tensor | null][] = [
    ["saved.Q", saved.Q], ["saved.K", saved.K], ["saved.V", saved.V], ["saved.logG", saved.logG],
    ["saved.initialState.S", saved.initialState?.S ?? null], ["saved.initialState.Z", saved.initialState?.Z ?? null],
    ["saved.Y", saved.Y], ["saved.lse", saved.lse], ["saved.yS", saved.yS], ["saved.wS", saved.wS], ["saved.Sin", saved.Sin], ["saved.Zin", saved.Zin],
  ];
  for (const [name, t] of live) if (t) checkTensor(fn, name, t);
  const dy = checkTensor(fn, "dY", dY);
  checkTensorShape(fn, "dY", dy, saved.Y.shape, " (the shape of Y)");
  checkTensorDType(fn, "dY", dy, saved.Y.dtype, " (the dtype of Y)");
  if (dy.device !== saved.Q.device)
    throw new ArgumentError(fn, "dY", `expected a tensor on device ${saved.Q.device} (the device of Q), received one on device ${dy.device}`);
  const dState = opts.dState ?? null;
  if (dState) {
    if (!fwd.finalState)
      throw new ArgumentError(fn, "opts.dState", "expected no state gradient: the forward was called without returnState, so it returned no state");
    checkState(fn, "opts.dState", dState, { ...fwd, b: isVarlen(fwd) ? fwd.cuSeqlens.length - 1 : fwd.b }, saved.Q.device);
  }
  // The backward takes the forward's path: a forward with returnState ran the chunked plan, whose yS
  // is the state's part of y, not the y the quadratic backward reads there; its state gradient is
  // zero when none is given.
  const problem: Problem = fwd;
  const argOf = { ...CALL_SIZES, b: "dY", t: "dY", n: "dY", hq: "dY", h: "saved.K" };
  const { built: plan, steps } = preparedPlan(JSON.stringify(["backward", problem]),
    (s) => (isVarlen(problem) ? varlenBackwardPlan(problem, s) : backwardPlan(problem, s)), (x) => x, saved.schedules, { caller: fn, argOf });
  const zeroGrad = fwd.finalState && !dState ? zeroStateOf(plan) : null;
  const inputs = gpuInputs({
    Q: saved.Q, K: saved.K, V: saved.V, logG: saved.logG,
    S0: saved.initialState?.S, Z0: saved.initialState?.Z,
    Y: saved.Y, lse: saved.lse, yS: saved.yS, wS: saved.wS, Sin: saved.Sin, Zin: saved.Zin, dY,
    dSfinal: dState?.S ?? zeroGrad?.S, dZfinal: dState?.Z ?? zeroGrad?.Z,
  });
  const tableNames: readonly string[] = isVarlen(problem) ? VARLEN_TABLES : [];
  for (const b of plan.buffers)
    if (b.init === "input" && !inputs[b.name] && !tableNames.includes(b.name))
      throw new Error(`${fn}: the backward plan reads '${b.name}', which the forward did not keep (a plan mismatch)`);
  let out: ReturnType<typeof executeOnGpu>;
  try {
    out = withTables(problem, (tables) => executeOnGpu(plan, { ...inputs, ...tables }, { syncEachLaunch: saved.syncEachLaunch, caller: fn,
      argOf, prepared: steps,
      inputArg: { ...Object.fromEntries(Object.keys(inputs).map((k) => [k, `saved.${k}`])), S0: "saved.initialState.S", Z0: "saved.initialState.Z", dY: "dY", dSfinal: "opts.dState.S", dZfinal: "opts.dState.Z" },
    }));
  } finally {
    zeroGrad?.S.free();
    zeroGrad?.Z.free();
  }
  const dlogG = wrap(out, plan, "dlogG");
  if (!problem.gated) dlogG.free();
  const grads = {
    dQ: wrap(out, plan, "dQ"), dK: wrap(out, plan, "dK"), dV: wrap(out, plan, "dV"),
    dlogG: problem.gated ? dlogG : null,
  };
  return out.dS0 ? { ...grads, dInitialState: { S: wrap(out, plan, "dS0"), Z: wrap(out, plan, "dZ0") } } : grads;
}

/** A problem over packed sequences (opts.cuSeqlens). */
const isVarlen = (p: Problem): p is VarlenProblem => "cuSeqlens" in p;

/** Run `f` with the tables of a varlen problem on the device (varlenTables), freed after; none otherwise. */
function withTables<T>(p: Problem, f: (tables: Record<string, DeviceBuffer>) => T): T {
  if (!isVarlen(p)) return f({});
  const tables: Record<string, DeviceBuffer> = {};
  try {
    for (const [name, values] of Object.entries(varlenTables(p))) tables[name] = DeviceBuffer.from(encode(values, "i32"));
    return f(tables);
  } finally {
    for (const t of Object.values(tables)) t.free();
  }
}

/** opts.cuSeqlens as offsets, checked against Q's b (1) and t (the last offset). */
function checkCuSeqlensArg(fn: string, cu: unknown, sizes: { b: number; t: number }): readonly number[] {
  if (sizes.b !== 1)
    throw new ArgumentError(fn, "Q", `expected b = 1 with opts.cuSeqlens (the sequences packed along t: [1, total, hq, d]), received b = ${sizes.b}`);
  return checkCuSeqlens(cu, sizes.t, "opts.cuSeqlens", (arg, detail) => {
    throw new ArgumentError(fn, arg, detail);
  });
}

/** Zero gradients of the final state, shaped as the backward plan's dSfinal and dZfinal. */
function zeroStateOf(plan: ReturnType<typeof backwardPlan>): { S: Tensor; Z: Tensor } {
  const shape = (name: string): number[] => [...plan.buffers.find((b) => b.name === name)!.shape];
  return { S: Tensor.zeros(shape("dSfinal"), "f32"), Z: Tensor.zeros(shape("dZfinal"), "f32") };
}

// ---- decoding -------------------------------------------------------------------------------------

export interface DecoderOptions {
  readonly b: number;
  readonly hq: number;
  readonly h: number;
  readonly d: number;
  /** Default d. */
  readonly e?: number;
  readonly deg?: number;
  /** Tokens the cache holds before they are folded into the state. Default 64. */
  readonly chunk?: number;
  /** Of q, k, v and y. Default f32. */
  readonly dtype?: DType;
  /** Default 1 / sqrt(d). */
  readonly scale?: number;
  /** Whether step() takes log gates. */
  readonly gated: boolean;
  /** The state after a prefix (e.g. powerRetention's returned state); copied, default zero. */
  readonly initialState?: RetentionState;
  readonly schedules?: ScheduleTable;
}

const DECODE_STATE = ["S", "Z", "Kc", "Vc", "Gc"] as const;

/**
 * Token-by-token inference (dsl/plan-decode.ts on the GPU): the state S, Z and the cache of the
 * tokens since the last fold live on the device. step(q, k, v, logG) returns the output of the new
 * tokens, equal to what powerRetention gives for them on the whole sequence so far.
 */
export class Decoder {
  readonly problem: DecodeProblem;
  readonly schedules: ScheduleTable;
  #len = 0;
  #bufs: Record<(typeof DECODE_STATE)[number], DeviceBuffer> | null;

  constructor(opts: DecoderOptions) {
    const fn = "new Decoder";
    if (typeof opts !== "object" || opts === null) throw new ArgumentError(fn, "opts", `expected an options object, received ${String(opts)}`);
    checkOptionNames(fn, "opts", opts, ["b", "hq", "h", "d", "e", "deg", "chunk", "dtype", "scale", "gated", "initialState", "schedules"]);
    for (const f of ["b", "hq", "h", "d"] as const)
      if (!Number.isSafeInteger(opts[f]) || opts[f] < 1) throw new ArgumentError(fn, `opts.${f}`, `expected a positive integer, received ${show(opts[f])}`);
    const e = opts.e ?? opts.d;
    if (!Number.isSafeInteger(e) || e < 1) throw new ArgumentError(fn, "opts.e", `expected a positive integer, received ${show(e)}`);
    if (opts.hq % opts.h !== 0)
      throw new ArgumentError(fn, "opts.hq", `expected a multiple of opts.h = ${opts.h} (grouped-query attention), received ${opts.hq}`);
    if (typeof opts.gated !== "boolean") throw new ArgumentError(fn, "opts.gated", `expected true or false, received ${show(opts.gated)}`);
    const dtype = checkDType(fn, "opts.dtype", opts.dtype ?? "f32");
    const o = checkRetentionOptions(fn, opts.d, opts, e, "opts.e", "opts.d");
    this.problem = { b: opts.b, hq: opts.hq, h: opts.h, d: opts.d, e, deg: o.deg, chunk: o.chunk, dtype, scale: o.scale, gated: opts.gated };
    if (opts.initialState) checkState(fn, "opts.initialState", opts.initialState, this.problem, 0);
    // every kernel a step may launch (append, decode, fold) must be in the manifest
    const p = this.problem;
    const { built, schedules } = withManifestSchedules((s) => decodePlan(p, 0, p.chunk, s), (x) => x.plan, opts.schedules);
    this.schedules = schedules;
    preparePlan(built.plan, { caller: fn, argOf: DECODER_SIZES });
    requireGpu(fn);
    const bufs: Partial<Record<string, DeviceBuffer>> = {};
    try {
      for (const b of decodeStateBuffers(this.problem)) {
        const buf = DeviceBuffer.alloc(numel(b.shape) * (b.dtype === "f32" ? 4 : 2));
        bufs[b.name] = buf;
        buf.zero();
      }
      if (opts.initialState) {
        bufs.S!.copyFrom(opts.initialState.S.buffer);
        bufs.Z!.copyFrom(opts.initialState.Z.buffer);
      }
    } catch (e) {
      for (const b of Object.values(bufs)) b?.free();
      throw e;
    }
    this.#bufs = bufs as Record<(typeof DECODE_STATE)[number], DeviceBuffer>;
  }

  /** A decoder holding a CPU decode state (dsl/plan-decode.ts's), e.g. to continue it on the GPU. */
  static fromCpuState(state: DecodeState, opts: { schedules?: ScheduleTable } = {}): Decoder {
    const p = state.problem;
    const dec = new Decoder({ ...p, schedules: opts.schedules });
    const bufs = dec.#live("Decoder.fromCpuState");
    for (const b of decodeStateBuffers(p)) {
      const data = state[b.name as (typeof DECODE_STATE)[number]];
      const t = Tensor.upload(data, b.shape, b.dtype);
      bufs[b.name as (typeof DECODE_STATE)[number]].copyFrom(t.buffer);
      t.free();
    }
    dec.#len = state.len;
    return dec;
  }

  #live(fn: string): Record<(typeof DECODE_STATE)[number], DeviceBuffer> {
    if (!this.#bufs) throw new ArgumentError(fn, "decoder", "expected a live decoder, received one that was freed (free() was called on it)");
    return this.#bufs;
  }

  /** Cache rows in use (tokens since the last fold), 0 <= len < chunk. */
  get len(): number {
    return this.#len;
  }

  get freed(): boolean {
    return this.#bufs === null;
  }

  /**
   * Decode tn new tokens: q [b,tn,hq,d], k [b,tn,h,d], v [b,tn,h,e] (the decoder's dtype), logG
   * [b,tn,h] f32 (required iff the decoder is gated). Returns y [b,tn,hq,e].
   */
  step(q: Tensor, k: Tensor, v: Tensor, logG: Tensor | null = null): Tensor {
    const fn = "Decoder.step";
    const bufs = this.#live(fn);
    const p = this.problem;
    const s = checkQKVG(fn, q, k, v, logG, "tn");
    const want = { b: p.b, hq: p.hq, h: p.h, d: p.d, e: p.e };
    for (const [f, arg] of [["b", "Q"], ["hq", "Q"], ["d", "Q"], ["h", "K"], ["e", "V"]] as const)
      if (s[f] !== want[f]) throw new ArgumentError(fn, arg, `expected ${f} = ${want[f]} (the decoder's), received ${s[f]} (shape [${(arg === "Q" ? q : arg === "K" ? k : v).shape.join(", ")}])`);
    if (s.dtype !== p.dtype) throw new ArgumentError(fn, "Q", `expected dtype ${p.dtype} (the decoder's), received ${s.dtype}`);
    if (p.gated && !logG) throw new ArgumentError(fn, "logG", "expected a [b, tn, h] f32 tensor (the decoder is gated), received null");
    if (!p.gated && logG) throw new ArgumentError(fn, "logG", "expected null (the decoder was created with gated: false), received a tensor");
    const argOf = { ...DECODER_SIZES, tn: "Q" };
    const { built: { plan, len }, steps } = preparedPlan(JSON.stringify(["decode", p, this.#len, s.t]), (sch) => decodePlan(p, this.#len, s.t, sch), (x) => x.plan,
      this.schedules, { caller: fn, argOf });
    const out = executeOnGpu(plan, { ...gpuInputs({ Q: q, K: k, V: v, logG }), ...bufs }, { caller: fn, argOf, prepared: steps });
    this.#len = len;
    return wrap(out, plan, "Y");
  }

  /** The state and cache, downloaded, in the CPU decode API's form (dsl/plan-decode.ts DecodeState). */
  download(): DecodeState {
    const bufs = this.#live("Decoder.download");
    const arrays: Record<string, Float32Array> = {};
    for (const b of decodeStateBuffers(this.problem)) {
      const t = Tensor.fromBuffer(bufs[b.name as (typeof DECODE_STATE)[number]], b.shape, b.dtype);
      arrays[b.name] = t.download(); // the tensor only borrows the buffer: not freed here
    }
    return { problem: this.problem, len: this.#len, S: arrays.S!, Z: arrays.Z!, Kc: arrays.Kc!, Vc: arrays.Vc!, Gc: arrays.Gc! };
  }

  /** Release the device state. Idempotent. */
  free(): void {
    if (!this.#bufs) return;
    for (const b of Object.values(this.#bufs)) b.free();
    this.#bufs = null;
  }
}
