// `retention gen` reproduces generated/ byte for byte (the committed sources are fresh), and what
// it writes is deterministic: no timestamps, no absolute paths.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../codegen/gen.ts";
import { MANIFEST_FILE, parseManifest } from "../codegen/manifest.ts";

const GENERATED = path.join(REPO_ROOT, "generated");
const tmp = mkdtempSync(path.join(tmpdir(), "retention-gen-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("gen", () => {
  it("reproduces generated/ byte for byte", () => {
    const out = path.join(tmp, "generated");
    execFileSync(process.execPath, [path.join(REPO_ROOT, "codegen", "bin.mjs"), "gen", "--out", out], { cwd: tmp, stdio: "pipe" });
    const want = readdirSync(GENERATED).sort();
    const got = readdirSync(out).sort();
    expect(got).toEqual(want);
    const stale = want.filter((f) => !readFileSync(path.join(out, f)).equals(readFileSync(path.join(GENERATED, f))));
    expect(stale, `generated/ is stale in ${stale.join(", ")}: run \`npm run gen:default\``).toEqual([]);
  }, 120_000);

  it("writes a manifest that names every kernel with its symbol, arguments and launch shape, and no absolute path", () => {
    const text = readFileSync(path.join(GENERATED, MANIFEST_FILE), "utf8");
    expect(text).not.toContain(REPO_ROOT);
    const m = parseManifest(text, MANIFEST_FILE);
    expect(m.archs).toEqual(["sm_80", "sm_90a"]);
    expect(m.kernels.length).toBeGreaterThan(0);
    for (const k of m.kernels) {
      const src = readFileSync(path.join(GENERATED, k.source), "utf8");
      const bounds = (k.schedule.minBlocks ?? 1) > 1 ? `${k.threads}, ${k.schedule.minBlocks}` : `${k.threads}`;
      expect(src).toContain(`extern "C" __global__ void __launch_bounds__(${bounds}) ${k.symbol}(`);
      expect(k.args.map((a) => a.kind)).toEqual([...k.args.filter((a) => a.kind === "tensor"), ...k.args.filter((a) => a.kind === "param")].map((a) => a.kind));
      // the launch's dynamic shared memory is what a target's body was planned with (0: registers only, the varlen copies)
      expect(Number.isInteger(k.smemBytes) && k.smemBytes >= 0, `${k.symbol}: smemBytes ${k.smemBytes}`).toBe(true);
      const body = src.slice(src.indexOf(`${k.symbol}(`), src.indexOf("\n}\n", src.indexOf(`${k.symbol}(`)));
      const planned = [...body.matchAll(/\/\/ sm_\w+: (\d+) bytes of dynamic shared memory/g)].map((x) => Number(x[1]));
      expect(planned.length, `${k.symbol}: its bodies' shared memory comments`).toBeGreaterThan(0);
      expect(k.smemBytes, k.symbol).toBe(Math.max(...planned));
      expect(m.files.find((f) => f.source === k.source)?.sha256).toBe(k.sourceSha256);
    }
    for (const f of m.files) expect(f.sha256).toMatch(/^[0-9a-f]{64}$/);
    // every plan step launches a kernel the manifest has, under the schedule gen built (a tuned
    // chunk-free kernel's plan steps once named its default schedule: the native core refused them)
    const symbols = new Set(m.kernels.map((k) => k.symbol));
    const missing = new Set<string>();
    for (const p of m.plans) for (const v of p.variants) for (const st of v.steps) if (!symbols.has(st.symbol)) missing.add(`${p.kind} ${p.spec}: ${st.symbol}`);
    expect([...missing]).toEqual([]);
  });
});
