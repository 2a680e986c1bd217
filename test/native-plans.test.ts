// One executor for every language (issue 25 item 2): the native core's plan interpreter, reached
// from TypeScript through the Node addon (runtime/native-plans.ts) and from Python through ctypes
// (runtime/python/prt/_native.py). Given the same problems (forward, backward, decode and the
// varlen kinds, every flag combination, two specs) on the fake driver, both must see the same plan
// buffers (names, roles, sizes, where they live) and make the same launches in the same order
// (every argument, grid, block, shared memory and stream), and the TypeScript side's errors must
// be the core's.

import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { MANIFEST_FILE, parseManifest } from "../dsl/contract/manifest.ts";
import { REPO_ROOT } from "../dsl/contract/package-root.ts";
import { varlenLayout } from "../dsl/plan-varlen.ts";
import { addonPath } from "../runtime/native.ts";
import { ensureLibprt, libprtPath } from "./helpers/libprt.ts";

const MANIFEST = path.join(REPO_ROOT, "generated", MANIFEST_FILE);
const tmp = mkdtempSync(path.join(tmpdir(), "prt-native-plans-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const FAKE = path.join(tmp, "fake-libcuda.so");

function setup(): string | undefined {
  if (spawnSync("python3", ["--version"]).status !== 0) return "python3 is not on PATH";
  try {
    ensureLibprt();
    execFileSync("cc", ["-shared", "-fPIC", "-O1", "-o", FAKE, path.join(REPO_ROOT, "test", "fixtures", "fake_libcuda.c")], { stdio: "pipe" });
  } catch (e) {
    return `cannot build libprt.so, the addon or the fake driver: ${(e as Error).message}`;
  }
  return existsSync(addonPath()) ? undefined : "the native addon is not built";
}
const skip = setup();
if (skip) console.warn("native plan executor tests skipped: " + skip);

type Case = { kind: string; spec: [number, number, number, number, string]; problem: Record<string, number>; outputsInWorkspace?: boolean };

interface Result {
  buffers: { name: string; role: number; bytes: number; ptr: number }[];
  workspace: number;
  workspaceBytes: number;
  steps: string[];
}

/** A run with its pointers named (the fake driver's are host addresses, another in each process):
 * a buffer's pointer becomes its name and where it lives (its own allocation, or the workspace at
 * an offset), and every pointer in the launch log the buffer it points into. */
function named(r: { result: Result; log: string[] }): { buffers: unknown[]; workspaceBytes: number; steps: string[]; log: unknown[] } {
  const ws = r.result.workspace;
  // a value that is no buffer's address and not in the workspace is a param (its bits) and stays
  const at = (ptr: number): string | null => {
    const b = r.result.buffers.find((x) => x.ptr === ptr && x.bytes > 0) ?? r.result.buffers.find((x) => x.ptr === ptr);
    return b ? `buffer ${b.name}` : ptr >= ws && ptr < ws + r.result.workspaceBytes ? `workspace + ${ptr - ws}` : null;
  };
  const hex = (v: unknown): unknown => (typeof v === "string" && /^0x[0-9a-f]+$/.test(v) ? at(Number(BigInt(v))) ?? v : v);
  return {
    buffers: r.result.buffers.map((b) => ({ ...b, ptr: b.ptr >= ws && b.ptr < ws + r.result.workspaceBytes ? `workspace + ${b.ptr - ws}` : "own allocation" })),
    workspaceBytes: r.result.workspaceBytes,
    steps: r.result.steps,
    log: r.log.map((line) => {
      const e = JSON.parse(line) as Record<string, unknown>;
      return Object.fromEntries(Object.entries(e).map(([k, v]) => [k, Array.isArray(v) ? v.map(hex) : hex(v)]));
    }),
  };
}

/** Run a job through one side (python: run_plan_fake.py, ts: test/fixtures/run-plan-fake.ts); returns results and logs. */
function run(side: "python" | "ts", cases: readonly Case[]): { result: Result; log: string[] }[] {
  const kdir = path.join(tmp, "kernels");
  mkdirSync(kdir, { recursive: true });
  for (const f of parseManifest(readFileSync(MANIFEST, "utf8"), MANIFEST).files) writeFileSync(path.join(kdir, f.fatbin), "FAKECUBIN\n");
  const logs = cases.map((_, i) => path.join(tmp, `${side}-${i}.jsonl`));
  for (const l of logs) rmSync(l, { force: true });
  const job = JSON.stringify({ manifest: MANIFEST, kernelDir: kdir, cases: cases.map((c, i) => ({ ...c, log: logs[i] })) });
  const [cmd, args] = side === "python"
    ? ["python3", [path.join(REPO_ROOT, "runtime", "python", "tests", "run_plan_fake.py")]]
    : [process.execPath, ["--import", "tsx", path.join(REPO_ROOT, "test", "fixtures", "run-plan-fake.ts")]];
  const r = spawnSync(cmd, args, { input: job, encoding: "utf8", cwd: REPO_ROOT, maxBuffer: 64 << 20, env: { ...process.env, PRT_LIB: libprtPath(), PRT_LIBCUDA: FAKE } });
  if (r.status !== 0) throw new Error(`${side} side failed (${r.status}):\n${r.stderr}`);
  const results = JSON.parse(r.stdout) as Result[];
  return results.map((result, i) => ({ result, log: existsSync(logs[i]!) ? readFileSync(logs[i]!, "utf8").trim().split("\n").filter(Boolean) : [] }));
}

describe.skipIf(!!skip)("the plan executor from TypeScript and from Python", () => {
  it("sees the same buffers and makes the same launches for the same problems", () => {
    const cases: Case[] = [];
    for (const spec of [[2, 64, 64, 128, "bf16"], [2, 32, 32, 64, "f32"]] as [number, number, number, number, string][]) {
      const c = spec[3];
      for (let mask = 0; mask < 8; mask++) {
        const flags = { gated: mask & 1, initial_state: (mask >> 1) & 1, final_state: (mask >> 2) & 1 };
        for (const size of [{ b: 1, t: 5, hq: 2, h: 1 }, { b: 2, t: 3 * c + 7, hq: 4, h: 2 }]) {
          const problem = { ...size, scale: 0.3, ...flags, len0: 0 };
          cases.push({ kind: "forward", spec, problem, outputsInWorkspace: mask === 5 }, { kind: "backward", spec, problem });
        }
        const cu = [0, c + 3, c + 3, 3 * c + 4], lay = varlenLayout(cu, c);
        const packed = { b: 1, t: cu[3]!, hq: 4, h: 2, scale: 0.3, ...flags, len0: 0, ns: lay.ns, nc: lay.nc };
        cases.push({ kind: "forward_varlen", spec, problem: packed }, { kind: "backward_varlen", spec, problem: packed });
      }
      for (const [len0, tn] of [[0, 1], [c - 1, 1], [3, 2 * c + 5]])
        for (const gated of [0, 1]) cases.push({ kind: "decode", spec, problem: { b: 2, t: tn, hq: 4, h: 2, scale: 0.25, gated, initial_state: 0, final_state: 0, len0 } });
    }
    const py = run("python", cases), ts = run("ts", cases);
    expect(ts.length).toBe(cases.length);
    let launches = 0;
    cases.forEach((c, i) => {
      const label = `${c.kind} ${c.spec.join(" ")} ${JSON.stringify(c.problem)}`;
      const a = named(ts[i]!), b = named(py[i]!);
      expect(a, label).toEqual(b);
      // the launches' pointers are named: the plan's buffers reach the kernels (tensor args first)
      for (const l of a.log as { fn?: string; args?: string[] }[]) if (l.fn) expect(String(l.args?.[0]), `${label}: ${l.fn}`).toMatch(/^buffer /);
      launches += a.log.filter((l) => (l as { fn?: string }).fn).length;
    });
    expect(launches).toBeGreaterThan(500); // the logs hold the launches, not nothing
  }, 300_000);

  it("reports the core's errors from TypeScript, naming the argument", () => {
    const script = `
import { NativeRuntime } from ${JSON.stringify(path.join(REPO_ROOT, "runtime", "native-plans.ts"))};
const rt = new NativeRuntime([${JSON.stringify(MANIFEST)}], ["/nonexistent/kernels"]);
const tryIt = (f) => { try { f(); return "ok"; } catch (e) { return e.message; } };
const out = {
  hq: tryIt(() => rt.plan("forward", { deg: 2, d: 64, e: 64, chunk: 128, dtype: "bf16" }, { b: 1, t: 10, hq: 3, h: 2, scale: 0.1 })),
  kind: tryIt(() => rt.plan("sideways", { deg: 2, d: 64, e: 64, chunk: 128, dtype: "bf16" }, { b: 1, t: 10, hq: 2, h: 2, scale: 0.1 })),
  spec: tryIt(() => rt.plan("forward", { deg: 4, d: 48, e: 48, chunk: 64, dtype: "f16" }, { b: 1, t: 10, hq: 2, h: 2, scale: 0.1 })),
  nc: tryIt(() => rt.plan("forward_varlen", { deg: 2, d: 64, e: 64, chunk: 128, dtype: "bf16" }, { b: 1, t: 300, hq: 2, h: 2, scale: 0.1, ns: 2, nc: 2 })),
  ptrs: tryIt(() => rt.plan("forward", { deg: 2, d: 64, e: 64, chunk: 128, dtype: "bf16" }, { b: 1, t: 10, hq: 2, h: 2, scale: 0.1 }).run({ Qx: 1n }, 0n, 0)),
};
rt.close();
console.log(JSON.stringify(out));
`;
    const file = path.join(REPO_ROOT, "test", "fixtures", `.native-plans-errors-${process.pid}.ts`);
    writeFileSync(file, script);
    try {
      const r = spawnSync(process.execPath, ["--import", "tsx", file], { encoding: "utf8", cwd: REPO_ROOT, env: { ...process.env, PRT_LIBCUDA: FAKE } });
      expect(r.status, r.stderr).toBe(0);
      const e = JSON.parse(r.stdout) as Record<string, string>;
      expect(e.hq).toContain("hq: expected a positive multiple of h = 2, received 3");
      expect(e.kind).toContain('kind: expected "forward", "backward", "decode", "forward_varlen" or "backward_varlen", received "sideways"');
      expect(e.spec).toContain("npx retention gen --deg 4 --d 48 --e 48 --chunk 64 --dtype f16 --out build/generated/p4_d48_e48_c64_f16 --compile");
      expect(e.nc).toContain("nc: expected the chunk slots of the packing, in [ceil(t / chunk), t] = [3, 300], received 2");
      expect(e.ptrs).toMatch(/ptrs\.Qx: no buffer of that name/);
    } finally {
      rmSync(file, { force: true });
    }
  }, 120_000);
});
