// Argument checks of the public API. Everything here runs on metadata only (shape, dtype, device,
// freed), before any GPU work, so a bad call fails the same way on a machine without a GPU. Every
// error names the argument, what was expected and what came.

import { isDType, type DType } from "../dsl/dtype.ts";
import { MAX_STATE_ELEMENTS } from "../dsl/spec.ts";
import { featureCount } from "../dsl/sympow.ts";
import { cudaAvailable } from "./device.ts";
import { didYouMean } from "../dsl/contract/suggest.ts";

/** What validation reads of a tensor (runtime/tensor.ts's Tensor has it). */
export interface TensorInfo {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: number;
  readonly freed: boolean;
}

/** A bad argument: `argument` names it (e.g. "K", "opts.chunk"). */
export class ArgumentError extends Error {
  constructor(
    readonly fn: string,
    readonly argument: string,
    detail: string,
  ) {
    super(`${fn}: ${argument}: ${detail}`);
    this.name = "ArgumentError";
  }
}

/** Raised when the call needs a GPU and there is none usable; `reason` is cudaAvailable()'s. */
export class GpuUnavailableError extends Error {
  constructor(
    readonly fn: string,
    readonly reason: string,
  ) {
    super(`${fn}: no usable CUDA GPU: ${reason}`);
    this.name = "GpuUnavailableError";
  }
}

/** Throw GpuUnavailableError unless CUDA works here (never crashes: cudaAvailable() never throws). */
export function requireGpu(fn: string): void {
  const a = cudaAvailable();
  if (!a.ok) throw new GpuUnavailableError(fn, a.reason);
}

const fmtShape = (s: readonly unknown[]): string => `[${s.join(", ")}]`;

/** A received option value as it reads best: numbers as numbers (NaN, Infinity), the rest as JSON. */
const show = (v: unknown): string => (typeof v === "number" || v === undefined ? String(v) : JSON.stringify(v));

function describe(x: unknown): string {
  if (x === null) return "null";
  if (x === undefined) return "undefined";
  if (typeof x !== "object") return `${typeof x} ${String(x)}`;
  return (x as object).constructor?.name ?? "object";
}

export { show };
export const isPow2 = (n: number): boolean => Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;

function isTensorInfo(x: unknown): x is TensorInfo {
  if (typeof x !== "object" || x === null) return false;
  const t = x as Partial<TensorInfo>;
  return Array.isArray(t.shape) && typeof t.dtype === "string" && typeof t.device === "number" && typeof t.freed === "boolean";
}

/** A shape: a non-empty list of positive integers. */
export function checkShape(fn: string, arg: string, shape: unknown): readonly number[] {
  if (!Array.isArray(shape) || shape.length === 0 || !shape.every((n) => Number.isSafeInteger(n) && n > 0))
    throw new ArgumentError(fn, arg, `expected a shape of positive integers, received ${Array.isArray(shape) ? fmtShape(shape) : describe(shape)}`);
  return shape as number[];
}

export function checkDType(fn: string, arg: string, dtype: unknown): DType {
  if (!isDType(dtype)) throw new ArgumentError(fn, arg, `expected a dtype f32, f16 or bf16, received ${JSON.stringify(dtype)}`);
  return dtype;
}

/** A live tensor (not freed). */
export function checkTensor(fn: string, arg: string, x: unknown): TensorInfo {
  if (!isTensorInfo(x)) throw new ArgumentError(fn, arg, `expected a Tensor, received ${describe(x)}`);
  if (x.freed) throw new ArgumentError(fn, arg, `expected a live tensor, received one that was freed (free() was called on it)`);
  return x;
}

/**
 * `x` must have `expected` as its shape; entries of `expected` that are strings are free sizes
 * (named in the message) and are returned, by name, as found.
 */
export function checkTensorShape(
  fn: string,
  arg: string,
  x: TensorInfo,
  expected: readonly (number | string)[],
  note = "",
): Record<string, number> {
  const found: Record<string, number> = {};
  const ok =
    x.shape.length === expected.length &&
    expected.every((want, i) => {
      const got = x.shape[i]!;
      if (typeof want === "number") return got === want;
      if (found[want] !== undefined && found[want] !== got) return false;
      found[want] = got;
      return true;
    });
  if (!ok) throw new ArgumentError(fn, arg, `expected shape ${fmtShape(expected)}${note}, received ${fmtShape(x.shape)}`);
  return found;
}

