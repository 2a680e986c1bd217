// What a new user reads (issue 27): the README's CPU example runs and says what it claims, its speed
// table is the numbers of the results it cites, no link of the README or bench/*.md points at a
// path the repository lacks, and the README names none of the development tooling.

import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../dsl/contract/package-root.ts";

const read = (f: string): string => readFileSync(path.join(REPO_ROOT, f), "utf8");
const README = read("README.md");
const tmp = mkdtempSync(path.join(tmpdir(), "prt-readme-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("the README", () => {
  it("its no-GPU example runs as written (imports by package name mapped to the sources) and prints an error near 2e-7", () => {
    const blocks = [...README.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
    const example = blocks.find((b) => b.includes("forwardOnCpu(p, x)"));
    expect(example).toBeDefined();
    const code = example!
      .replace('"power-retention-compiler/dsl"', JSON.stringify(path.join(REPO_ROOT, "dsl", "index.ts")))
      .replace('"power-retention-compiler/reference"', JSON.stringify(path.join(REPO_ROOT, "dsl", "reference", "power-retention.ts")));
    expect(code).not.toContain("power-retention-compiler");
    const file = path.join(tmp, "example.ts");
    writeFileSync(file, code);
    const r = spawnSync(process.execPath, ["--import", "tsx", file], { cwd: REPO_ROOT, encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    const err = Number(r.stdout.trim());
    expect(err).toBeGreaterThan(0);
    expect(err).toBeLessThan(2e-6); // f32 against float64: the README says "about 2e-7"
  }, 60_000);

  it("its speed table is the numbers of the run it cites (issue23.json, the 64k logs)", () => {
    const dir = "bench/results/2026-12-07-8c1dec0", dir64 = "bench/results/2026-12-07-3133459";
    expect(README).toContain(`${dir}/issue23.png`);
    const j = JSON.parse(read(`${dir}/issue23.json`)) as {
      device: string; date: string;
      rows: { b: number; t: number; sdpa: { fwd_ms: number; fwdbwd_ms: number }; launches: { fwd_ms: number; fwdbwd_ms: number }; binding: { fwd_ms: number; fwdbwd_ms: number } }[];
    };
    expect(README).toContain(`on an H100 (80 GB HBM3) on ${j.date.slice(0, 10)}`);
    expect(j.device).toContain("H100 80GB HBM3");
    const row = (b: number, t: number): string[] => {
      const line = README.split("\n").find((l) => l.startsWith(`| ${b} × ${t} |`));
      expect(line, `${b} × ${t}`).toBeDefined();
      return line!.split("|").slice(2, 4).map((c) => c.trim());
    };
    // "ours (binding) vs SDPA: ours / SDPA", each at the precision written
    const parse = (cell: string): number[] => cell.match(/[\d.]+/g)!.map(Number);
    const near = (written: number, value: number): boolean => {
      const digits = String(written).split(".")[1]?.length ?? 0;
      return Math.abs(written - value) <= 0.5 * 10 ** -digits + 1e-12;
    };
    for (const r of j.rows) {
      const [fwd, both] = row(r.b, r.t).map(parse) as [number[], number[]];
      for (const [cell, pass] of [[fwd, "fwd_ms"], [both, "fwdbwd_ms"]] as const) {
        const [ours, binding, sdpa, ratio] = cell as [number, number, number, number];
        expect(near(ours, r.launches[pass]), `${r.b}x${r.t} ${pass} ours ${ours}`).toBe(true);
        expect(near(binding, r.binding[pass]), `${r.b}x${r.t} ${pass} binding ${binding}`).toBe(true);
        expect(near(sdpa, r.sdpa[pass]), `${r.b}x${r.t} ${pass} sdpa ${sdpa}`).toBe(true);
        expect(near(ratio, r.launches[pass] / r.sdpa[pass]), `${r.b}x${r.t} ${pass} ratio ${ratio}`).toBe(true);
      }
    }
    const last = (f: string): Record<string, number> => JSON.parse(read(`${dir64}/${f}`).trim().split("\n").filter((l) => l.startsWith("{")).pop()!);
    const ours64 = last("chunked-64k.txt"), sdpa64 = last("sdpa-64k.txt");
    expect([ours64.b, ours64.t, sdpa64.b, sdpa64.t]).toEqual([1, 65536, 1, 65536]);
    const [fwd, both] = row(1, 65536).map(parse) as [number[], number[]];
    for (const [cell, pass] of [[fwd, "fwd_ms"], [both, "fwdbwd_ms"]] as const) {
      const [ours, sdpa, ratio] = cell as [number, number, number];
      expect(near(ours, ours64[pass]!) && near(sdpa, sdpa64[pass]!) && near(ratio, ours64[pass]! / sdpa64[pass]!), `64k ${pass}: ${cell}`).toBe(true);
    }
  });

  it("names none of the development tooling", () => {
    for (const w of [/\blent\b/i, /\.device\b/, /device\/pack\.sh/, /device-session/, /\bthe peer\b/, /GPU machine/, /\bcarry\b.*build\//]) expect(README).not.toMatch(w);
  });
});

describe("links of the README and bench/*.md", () => {
  it.each(["README.md", "bench/README.md", "bench/RESULTS.md"])("%s: every relative link exists", (f) => {
    const text = read(f);
    const links = [...text.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]!).filter((l) => !/^[a-z]+:/.test(l) && !l.startsWith("#"));
    expect(links.length).toBeGreaterThan(0);
    const missing = links.filter((l) => !existsSync(path.join(REPO_ROOT, path.dirname(f), l.split("#")[0]!)));
    expect(missing).toEqual([]);
  });
});
