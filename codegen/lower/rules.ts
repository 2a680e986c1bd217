// The hardware rules the lowering decides by, in one place: the passes choose with them and the
// LIR validator re-checks every choice with them.

import { dtypeBytes } from "../../dsl/dtype.ts";
import type { Arch } from "../../dsl/contract/manifest.ts";
import type { LBuffer, LKernel, LStmt, Swizzle, WarpTiling } from "../lir.ts";
import { bufferOf, isPackedFrag } from "../lir.ts";

/** mma operand and result shape: op(A) [m, k], op(B) [k, n], D [m, n]. */
export function mmaShape(k: LKernel, s: Extract<LStmt, { kind: "mma" }>): { m: number; n: number; k: number } {
  const a = bufferOf(k, s.a).type.shape, b = bufferOf(k, s.b).type.shape;
  return { m: s.transA ? a[1]! : a[0]!, k: s.transA ? a[0]! : a[1]!, n: s.transB ? b[0]! : b[1]! };
}

/** Why an mma cannot use mma.sync m16n8k16 (null when it can). */
export function whyNotTensorCores(k: LKernel, s: Extract<LStmt, { kind: "mma" }>): string | null {
  const a = bufferOf(k, s.a), b = bufferOf(k, s.b);
  const { m, n, k: kk } = mmaShape(k, s);
  if (a.type.dtype === "f32") return "f32 operands (SPEC asks 1e-4: fp32 FMA, no tf32)";
  if (b.home === "frag" || (a.home === "frag" && !isPackedFrag(a)))
    return "operands must be in shared memory (ldmatrix), computed in registers (an mma group), or A a packed frag tile";
  if (a.home === "frag" && (s.transA || !fragFeedsA(a.tiling!, m, kk))) return `frag A operand ${a.name} is not in the row-block layout of a ${m}x${kk} A`;
  if (m % 16 !== 0 || kk % 16 !== 0 || n % 8 !== 0) return `shape ${m}x${n}x${kk} is not a multiple of 16x8x16`;
  for (const t of [a, b]) if (t.home === "smem" && t.swizzle === 0 && (t.pitch * 2) % 16 !== 0) return `tile ${t.name} rows are not 16-byte aligned (pitch ${t.pitch})`;
  return null;
}

/** The tiling in which each warp owns whole rows: units of 16 rows x all n columns, unit u (rows
 * 16u) going to warp u mod warps. The layout of wgmma's accumulators (a warpgroup's 4 warps own
 * 64 consecutive rows, with warps a multiple of 4), and the one in which an accumulator's
 * fragments are, element for element, the A operand fragments of a following mma (flash
 * attention's P from S in registers). null when the shape does not allow it. */
export function rowBlockTiling(m: number, n: number, warps: number): WarpTiling | null {
  if (m % (16 * warps) !== 0 || n % 8 !== 0 || n > 256) return null;
  return { m, n, nt: n / 8, warps };
}

/** Whether a packed frag tile of tiling t holds the A operand [m, kk] of an mma in the m16n8k16
 * fragment layout: its rows per warp as the mma's row-block units (one unit per row block), all kk
 * columns. */
export const fragFeedsA = (t: WarpTiling, m: number, kk: number): boolean => t.m === m && t.n === kk && t.nt * 8 === t.n;

/** The largest wgmma n: an accumulator wider than this is not a single instruction's. */
export const WGMMA_MAX_N = 256;

/** Why an mma cannot run as wgmma on sm_90a (null when it can): 16-bit operands, a row-block
 * tiling over whole warpgroups, B a shared tile wgmma can address (rows of whole 16-byte chunks
 * of 16, 32 or 64 columns, or of a multiple of 64), A such a shared tile or a packed frag tile. */
