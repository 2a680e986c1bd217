// The kernel search path (runtime/search-path.ts): RETENTION_KERNELS, then the current project's
// build/generated, then the package's own generated/ and build/generated; the first manifest that
// holds a (kernel, spec) wins; fatbins beside their manifest or in the package's build/kernels; and
// the error for a spec found nowhere lists every place searched and the gen command. No GPU: only
// manifests and files. Manifests are generated here (d = 16, chunk 16, which the default set lacks).

import { cpSync, mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { generate, writeGenerated } from "../codegen/gen.ts";
import { forwardPlan, type Problem } from "../dsl/plan.ts";
import { specKey, type Spec } from "../dsl/spec.ts";
import { preparePlan } from "../runtime/execute-gpu.ts";
import { checkFatbin, findKernel, loadManifests, MissingKernelError, resolveFatbin } from "../runtime/kernels.ts";
import { DEFAULT_MANIFEST, kernelSearchPath, manifestPaths, PACKAGE_EXTRA_DIR, PACKAGE_KERNEL_DIR, projectRoot } from "../dsl/contract/search-path.ts";

const TMP = realpathSync(mkdtempSync(path.join(tmpdir(), "prt-search-path-")));
const SPEC: Spec = { deg: 2, d: 16, e: 16, chunk: 16, dtype: "f32" };
const KEY = specKey(SPEC);
const GEN = path.join(TMP, "gen", KEY); // one gen --out folder, copied wherever a test needs it
const PROJ = path.join(TMP, "proj");
const SUB = path.join(PROJ, "src", "deep"); // the working directory: two folders below the project
const ENV_DIR = path.join(TMP, "env-one"); // a gen --out folder
const ENV_PARENT = path.join(TMP, "env-many"); // a folder of them
const PROJ_DIR = path.join(PROJ, "build", "generated", KEY);

const saved = { cwd: process.cwd(), env: { PRT_MANIFEST: process.env.PRT_MANIFEST, PRT_KERNEL_DIR: process.env.PRT_KERNEL_DIR, RETENTION_KERNELS: process.env.RETENTION_KERNELS } };
const attention = (): ReturnType<typeof findKernel> => findKernel("attention", SPEC, forwardPlan(problem).steps.find((s) => s.kernel.name === "attention")!.schedule);
const problem: Problem = { b: 1, t: 40, hq: 1, h: 1, ...SPEC, scale: 0.25, gated: true, initialState: false, finalState: false };

beforeAll(() => {
  writeGenerated(GEN, generate({ selection: { degs: [2], ds: [16], es: null, chunks: [16], dtypes: ["f32"], archs: ["sm_80"], kernels: null } }));
  mkdirSync(SUB, { recursive: true });
  writeFileSync(path.join(PROJ, "package.json"), JSON.stringify({ name: "a-user-project", private: true }));
  cpSync(GEN, ENV_DIR, { recursive: true });
  cpSync(GEN, path.join(ENV_PARENT, KEY), { recursive: true });
  cpSync(GEN, PROJ_DIR, { recursive: true });
}, 60_000);

beforeEach(() => {
  for (const k of Object.keys(saved.env)) delete process.env[k];
  process.chdir(SUB);
});

afterEach(() => {
  process.chdir(saved.cwd);
  for (const [k, v] of Object.entries(saved.env)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

afterAll(() => rmSync(TMP, { recursive: true, force: true }));

const thrown = (f: () => unknown): Error => {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected an error, none was thrown");
};

describe("the kernel search path", () => {
  it("the project is the nearest folder above the working directory with a package.json", () => {
    expect(projectRoot()).toBe(PROJ);
    expect(projectRoot(path.join(PROJ, "build"))).toBe(PROJ);
  });

  it("is RETENTION_KERNELS (in its order), the project's build/generated, then the package's generated/ and build/generated", () => {
    const file = path.join(ENV_DIR, "manifest.json");
    process.env.RETENTION_KERNELS = [ENV_PARENT, ENV_DIR, file].join(":");
    const places = kernelSearchPath();
    expect(places.map((p) => [p.place, p.from])).toEqual([
      [ENV_PARENT, "RETENTION_KERNELS"],
      [ENV_DIR, "RETENTION_KERNELS"],
      [file, "RETENTION_KERNELS"],
      [path.join(PROJ, "build", "generated"), "project"],
      [DEFAULT_MANIFEST, "package"],
      [PACKAGE_EXTRA_DIR, "package"],
    ]);
    expect(places[0]!.manifests).toEqual([path.join(ENV_PARENT, KEY, "manifest.json")]); // a folder of gen folders
    expect(places[1]!.manifests).toEqual([file]); // a gen folder
    expect(places[3]!.manifests).toEqual([path.join(PROJ_DIR, "manifest.json")]);
    // each manifest once, in that order (the same file named twice is searched once)
    expect(manifestPaths().slice(0, 3)).toEqual([path.join(ENV_PARENT, KEY, "manifest.json"), file, path.join(PROJ_DIR, "manifest.json")]);
  });

  it("the first manifest holding the kernel wins: RETENTION_KERNELS, else the project, else nothing for this spec", () => {
    process.env.RETENTION_KERNELS = ENV_DIR;
    expect(attention().manifest).toBe(path.join(ENV_DIR, "manifest.json"));
    delete process.env.RETENTION_KERNELS;
    expect(attention().manifest).toBe(path.join(PROJ_DIR, "manifest.json"));
    process.chdir(TMP); // no package.json above: the project is TMP itself, whose build/generated does not exist
    expect(thrown(attention)).toBeInstanceOf(MissingKernelError);
  });

  it("PRT_MANIFEST replaces the search with exactly its files", () => {
    process.env.RETENTION_KERNELS = ENV_DIR;
    process.env.PRT_MANIFEST = path.join(ENV_PARENT, KEY, "manifest.json");
    expect(manifestPaths()).toEqual([path.join(ENV_PARENT, KEY, "manifest.json")]);
    expect(loadManifests().map((m) => m.file)).toEqual([path.join(ENV_PARENT, KEY, "manifest.json")]);
  });

  it("a spec found nowhere: the error lists every place searched and gives the gen command into the project's build/generated", () => {
    process.env.RETENTION_KERNELS = ENV_DIR;
    const p: Problem = { ...problem, chunk: 32 };
    const e = thrown(() => preparePlan(forwardPlan(p)));
    expect(e).toBeInstanceOf(MissingKernelError);
    const out = path.join(PROJ, "build", "generated", "p2_d16_e16_c32_f32");
    const cmd = `npx retention gen --deg 2 --d 16 --e 16 --chunk 32 --dtype f32 --out ${out} --compile`;
    expect((e as MissingKernelError).command).toBe(cmd);
    expect(e.message.startsWith("the kernel search path (")).toBe(true);
    expect(e.message).toContain(") has no kernels attention, update_state, discounted_cumsum, query_state for spec p2_d16_e16_c32_f32; generate");
    // every place once, in the search order, before the kernels, then the command (issue 27)
    const places = [`${ENV_DIR} (RETENTION_KERNELS: manifest.json)`, `${path.join(PROJ, "build", "generated")} (project: ${KEY}/manifest.json)`, `${DEFAULT_MANIFEST} (package: `, `${PACKAGE_EXTRA_DIR} (package: `];
    const at = places.map((pl) => e.message.indexOf(pl));
    for (const pl of places) expect(e.message.split(pl).length - 1, pl).toBe(1);
    expect([...at].sort((a, b) => a - b)).toEqual(at);
    expect(at[3]!).toBeLessThan(e.message.indexOf("has no kernels"));
    expect(e.message).toContain("RETENTION_KERNELS is set) has no");
    expect(e.message.endsWith(`generate and compile them with \`${cmd}\``)).toBe(true);
    // run from the project's root, the command's --out is relative
    process.chdir(PROJ);
    expect((thrown(() => preparePlan(forwardPlan(p))) as MissingKernelError).command).toContain(" --out build/generated/p2_d16_e16_c32_f32 ");
  });

  it("no manifest anywhere: the error lists the places and the command for the default set", () => {
    process.env.PRT_MANIFEST = path.join(TMP, "nowhere.json");
    const e = thrown(() => loadManifests());
    expect(e).toBeInstanceOf(MissingKernelError);
    expect(e.message).toMatch(/no kernel manifest found \(looked in .*nowhere\.json \(PRT_MANIFEST: no manifest\)\): generate and compile the default kernels with `npx retention gen --out \S+generated --compile`/);
  });
});

describe("fatbins", () => {
  it("are looked for beside their manifest, then in the package's build/kernels; PRT_KERNEL_DIR replaces both", () => {
    const k = attention();
    const beside = path.join(PROJ_DIR, `${KEY}.fatbin`);
    expect(k.fatbinCandidates).toEqual([beside, path.join(PACKAGE_KERNEL_DIR, `${KEY}.fatbin`)]);
    const e = thrown(() => checkFatbin(k));
    expect(e).toBeInstanceOf(MissingKernelError);
    expect(e.message).toBe(
      `the fatbin of kernel attention (${k.symbol}) is missing: none of ${k.fatbinCandidates.join(", ")} exists; compile it with \`npx retention build --out ${PROJ_DIR}\``,
    );
    writeFileSync(beside, "placeholder");
    try {
      expect(resolveFatbin(k)).toBe(beside); // found once it is there, without reloading the manifest
      expect(checkFatbin(k)).toBe(beside);
    } finally {
      rmSync(beside);
    }
    process.env.PRT_KERNEL_DIR = path.join(TMP, "kernels");
    expect(attention().fatbinCandidates).toEqual([path.join(TMP, "kernels", `${KEY}.fatbin`)]);
  });

  it("the default set's are in the package's build/kernels", () => {
    process.env.PRT_MANIFEST = DEFAULT_MANIFEST;
    const m = loadManifests()[0]!;
    for (const k of m.kernels) expect(k.fatbinCandidates).toEqual([path.join(PACKAGE_KERNEL_DIR, path.basename(k.fatbin))]);
  });
});
