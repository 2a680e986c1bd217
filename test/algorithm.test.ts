// The algorithm per problem (dsl/algorithm.ts): the rule, and the Python package's copy of it
// (runtime/python/prt/_manifest.py, choose_chunk) held equal over a grid of problems and tables.

import { spawnSync } from "node:child_process";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { REPO_ROOT } from "../codegen/gen.ts";
import { chooseChunk, defaultQuadraticMaxT, type AlgorithmEntry } from "../dsl/algorithm.ts";

const BUILT = [64, 128];

describe("the algorithm per problem", () => {
  it("takes the quadratic form (a chunk >= t) up to the default length, then the largest built chunk; a state in or out is chunked", () => {
    expect(defaultQuadraticMaxT(2, 64, 64)).toBe(4096);
    expect(defaultQuadraticMaxT(2, 32, 32)).toBe(1024);
    expect(defaultQuadraticMaxT(2, 128, 128)).toBe(16384);
    const a = { deg: 2, d: 64, e: 64, dtype: "bf16", initialState: false, finalState: false };
    expect(chooseChunk({ ...a, t: 1 }, BUILT)).toBe(16);
    expect(chooseChunk({ ...a, t: 1000 }, BUILT)).toBe(1024);
    expect(chooseChunk({ ...a, t: 4096 }, BUILT)).toBe(4096);
    expect(chooseChunk({ ...a, t: 4097 }, BUILT)).toBe(128);
    expect(chooseChunk({ ...a, t: 1000, initialState: true }, BUILT)).toBe(128);
    expect(chooseChunk({ ...a, t: 1000, finalState: true }, BUILT)).toBe(128);
    const entry: AlgorithmEntry = { quadraticMaxT: 2048, chunk: 64 };
    expect(chooseChunk({ ...a, t: 2048 }, BUILT, entry)).toBe(2048);
    expect(chooseChunk({ ...a, t: 2049 }, BUILT, entry)).toBe(64);
    expect(chooseChunk({ ...a, t: 2049 }, [128], entry)).toBe(128); // the table's chunk is not built
  });

  it("is the same in the Python package", () => {
    const cases: { deg: number; d: number; e: number; t: number; initial: boolean; final: boolean; entry: AlgorithmEntry | null }[] = [];
    for (const [deg, d, e] of [[2, 32, 32], [2, 64, 64], [2, 128, 128], [2, 64, 32], [4, 16, 16], [4, 32, 32]] as const)
      for (const t of [1, 15, 16, 17, 100, 1000, 4095, 4096, 4097, 16383, 16384, 16385, 65536, 100000])
        for (const [initial, final] of [[false, false], [true, false], [false, true]] as const)
          for (const entry of [null, { quadraticMaxT: 4096, chunk: 64 }, { quadraticMaxT: 512, chunk: 256 }])
            cases.push({ deg, d, e, t, initial, final, entry });
    const py = `
import json, sys
sys.path.insert(0, ${JSON.stringify(path.join(REPO_ROOT, "runtime", "python"))})
from prt import _manifest as m
out = []
for c in json.load(sys.stdin):
    specs = tuple(m.Spec(c["deg"], c["d"], c["e"], ch, "bf16") for ch in (64, 128))
    alg = {"G": {f"p{c['deg']}_d{c['d']}_e{c['e']}_bf16": c["entry"]}} if c["entry"] else {}
    man = m.Manifest("x", {}, specs, alg)
    out.append(m.choose_chunk([man], c["deg"], c["d"], c["e"], "bf16", c["t"], None, c["initial"], c["final"], "G").chunk)
print(json.dumps(out))
`;
    const r = spawnSync("python3", ["-c", py], { input: JSON.stringify(cases), encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    const got = JSON.parse(r.stdout) as number[];
    const want = cases.map((c) =>
      chooseChunk({ deg: c.deg, d: c.d, e: c.e, dtype: "bf16", t: c.t, initialState: c.initial, finalState: c.final }, BUILT, c.entry ?? undefined));
    expect(got).toEqual(want);
    expect(new Set(want).size).toBeGreaterThan(4); // the grid reaches both forms and several chunks
  });
});