export function whyNotWgmma(k: LKernel, s: Extract<LStmt, { kind: "mma" }>): string | null {
  if (k.target !== "sm_90a") return `target ${k.target} has no wgmma`;
  const a = bufferOf(k, s.a), b = bufferOf(k, s.b);
  const { m, n, k: kk } = mmaShape(k, s);
  if (a.type.dtype === "f32") return "f32 operands";
  if (k.numWarps % 4 !== 0) return `${k.numWarps} warps are not whole warpgroups`;
  if (!rowBlockTiling(m, n, k.numWarps) || m % 64 !== 0) return `shape ${m}x${n} has no row-block tiling over ${k.numWarps} warps (64-row warpgroup blocks, n <= ${WGMMA_MAX_N})`;
  if (kk % 16 !== 0) return `k = ${kk} is not a multiple of 16`;
  if (b.home !== "smem") return `B operand ${b.name} is not in shared memory`;
  if (a.home !== "smem" && !(a.home === "frag" && isPackedFrag(a) && !s.transA)) return `A operand ${a.name} is neither in shared memory nor a packed frag tile`;
  for (const t of [a, b]) if (t.home === "smem" && swizzleFor(t) === null) return `tile ${t.name} [${t.type.shape}] has no wgmma layout`;
  return null;
}

/** The swizzle of a 16-bit shared tile as a wgmma operand: the widest pattern its rows fill
 * (panels of 64 columns when wider), rows a multiple of 8; null when it has none. */
export function swizzleFor(b: LBuffer): Swizzle | null {
  if (b.type.dtype === "f32" || b.type.shape.length !== 2) return null;
  const [rows, cols] = b.type.shape as [number, number];
  if (rows % 8 !== 0) return null;
  const bytes = cols * 2;
  if (bytes % 128 === 0) return 128;
  if (bytes === 64 || bytes === 32) return bytes;
  return null;
}

/** Byte alignment of a swizzled tile: its pattern repeats every 8 rows (wgmma computes the XOR
 * from the address bits, so a tile starts on a repeat). */
export const swizzleAlign = (sw: Swizzle): number => (sw === 0 ? SMEM_ALIGN : 8 * sw);

/** The warp tiling of an m x n accumulator: the widest unit (16 x 8nt, nt in 4, 2, 1) that still
 * gives every warp a unit, else the narrowest. */
export function chooseTiling(m: number, n: number, warps: number, computedB = false): WarpTiling | null {
  if (m % 16 !== 0 || n % 8 !== 0) return null;
  if (computedB) {
    // B computed per fragment element (fuse-operands): per k-step a warp evaluates 4 nt elements
    // per lane, shared by its slots when the warps divide a row block's units (render-mma), i.e.
    // 4 / slots per mma; so the narrowest units that still share B (more slots), at most 2 fewer
    // columns than the default (A's ldmatrix per mma goes as 1 / nt).
    for (const nt of [2, 4]) {
      if (n % (8 * nt) !== 0) continue;
      const un = n / (8 * nt), slots = ((m / 16) * un) / warps;
      if (slots > 1 && Number.isInteger(slots) && warps % un === 0) return { m, n, nt, warps };
    }
  }
  for (const nt of [4, 2, 1]) {
    if (n % (8 * nt) !== 0) continue;
    if ((m / 16) * (n / (8 * nt)) >= warps || nt === 1) return { m, n, nt, warps };
  }
  return null;
}

/** Fragment registers per thread a tiling needs (the promotion limit is checked against it). */
export const fragRegisters = (t: WarpTiling): number => Math.ceil(((t.m / 16) * (t.n / (8 * t.nt))) / t.warps) * t.nt * 4;
/** Above this many accumulator registers per thread a tile stays in shared memory. */
export const MAX_FRAG_REGISTERS = 128;
/** ... and above this many for all frag tiles of a kernel together, the largest go back. At 160,
 * attention_bwd_dkv's dv accumulator (32 a thread at 64 x 64 over 4 warps) went to shared memory
 * and every query block's mma loaded and stored it: at 192 it stays in registers (254 a thread, 72
 * bytes of spill) and the kernel ran 1.7x faster on the H100 (bench/RESULTS.md, 2026-12-07, 8c1dec0). */
