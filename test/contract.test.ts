// The contract between gen and the runtimes (dsl/contract/): one module that codegen/ and runtime/
// import and that imports neither, and three readers of the manifest held to it. The TypeScript
// runtime, the native core (libprt.so, through the Python package's ctypes layer) and the Python
// package read the same golden manifests: the one gen writes, accepted by all three, and broken
// copies of it (another format, a list missing, each contract field of a kernel entry and of a plan
// removed or of another type, an unknown plan kind), each refused by all three with an error that
// names what is wrong. The three builders of the command that makes a missing spec agree.

import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { generate, writeGenerated } from "../codegen/gen.ts";
import { KERNEL_FIELDS, PLAN_FIELDS, PLAN_KINDS, parseManifest } from "../dsl/contract/manifest.ts";
import { REPO_ROOT } from "../dsl/contract/package-root.ts";
import { genCommand, loadManifest } from "../runtime/kernels.ts";
import { ensureLibprt, libprtPath } from "./helpers/libprt.ts";

const tmp = mkdtempSync(path.join(tmpdir(), "prt-contract-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Every .ts / .mjs file under a folder of the repository. */
function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(path.join(REPO_ROOT, dir))) {
    const rel = path.join(dir, name);
    if (statSync(path.join(REPO_ROOT, rel)).isDirectory()) out.push(...sources(rel));
    else if (/\.(ts|mjs)$/.test(name)) out.push(rel);
  }
  return out;
}

