// The native core's plan executor (runtime/native/plans.cc, core.h "Retention plans") from
// TypeScript, through the Node addon: the executor the Python package runs, reading the plans `gen`
// wrote into the manifest as data. A plan is created once per problem's sizes (everything decided
// then: variant, shapes, grids, params, workspace layout) and run by filling in pointers.
// test/native-plans.test.ts gives it and the Python package the same problems on the fake driver and
// asserts the same buffers and the same launches.

import type { PlanKind } from "../dsl/contract/manifest.ts";
import type { Spec } from "../dsl/spec.ts";
import { loadNative, type DevicePtr } from "./native.ts";

/** What the addon adds for plans (abiVersion 2). */
export interface PrtNativePlans {
  readonly abiVersion: number;
  runtimeOpen(manifests: string, kernelDir: string): bigint;
  runtimeClose(runtime: bigint): void;
  planCreate(runtime: bigint, kind: string, spec: readonly [number, number, number, number, string], problem: NativeProblem): bigint;
  planDestroy(plan: bigint): void;
  planBuffers(plan: bigint): NativeBuffer[];
  planWorkspaceBytes(plan: bigint, outputsToo: boolean): number;
  planSteps(plan: bigint): string[];
  planPrepare(plan: bigint): void;
  planRun(plan: bigint, stream: bigint, ptrs: readonly bigint[], workspace: DevicePtr, workspaceBytes: number, flags: number): void;
}

/** A problem's sizes and flags (core.h prt_problem). */
export interface NativeProblem {
  readonly b: number;
  readonly t: number;
  readonly hq: number;
  readonly h: number;
  readonly scale: number;
  readonly gated?: boolean;
  readonly initialState?: boolean;
  readonly finalState?: boolean;
  /** decode: cache rows in use before the call. */
  readonly len0?: number;
  /** the varlen kinds: sequences and chunk slots (varlenLayout). */
  readonly ns?: number;
  readonly nc?: number;
}

export const BUF_INPUT = 0, BUF_OUTPUT = 1, BUF_TEMP = 2;

/** One plan buffer: INPUT (the caller's), OUTPUT (the caller's, or the workspace at `offset`), TEMP (the workspace at `offset`). */
export interface NativeBuffer {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly bytes: number;
  readonly role: number;
  readonly offset: number;
}

/** The addon's plan functions; throws, saying to rebuild, when the addon predates them. */
export function loadNativePlans(): PrtNativePlans {
  const n = loadNative() as unknown as PrtNativePlans;
  if (!(n.abiVersion >= 2) || typeof n.planCreate !== "function")
    throw new Error(`the native addon has no plan executor (abiVersion ${n.abiVersion}, expected 2 or later); rebuild it with \`npm run build:native\``);
  return n;
}

/** The manifests (':'-separated) and the fatbin folders a plan runtime reads. */
export class NativeRuntime {
  readonly #n = loadNativePlans();
  #h: bigint | null;

  constructor(manifests: readonly string[], kernelDirs: readonly string[]) {
    this.#h = this.#n.runtimeOpen(manifests.join(":"), kernelDirs.join(":"));
  }

  plan(kind: PlanKind, spec: Spec, problem: NativeProblem): NativePlan {
    if (this.#h === null) throw new Error("NativeRuntime.plan: the runtime was closed");
    return new NativePlan(this.#n, this.#n.planCreate(this.#h, kind, [spec.deg, spec.d, spec.e, spec.chunk, spec.dtype], problem), kind);
  }

  /** Plans made from it must be freed first. */
  close(): void {
    if (this.#h !== null) this.#n.runtimeClose(this.#h);
    this.#h = null;
  }
}

export class NativePlan {
  readonly buffers: readonly NativeBuffer[];
  /** Workspace bytes for the temporaries, and for the outputs too (when the caller passes 0 for them). */
  readonly workspaceBytes: number;
  readonly workspaceBytesAll: number;
  #h: bigint | null;

  constructor(private readonly n: PrtNativePlans, h: bigint, readonly kind: string) {
    this.#h = h;
    this.buffers = n.planBuffers(h);
    this.workspaceBytes = n.planWorkspaceBytes(h, false);
    this.workspaceBytesAll = n.planWorkspaceBytes(h, true);
  }

  #live(): bigint {
    if (this.#h === null) throw new Error(`${this.kind} plan: already freed`);
    return this.#h;
  }

  /** One line per launch: "symbol grid=(x,y,z) block=n smem=n". */
  steps(): string[] {
    return this.n.planSteps(this.#live());
  }

  /** Load its kernels (before capturing a CUDA graph; run does it when needed). */
  prepare(): void {
    this.n.planPrepare(this.#live());
  }

  /** Enqueue on `stream` (0n: the default stream). `ptrs` by buffer name: every INPUT, the OUTPUTs
   * the caller keeps (the others live in the workspace, which must then be workspaceBytesAll). */
  run(ptrs: Readonly<Record<string, DevicePtr>>, workspace: DevicePtr, workspaceBytes: number, opts: { stream?: bigint; poison?: boolean } = {}): void {
    for (const name of Object.keys(ptrs))
      if (!this.buffers.some((b) => b.name === name)) throw new Error(`${this.kind} plan: ptrs.${name}: no buffer of that name (it has ${this.buffers.map((b) => b.name).join(", ")})`);
    const list = this.buffers.map((b) => ptrs[b.name] ?? 0n);
    this.n.planRun(this.#live(), opts.stream ?? 0n, list, workspace, workspaceBytes, opts.poison ? 1 : 0);
  }

  free(): void {
    if (this.#h !== null) this.n.planDestroy(this.#h);
    this.#h = null;
  }
}