export function checkTensorDType(fn: string, arg: string, x: TensorInfo, dtype: DType, note = ""): void {
  if (x.dtype !== dtype) throw new ArgumentError(fn, arg, `expected dtype ${dtype}${note}, received ${x.dtype}`);
}

/** All tensors on one device: the first one's. */
export function checkSameDevice(fn: string, tensors: readonly (readonly [string, TensorInfo])[]): void {
  const [first, ...rest] = tensors;
  if (!first) return;
  for (const [arg, t] of rest)
    if (t.device !== first[1].device)
      throw new ArgumentError(fn, arg, `expected a tensor on device ${first[1].device} (the device of ${first[0]}), received one on device ${t.device}`);
}

/** The options of a retention call, resolved. */
export interface RetentionOptionsResolved {
  readonly deg: number;
  readonly scale: number;
  readonly chunk: number;
}

export const DEFAULT_CHUNK = 64;

/** Names the peer's PyTorch API (and other spellings users reach for) uses for our options. */
const OPTION_HINTS: Readonly<Record<string, string>> = {
  chunk_size: "chunk", chunkSize: "chunk", degree: "deg", power: "deg", p: "deg",
  initial_state: "initialState", return_final_state: "returnState", returnFinalState: "returnState", return_state: "returnState",
  log_G: "logG (an argument, not an option)", d_state: "dState", dstate: "dState",
};

/** An options object whose every key is one of `known`, with booleans where `booleans` says; an
 * unknown key's error suggests what it likely meant (suggest.ts). */
export function checkOptionNames(fn: string, name: string, opts: object, known: readonly string[], booleans: readonly string[] = []): void {
  for (const key of Object.keys(opts)) {
    if (!known.includes(key)) {
      const hint = didYouMean(key, known, OPTION_HINTS);
      throw new ArgumentError(fn, `${name}.${key}`, `unknown option${hint ? ` (did you mean ${hint}?)` : ""}; expected some of ${known.join(", ")}`);
    }
    const v = (opts as Record<string, unknown>)[key];
    if (booleans.includes(key) && v !== undefined && typeof v !== "boolean")
      throw new ArgumentError(fn, `${name}.${key}`, `expected true or false, received ${show(v)}`);
  }
}

/** deg, scale and chunk resolved; the state D * e (D = binomial(d + deg - 1, deg)) must fit
 * MAX_STATE_ELEMENTS, else the error names what makes it big: opts.deg, else d (`dArg`) or e (`eArg`). */
export function checkRetentionOptions(
  fn: string,
  d: number,
  opts: { deg?: unknown; scale?: unknown; chunk?: unknown },
  e: number = d,
  eArg = "V",
  dArg = "Q",
): RetentionOptionsResolved {
  const deg = opts.deg ?? 2;
  if (typeof deg !== "number" || !Number.isSafeInteger(deg + d) || deg < 2 || deg % 2 !== 0)
    throw new ArgumentError(fn, "opts.deg", `expected a positive even integer (2, 4, ...), received ${show(deg)}`);
  const D = featureCount(d, deg);
  if (!(D * e <= MAX_STATE_ELEMENTS))
    throw new ArgumentError(fn, deg > 2 && featureCount(d, 2) * e <= MAX_STATE_ELEMENTS ? "opts.deg" : D <= MAX_STATE_ELEMENTS ? eArg : dArg,
      `deg = ${deg}, d = ${d}, e = ${e} need a state of D * e = ${D.toPrecision(3)} * ${e} f32 per head (D = binomial(d + deg - 1, deg)), more than ${MAX_STATE_ELEMENTS} (1 GiB); lower deg, d or e`);
  const scale = opts.scale ?? 1 / Math.sqrt(d);
  if (typeof scale !== "number" || !Number.isFinite(scale))
    throw new ArgumentError(fn, "opts.scale", `expected a finite number, received ${show(scale)}`);
  const chunk = opts.chunk ?? DEFAULT_CHUNK;
  if (typeof chunk !== "number" || !isPow2(chunk) || chunk < 16)
    throw new ArgumentError(fn, "opts.chunk", `expected a power of two >= 16, received ${show(chunk)}`);
  return { deg, scale, chunk };
}

/** The log gates [b, t, h] of a call, read back to the host (opts.checkGates): each must be <= 0, the
 * log of a forget gate in (0, 1] (SPEC.md). Positive values are outside the contract: the per-chunk
 * states are kept unnormalised in f32, so a gate sum that grows past about 88 overflows them (measured:
 * logG in [1, 2] over 100 tokens gives NaN), and nothing on the device checks it. NaN is reported too. */