/** The repository folder (first path segment) each relative import of a file resolves into. */
function importedFolders(file: string): { spec: string; folder: string }[] {
  const text = readFileSync(path.join(REPO_ROOT, file), "utf8");
  const specs = [...text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;'"]*?(?:from\s*)?["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)/g)].map((m) => m[1] ?? m[2]!);
  return specs
    .filter((s) => s.startsWith("."))
    .map((spec) => ({ spec, folder: path.relative(REPO_ROOT, path.resolve(REPO_ROOT, path.dirname(file), spec)).split(path.sep)[0]! }));
}

describe("the contract module", () => {
  it("codegen/ and runtime/ never import each other; dsl/ (the contract with it) imports neither", () => {
    const bad: string[] = [];
    const rules: [string, string[]][] = [["codegen", ["runtime"]], ["runtime", ["codegen"]], ["dsl", ["codegen", "runtime", "templates"]]];
    let files = 0;
    for (const [dir, forbidden] of rules)
      for (const f of sources(dir)) {
        files++;
        for (const { spec, folder } of importedFolders(f)) if (forbidden.includes(folder)) bad.push(`${f} imports '${spec}' (${folder}/)`);
      }
    expect(files).toBeGreaterThan(50);
    expect(bad).toEqual([]);
    // the scan sees imports at all: the runtime imports the contract
    expect(importedFolders("runtime/kernels.ts").some((x) => x.spec.includes("dsl/contract/manifest.ts"))).toBe(true);
  });
});

// ---- the three readers on golden manifests -----------------------------------------------------

type Json = Record<string, unknown>;
const GOOD = path.join(tmp, "good");
writeGenerated(GOOD, generate({ selection: { degs: [2], ds: [16], es: null, chunks: [16], dtypes: ["f32"], archs: ["sm_80", "sm_90a"], kernels: null } }));
const goodManifest = JSON.parse(readFileSync(path.join(GOOD, "manifest.json"), "utf8")) as Json;

/** Broken copies of the good manifest: name -> (what to do to it, what every reader's error must name). */
function brokenCases(): { name: string; edit: (m: Json) => void; names: RegExp }[] {
  const wrongType = (t: string): unknown => (t === "string" ? 7 : t === "number" ? "7" : t === "array" ? {} : []);
  const cases: { name: string; edit: (m: Json) => void; names: RegExp }[] = [
    { name: "format 1", edit: (m) => void (m.format = 1), names: /format/ },
    { name: "no kernels list", edit: (m) => void delete m.kernels, names: /'kernels' is missing or not a list/ },
    { name: "no plans list", edit: (m) => void delete m.plans, names: /'plans' is missing or not a list/ },
    { name: "an unknown plan kind", edit: (m) => void ((m.plans as Json[])[0]!.kind = "sideways"), names: /plan 0: kind .*sideways/ },
  ];
  for (const [field, t] of Object.entries(KERNEL_FIELDS)) {
    cases.push({ name: `kernel without ${field}`, edit: (m) => void delete (m.kernels as Json[])[0]![field], names: new RegExp(`kernel 0.*field '${field}' is missing`) });
    cases.push({ name: `kernel ${field} not a ${t}`, edit: (m) => void ((m.kernels as Json[])[0]![field] = wrongType(t)), names: new RegExp(`kernel 0.*field '${field}'`) });
  }
  for (const [field, t] of Object.entries(PLAN_FIELDS)) {
    cases.push({ name: `plan without ${field}`, edit: (m) => void delete (m.plans as Json[])[0]![field], names: new RegExp(`plan 0: field '${field}' is missing`) });
    cases.push({ name: `plan ${field} not a ${t}`, edit: (m) => void ((m.plans as Json[])[0]![field] = wrongType(t)), names: new RegExp(`plan 0: field '${field}'`) });
  }
  return cases;
}

const cases = brokenCases().map((c, i) => {
  const m = JSON.parse(JSON.stringify(goodManifest)) as Json;
  c.edit(m);
  const file = path.join(tmp, `broken-${i}.json`);
  writeFileSync(file, JSON.stringify(m));
  return { ...c, file };
});

/** What the Python package and the native core say of each manifest file: "ok" or the error. */
function pythonAndNative(files: readonly string[]): { py: string; c: string | null }[] {
  let native = true;
  try {
    ensureLibprt();
  } catch {
    native = false;
  }
  const py = `
import json, sys
sys.path.insert(0, ${JSON.stringify(path.join(REPO_ROOT, "runtime", "python"))})
from prt import _manifest
native = ${native ? "True" : "False"}
if native:
    from prt import _native
out = []
for f in json.load(sys.stdin):
    r = {}
    try:
        _manifest.load(f)
        r["py"] = "ok"
    except _manifest.ManifestError as e:
        r["py"] = str(e)
    if native:
        try:
            _native.Runtime([f], "/nonexistent/kernels").close()
            r["c"] = "ok"
        except _native.PrtError as e:
            r["c"] = str(e)
    else:
        r["c"] = None
    out.append(r)
print(json.dumps(out))
`;
  const r = spawnSync("python3", ["-c", py], { input: JSON.stringify(files), encoding: "utf8", env: { ...process.env, PRT_LIB: libprtPath() } });
  if (r.status !== 0) throw new Error(`python3 failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout) as { py: string; c: string | null }[];
}

describe.skipIf(spawnSync("python3", ["--version"]).status !== 0)("the manifest's three readers hold to the contract", () => {
  const files = [path.join(GOOD, "manifest.json"), ...cases.map((c) => c.file)];
  const other = pythonAndNative(files);

  it("all three read the manifest gen writes", () => {
    expect(() => parseManifest(readFileSync(files[0]!, "utf8"), files[0]!)).not.toThrow();
    expect(loadManifest(files[0]!).kernels.length).toBeGreaterThan(10);
    expect(other[0]!.py).toBe("ok");
    if (other[0]!.c !== null) expect(other[0]!.c).toBe("ok");
  });

  it.each(cases.map((c, i) => [c.name, i] as const))("all three refuse a manifest with %s, naming it", (_name, i) => {
    const c = cases[i]!;
    const ts = (() => {
      try {
        loadManifest(c.file);
        return "ok";
      } catch (e) {
        return (e as Error).message;
      }
    })();
    for (const [reader, msg] of [["TypeScript", ts], ["Python", other[i + 1]!.py], ["native core", other[i + 1]!.c]] as const) {
      if (msg === null) continue; // no libprt.so here (the other tests that need it say so)
      expect(msg, `${reader} on a manifest with ${c.name}`).not.toBe("ok");
      expect(msg, `${reader} on a manifest with ${c.name}`).toMatch(c.names);
      expect(msg, `${reader}: says how to fix it`).toMatch(/regenerate it with `(npx )?retention gen/);
    }
  });

  it("the contract's plan kinds are the ones the readers take", () => {
    expect([...PLAN_KINDS].sort()).toEqual(["backward", "backward_varlen", "decode", "forward", "forward_varlen"]);
  });

  it("the command that builds a missing spec is the same in all three", () => {
    const spec = { deg: 4, d: 48, e: 40, chunk: 32, dtype: "bf16" as const };
    const saved = { cwd: process.cwd(), kdir: process.env.PRT_KERNEL_DIR };
    delete process.env.PRT_KERNEL_DIR;
    process.chdir(REPO_ROOT);
    let ts: string;
    try {
      ts = genCommand(spec);
    } finally {
      process.chdir(saved.cwd);
      if (saved.kdir !== undefined) process.env.PRT_KERNEL_DIR = saved.kdir;
    }
    const py = `
import json, sys
sys.path.insert(0, ${JSON.stringify(path.join(REPO_ROOT, "runtime", "python"))})
from prt import _manifest
print(json.dumps(_manifest.Spec(4, 48, 40, 32, "bf16").gen_command()))
try:
    from prt import _native
    _native.Runtime([sys.argv[1]], "/nonexistent/kernels").plan("forward", (4, 48, 40, 32, "bf16"), 1, 10, 2, 2, 0.1)
except Exception as e:
    print(json.dumps(str(e)))
`;
    const r = spawnSync("python3", ["-c", py, files[0]!], { encoding: "utf8", env: { ...process.env, PRT_LIB: libprtPath() } });
    expect(r.status, r.stderr).toBe(0);
    const [pyCmd, nativeErr] = r.stdout.trim().split("\n").map((l) => JSON.parse(l) as string);
    expect(ts).toBe("npx retention gen --deg 4 --d 48 --e 40 --chunk 32 --dtype bf16 --out build/generated/p4_d48_e40_c32_bf16 --compile");
    expect(pyCmd).toBe(ts);
    if (nativeErr && !/libprt/.test(nativeErr)) expect(nativeErr).toContain(`\`${ts}\``);
  });
});
