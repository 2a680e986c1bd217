// Run generated CUDA on the CPU: compile a generated kernel file with g++ against the emulation
// header (prt_tile.cuh here) and a driver that launches one kernel over its whole grid, then read
// its tensors back. Used by test/codegen-emu.test.ts to hold generated CUDA == interpreter.

import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { TensorDType } from "../../dsl/dtype.ts";
import type { Expr } from "../../dsl/ir.ts";
import type { Generated } from "../../codegen/gen.ts";
import type { ManifestKernel } from "../../codegen/manifest.ts";
import type { Target } from "../../codegen/lir.ts";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DTYPE_CODE: Record<TensorDType, number> = { f32: 0, f16: 1, bf16: 2, i32: 3 };
const C_TYPE: Record<string, string> = { f32: "float", f16: "__half", bf16: "__nv_bfloat16", i32: "int" };

/** Evaluate a program-uniform integer expression (grid, dims) for given params. */
export function evalUniform(e: Expr, params: Readonly<Record<string, number>>): number {
  const r = (x: Expr): number => evalUniform(x, params);
  switch (e.op) {
    case "const":
      return e.value;
    case "param": {
      const v = params[e.name];
      if (v === undefined) throw new Error(`no value for param ${e.name}`);
      return v;
    }
    case "binary": {
      const a = r(e.a), b = r(e.b);
      const f: Record<string, (a: number, b: number) => number> = {
        add: (a, b) => a + b, sub: (a, b) => a - b, mul: (a, b) => a * b, div: (a, b) => a / b,
        idiv: (a, b) => Math.trunc(a / b), mod: (a, b) => a % b, max: Math.max, min: Math.min,
        lt: (a, b) => +(a < b), le: (a, b) => +(a <= b), gt: (a, b) => +(a > b), ge: (a, b) => +(a >= b),
        eq: (a, b) => +(a === b), ne: (a, b) => +(a !== b),
      };
      return f[e.fn]!(a, b);
    }
    case "cast":
      return e.to === "i32" ? Math.trunc(r(e.a)) : r(e.a);
    case "select":
      return r(e.cond) ? r(e.a) : r(e.b);
    default:
      throw new Error(`not a uniform expression: ${e.op}`);
  }
}

/** Write the generated files of one spec and a driver into `dir`; compile for one target's bodies
 * (sm_90a: the kernels' `#if defined(__CUDA_ARCH_FEAT_SM90_ALL)` branches); return the binary. */
