// Comparisons against the float64 reference: relative Frobenius error (SPEC.md "Accuracy"), with
// NaN/Inf caught first and the max abs error and the fast-check seed in every failure message.

import type { DType } from "../../dsl/dtype.ts";
import { maxAbsError, relativeError } from "../../dsl/reference/power-retention.ts";
import { fcSeed } from "./problems.ts";

/** SPEC.md's forward tolerances (gradients get twice these). */
export const TOL: Readonly<Record<DType, number>> = { f32: 1e-4, f16: 3e-3, bf16: 1e-2 };

function firstNonFinite(a: ArrayLike<number>): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) return i;
  return -1;
}

/** Throw unless `out` is finite and within `tol` relative error of `ref`; returns the relative error. */
export function expectClose(out: ArrayLike<number>, ref: ArrayLike<number>, tol: number, what: string): number {
  if (out.length !== ref.length) throw new Error(`${what}: ${out.length} elements, reference has ${ref.length} [FC_SEED=${fcSeed()}]`);
  const bad = firstNonFinite(out);
  if (bad >= 0) throw new Error(`${what}: element ${bad} of ${out.length} is ${out[bad]} [FC_SEED=${fcSeed()}]`);
  const rel = relativeError(out, ref);
  if (!(rel <= tol))
    throw new Error(`${what}: relative error ${rel.toExponential(3)} > ${tol} (max abs error ${maxAbsError(out, ref).toExponential(3)}) [FC_SEED=${fcSeed()}]`);
  return rel;
}

/** Throw unless `a` and `b` hold the same values bit for bit (NaN equal to NaN); names the first difference. */
export function expectIdentical(a: ArrayLike<number>, b: ArrayLike<number>, what: string): void {
  if (a.length !== b.length) throw new Error(`${what}: lengths ${a.length} and ${b.length} differ [FC_SEED=${fcSeed()}]`);
  for (let i = 0; i < a.length; i++)
    if (!Object.is(a[i], b[i])) throw new Error(`${what}: element ${i} differs: ${a[i]} vs ${b[i]} [FC_SEED=${fcSeed()}]`);
}

/** The worst relative error seen per key (e.g. per dtype), printed as a table at the end of a file. */
export class WorstErrors {
  private readonly worst = new Map<string, { err: number; runs: number; where: string }>();

  record(key: string, err: number, where: string): void {
    const w = this.worst.get(key) ?? { err: 0, runs: 0, where: "" };
    w.runs++;
    if (err >= w.err) Object.assign(w, { err, where });
    this.worst.set(key, w);
  }

  table(title: string): string {
    const rows = [...this.worst.entries()].sort(([a], [b]) => a.localeCompare(b));
    const width = Math.max(4, ...rows.map(([k]) => k.length));
    return [
      title,
      `${"key".padEnd(width)}  runs  worst rel err  case`,
      ...rows.map(([k, w]) => `${k.padEnd(width)}  ${String(w.runs).padStart(4)}  ${w.err.toExponential(2).padStart(13)}  ${w.where}`),
    ].join("\n");
  }
}