export function checkGateValues(fn: string, arg: string, g: ArrayLike<number>, shape: readonly [number, number, number]): void {
  const [, t, h] = shape;
  for (let i = 0; i < g.length; i++) {
    const v = g[i]!;
    if (v <= 0) continue;
    const at = `[b=${Math.floor(i / (t * h))}, t=${Math.floor(i / h) % t}, h=${i % h}]`;
    throw new ArgumentError(fn, arg, `expected log gates <= 0 (the log of a forget gate in (0, 1]), received ${arg}${at} = ${show(v)}`);
  }
}

/** Sizes of a retention call as read from its tensors. */
export interface RetentionSizes {
  readonly b: number;
  readonly t: number;
  readonly hq: number;
  readonly h: number;
  readonly d: number;
  readonly e: number;
  readonly dtype: DType;
}

/**
 * Q [b,t,hq,d], K [b,t,h,d], V [b,t,h,e] of one dtype, logG [b,t,h] f32 or null, hq a multiple of
 * h, all on one device and live. `time` names the second dim in messages ("t", or "tn" for decode).
 */
export function checkQKVG(fn: string, Q: unknown, K: unknown, V: unknown, logG: unknown, time = "t"): RetentionSizes {
  const q = checkTensor(fn, "Q", Q);
  const k = checkTensor(fn, "K", K);
  const v = checkTensor(fn, "V", V);
  const g = logG === null || logG === undefined ? null : checkTensor(fn, "logG", logG);
  const all: [string, TensorInfo][] = [["Q", q], ["K", k], ["V", v]];
  if (g) all.push(["logG", g]);
  checkSameDevice(fn, all);

  checkTensorShape(fn, "Q", q, ["b", time, "hq", "d"]);
  const [b, t, hq, d] = q.shape as [number, number, number, number];
  const { h } = checkTensorShape(fn, "K", k, [b, t, "h", d], ` ([b, ${time}, h, d] with b, ${time}, d of Q)`);
  checkTensorShape(fn, "V", v, [b, t, h!, "e"], ` ([b, ${time}, h, e] with b, ${time} of Q and h of K)`);
  const e = v.shape[3]!;
  if (hq % h! !== 0)
    throw new ArgumentError(fn, "Q", `expected hq (dim 2) to be a multiple of K's h = ${h} (grouped-query attention), received hq = ${hq}`);
  const dtype = checkDType(fn, "Q.dtype", q.dtype);
  checkTensorDType(fn, "K", k, dtype, " (the dtype of Q)");
  checkTensorDType(fn, "V", v, dtype, " (the dtype of Q)");
  if (g) {
    checkTensorShape(fn, "logG", g, [b, t, h!], ` ([b, ${time}, h])`);
    checkTensorDType(fn, "logG", g, "f32", " (log gates are always f32)");
  }
  return { b, t, hq, h: h!, d, e, dtype };
}

/** An initial / carried state: S [b,h,D,e] and Z [b,h,D], f32, on `device`. */
export function checkState(
  fn: string,
  arg: string,
  state: unknown,
  s: { b: number; h: number; d: number; e: number; deg: number },
  device: number,
): { S: TensorInfo; Z: TensorInfo } {
  if (typeof state !== "object" || state === null)
    throw new ArgumentError(fn, arg, `expected { S, Z } tensors, received ${describe(state)}`);
  const { S, Z } = state as { S?: unknown; Z?: unknown };
  const D = featureCount(s.d, s.deg);
  const St = checkTensor(fn, `${arg}.S`, S);
  const Zt = checkTensor(fn, `${arg}.Z`, Z);
  checkTensorShape(fn, `${arg}.S`, St, [s.b, s.h, D, s.e], ` ([b, h, D, e] with D = ${D} features for d = ${s.d}, deg = ${s.deg})`);
  checkTensorShape(fn, `${arg}.Z`, Zt, [s.b, s.h, D], ` ([b, h, D])`);
  checkTensorDType(fn, `${arg}.S`, St, "f32");
  checkTensorDType(fn, `${arg}.Z`, Zt, "f32");
  for (const [n, t] of [[`${arg}.S`, St], [`${arg}.Z`, Zt]] as const)
    if (t.device !== device)
      throw new ArgumentError(fn, n, `expected a tensor on device ${device} (the device of Q), received one on device ${t.device}`);
  return { S: St, Z: Zt };
}
