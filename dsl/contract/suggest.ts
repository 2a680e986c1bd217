// "did you mean ...?" for a name that is not one of the known ones: the TS API's options
// (runtime/validate.ts, checkOptionNames) and the command line's (codegen/cli.ts) both ask here.

/** Edit distance with adjacent transpositions (optimal string alignment): "chnuk" is 1 from "chunk". */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  return d[a.length]![b.length]!;
}

/**
 * What `name` most likely meant: `hints[name]` (other spellings people reach for, e.g. the PyTorch
 * API's chunk_size for chunk), else the known name equal to it but for case, '-' and '_', else the
 * closest known name within an edit distance of 2 (1 for names of 3 or 4 letters, 0 for shorter:
 * any one letter is one edit from d), else null.
 */
export function didYouMean(name: string, known: readonly string[], hints: Readonly<Record<string, string>> = {}): string | null {
  if (Object.hasOwn(hints, name)) return hints[name]!;
  const norm = (s: string): string => s.toLowerCase().replace(/[-_]/g, "");
  const same = known.find((k) => norm(k) === norm(name));
  if (same !== undefined) return same;
  const limit = name.length <= 2 ? 0 : name.length <= 4 ? 1 : 2;
  let best: string | null = null, bestD = limit + 1;
  for (const k of known) {
    const dist = editDistance(name.toLowerCase(), k.toLowerCase());
    if (dist < bestD) [best, bestD] = [k, dist];
  }
  return best;
}
