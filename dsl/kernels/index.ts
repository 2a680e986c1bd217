// The registry of retention kernels: every KernelDef a file in this folder exports is listed here
// once (codegen/audit.ts checks it). `gen` generates exactly these, in this order.

import type { KernelDef } from "../spec.ts";
import { attentionBwdDkv, attentionBwdDkvY, attentionBwdDq, attentionBwdDqY, attentionBwdPrep, attentionBwdPrepY } from "./attention-bwd.ts";
import { attention, attentionY } from "./attention.ts";
import { combineGrads, gateGradsY } from "./combine-grads.ts";
import { cacheAppend, decode, stateCopy } from "./decode.ts";
import { discountedCumsumBwd, discountedCumsumBwdVarlen } from "./discounted-cumsum-bwd.ts";
import { discountedCumsum, discountedCumsumVarlen } from "./discounted-cumsum.ts";
import { queryStateBwdDq, queryStateBwdDs } from "./query-state-bwd.ts";
import { queryState } from "./query-state.ts";
import { updateStateBwd } from "./update-state-bwd.ts";
import { updateState } from "./update-state.ts";
import { varlenPack, varlenPackF32, varlenUnpack, varlenUnpackF32 } from "./varlen.ts";

export const KERNELS: readonly KernelDef[] = [
  // forward
  attention,
  attentionY,
  updateState,
  discountedCumsum,
  queryState,
  // backward: the chunked path
  attentionBwdPrep,
  queryStateBwdDq,
  attentionBwdDq,
  attentionBwdDkv,
  queryStateBwdDs,
  discountedCumsumBwd,
  updateStateBwd,
  combineGrads,
  // backward: the quadratic path
  attentionBwdPrepY,
  attentionBwdDqY,
  attentionBwdDkvY,
  gateGradsY,
  // packed variable-length sequences: the copies to and from the chunk-aligned layout, the scans
  varlenPack,
  varlenPackF32,
  varlenUnpack,
  varlenUnpackF32,
  discountedCumsumVarlen,
  discountedCumsumBwdVarlen,
  // decode
  decode,
  cacheAppend,
  stateCopy,
];