export const MAX_FRAG_REGISTERS_TOTAL = 192;

/** Why a load cannot be issued as 16-byte cp.async chunks (null when it can; alignment of the
 * tensor's address, base offset and row stride is still checked at run time). */
export function whyNotAsync(k: LKernel, s: Extract<LStmt, { kind: "load" }>): string | null {
  const chunks = whyNotChunkAsync(k, s);
  if (chunks === null) return null;
  const dst = bufferOf(k, s.dst);
  // a vector of 4-byte elements (an f32 gate down the time axis, h apart): one 4-byte cp.async each
  if (dst.home === "smem" && dst.type.shape.length === 1 && dtypeBytes(dst.type.dtype) === 4 && k.tensors.find((t) => t.name === s.tensor)!.dtype === dst.type.dtype) return null;
  return chunks;
}

/** Why a load cannot go as cp.async of 16-byte chunks along the tensor's contiguous dim (null: it
 * can; render-memory then checks the alignment at run time, else it copies one 4-byte element at a
 * time where whyNotAsync allowed that). */
export function whyNotChunkAsync(k: LKernel, s: Extract<LStmt, { kind: "load" }>): string | null {
  const dst = bufferOf(k, s.dst);
  const ten = k.tensors.find((t) => t.name === s.tensor)!;
  if (dst.home !== "smem") return "destination is not in shared memory";
  if (dst.type.dtype !== ten.dtype) return `converts ${ten.dtype} to ${dst.type.dtype}`;
  const last = s.slices[s.slices.length - 1]!;
  if (last.kind !== "range") return "the tensor's contiguous dim is not a tile axis";
  const bytes = dtypeBytes(dst.type.dtype);
  const cols = dst.type.shape[dst.type.shape.length - 1]!;
  if ((cols * bytes) % 16 !== 0) return `tile rows of ${cols * bytes} bytes are not whole 16-byte chunks`;
  if ((dst.pitch * bytes) % 16 !== 0) return `tile pitch ${dst.pitch} is not 16-byte aligned`;
  return null;
}

/** Padding that breaks the bank conflicts of a tile whose rows are read 8 at a time down a column
 * (ldmatrix reads 16 bytes of each of 8 rows; the FMA loops 4): the 8 rows fall into different bank
 * groups when a row is an odd number of 16-byte units, so an even count gets 16 bytes more. */
export function paddedPitch(b: LBuffer): number {
  const cols = b.type.shape[1] ?? b.type.shape[0]!;
  const bytes = dtypeBytes(b.type.dtype);
  const units = (cols * bytes) / 16;
  return b.type.shape.length === 2 && Number.isInteger(units) && units % 2 === 0 ? cols + 16 / bytes : cols;
}

/** The pitch of an f32 tile that an mma group reads at the fragment elements of a [k, x] operand
 * (B stored [k, n], or A stored [k, m]): one read instruction takes 8 consecutive columns of 4 rows
 * two apart (k = t2 + h), so rows two apart must start 8 banks apart: pitch = 4 mod 16 words. */
export function kRowsPitch(b: LBuffer): number {
  const cols = b.type.shape[1]!;
  return cols % 16 === 0 ? cols + 4 : cols;
}

/** Shared memory a block may use: sm_90's opt-in limit (sm_80 allows 163 KiB; the manifest says which fit). */
export const SMEM_LIMIT: Readonly<Record<Arch, number>> = { sm_80: 166912, sm_90a: 232448 };
export const SMEM_ALIGN = 16;
/** Extra dynamic shared memory a kernel with swizzled tiles asks for: the block's base is aligned
 * to 1024 bytes at run time (render-cuda.ts), which may skip up to this much. */
export const SWIZZLE_BASE_SLACK = 1024;
