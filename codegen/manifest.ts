// The manifest's entries that come from the lowering (argument lists, which archs a kernel's shared
// memory fits); the schema itself is the contract's (dsl/contract/manifest.ts), re-exported here
// for codegen's modules.

import { printExpr } from "../dsl/print.ts";
import type { Arch, ManifestArg } from "../dsl/contract/manifest.ts";
import type { LKernel } from "./lir.ts";
import { SMEM_LIMIT } from "./lower/rules.ts";

export * from "../dsl/contract/manifest.ts";

export function manifestArgs(k: LKernel): ManifestArg[] {
  return [
    ...k.tensors.map((t): ManifestArg => ({ kind: "tensor", name: t.name, dtype: t.dtype, role: t.role, dims: t.dims.map(printExpr) })),
    ...k.params.map((p): ManifestArg => ({ kind: "param", name: p.name, type: p.type })),
  ];
}

export function fitsByArch(smemBytes: number, archs: readonly Arch[]): Record<string, boolean> {
  return Object.fromEntries(archs.map((a) => [a, smemBytes <= SMEM_LIMIT[a]]));
}