export function buildEmulator(g: Generated, dir: string, target: Target = "sm_80"): string {
  if (g.manifest.files.length !== 1) throw new Error("buildEmulator: one spec per generation");
  const file = g.manifest.files[0]!;
  // the device headers are the emulation's (prt_tile.cuh on the include path defines Wgmma too)
  for (const [name, text] of g.files) if (name !== "prt_tile.cuh" && name !== "prt_wgmma.cuh") writeFileSync(path.join(dir, name), text);
  writeFileSync(path.join(dir, "prt_wgmma.cuh"), "#pragma once\n// emulation: prt::Wgmma is defined by test/codegen-emu/prt_tile.cuh\n");
  const cases = g.manifest.kernels.map((k, i) => {
    let ti = 0, pi = 0;
    const args = k.args.map((a) =>
      a.kind === "tensor"
        ? `static_cast<${a.role === "in" ? "const " : ""}${C_TYPE[a.dtype]}*>(g_tensors[${ti++}])`
        : a.type === "i32" ? `static_cast<int>(g_params[${pi++}])` : `static_cast<float>(g_params[${pi++}])`,
    );
    return `    case ${i}: ${k.symbol}(${args.join(", ")}); break;`;
  });
  const driver = `// emulation driver for ${file.source} (test/codegen-emu/harness.ts)
#include "prt_tile.cuh"
alignas(1024) unsigned char prt_smem[1 << 18];
#include "${file.source}"
#include <fstream>
static void* g_tensors[64];
static double g_params[64];
static int g_kernel;
static void body() {
  switch (g_kernel) {
${cases.join("\n")}
  }
}
template <typename T> static void* fill(const std::vector<float>& v) {
  T* p = static_cast<T*>(std::aligned_alloc(256, (v.size() * sizeof(T) + 255) / 256 * 256 + 256));
  for (size_t i = 0; i < v.size(); ++i) p[i] = prt::from_f32<T>(v[i]);
  return p;
}
static void* fill_i32(const std::vector<float>& v) {  // a table: integer values sent as f32
  int* p = static_cast<int*>(std::aligned_alloc(256, (v.size() * 4 + 255) / 256 * 256 + 256));
  for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<int>(v[i]);
  return p;
}
template <typename T> static void dump(std::ofstream& o, void* p, size_t n) {
  for (size_t i = 0; i < n; ++i) { const float f = prt::to_f32(static_cast<T*>(p)[i]); o.write(reinterpret_cast<const char*>(&f), 4); }
}
int main(int argc, char** argv) {
  std::ifstream in(argv[1], std::ios::binary);
  auto i32 = [&] { int v; in.read(reinterpret_cast<char*>(&v), 4); return v; };
  g_kernel = i32();
  const int reverse = i32(), threads = i32(), smem = i32(), gx = i32(), gy = i32(), gz = i32(), nt = i32();
  std::vector<int> codes(nt);
  std::vector<size_t> counts(nt);
  for (int t = 0; t < nt; ++t) {
    codes[t] = i32();
    long long n; in.read(reinterpret_cast<char*>(&n), 8);
    counts[t] = static_cast<size_t>(n);
    std::vector<float> v(counts[t]);
    in.read(reinterpret_cast<char*>(v.data()), 4 * v.size());
    g_tensors[t] = codes[t] == 0 ? fill<float>(v) : codes[t] == 1 ? fill<__half>(v) : codes[t] == 2 ? fill<__nv_bfloat16>(v) : fill_i32(v);
  }
  const int np = i32();
  in.read(reinterpret_cast<char*>(g_params), 8 * np);
  for (int z = 0; z < gz; ++z)
    for (int y = 0; y < gy; ++y)
      for (int x = 0; x < gx; ++x) {
        std::memset(prt_smem, 0xff, smem);  // NaN in every dtype: reading an unwritten element shows
        std::memset(prt_smem + smem, 0xab, sizeof prt_smem - smem);  // past the block's bytes: must stay
        emu::run_block(x, y, z, threads, reverse != 0, body);
        for (size_t i = smem; i < sizeof prt_smem; ++i)
          if (prt_smem[i] != 0xab) { std::fprintf(stderr, "emu: shared memory written at byte %zu, past the block's %d\\n", i, smem); return 3; }
      }
  std::ofstream out(argv[2], std::ios::binary);
  for (int t = 0; t < nt; ++t)
    if (codes[t] == 0) dump<float>(out, g_tensors[t], counts[t]);
    else if (codes[t] == 1) dump<__half>(out, g_tensors[t], counts[t]);
    else if (codes[t] == 2) dump<__nv_bfloat16>(out, g_tensors[t], counts[t]);
    else for (size_t i = 0; i < counts[t]; ++i) { const float f = static_cast<float>(static_cast<int*>(g_tensors[t])[i]); out.write(reinterpret_cast<const char*>(&f), 4); }
  return 0;
}
`;
  writeFileSync(path.join(dir, "driver.cc"), driver);
  const bin = path.join(dir, `emu-${target}`);
  // the kernel file includes "prt_tile.cuh": only the emulation one is on the include path
  const arch = target === "sm_90a" ? ["-D__CUDA_ARCH_FEAT_SM90_ALL"] : [];
  execFileSync("g++", ["-std=c++17", "-O1", "-w", ...arch, "-I", HERE, "-o", bin, path.join(dir, "driver.cc")], { stdio: "pipe" });
  return bin;
}

/** Launch kernel number `index` of the emulator's spec over its whole grid; tensors are updated in place. */
export function runEmulated(
  bin: string,
  dir: string,
  index: number,
  k: ManifestKernel,
  grid: readonly [number, number, number],
  tensors: Record<string, Float32Array>,
  params: Readonly<Record<string, number>>,
  reverse: boolean,
): void {
  const parts: Buffer[] = [];
  const i32 = (v: number): void => void parts.push(Buffer.from(new Int32Array([v]).buffer));
  i32(index);
  i32(reverse ? 1 : 0);
  i32(k.threads);
  i32(k.smemBytes);
  grid.forEach(i32);
  const ts = k.args.filter((a) => a.kind === "tensor");
  i32(ts.length);
  for (const a of ts) {
    const data = tensors[a.name]!;
    i32(DTYPE_CODE[a.dtype as TensorDType]);
    parts.push(Buffer.from(new BigInt64Array([BigInt(data.length)]).buffer));
    parts.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  }
  const ps = k.args.filter((a) => a.kind === "param");
  i32(ps.length);
  parts.push(Buffer.from(new Float64Array(ps.map((p) => params[p.name]!)).buffer));
  const input = path.join(dir, `in-${index}.bin`), output = path.join(dir, `out-${index}.bin`);
  writeFileSync(input, Buffer.concat(parts));
  execFileSync(bin, [input, output], { stdio: "pipe", timeout: 600_000 });
  const out = readFileSync(output);
  let off = 0;
  for (const a of ts) {
    const t = tensors[a.name]!;
    t.set(new Float32Array(out.buffer.slice(out.byteOffset + off, out.byteOffset + off + 4 * t.length)));
    off += 4 * t.length;
  }
}
