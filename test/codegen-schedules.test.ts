// The tuned-schedules file that `gen` applies (codegen/schedules.json, written by bench/autotune.ts):
// every kernel's schedules parse, the attention kernels' blockD = 0 included, and bad entries are
// errors naming the entry and the field.
import { describe, expect, it } from "vitest";
import { generate, parseSchedules } from "../codegen/gen.ts";
import { KERNELS } from "../dsl/kernels/index.ts";
import { checkSpec, scheduleKey, specKey } from "../dsl/spec.ts";

const spec = checkSpec({ deg: 2, d: 64, e: 64, chunk: 128, dtype: "bf16" });

describe("parseSchedules", () => {
  it("accepts each kernel's default schedule for the main spec, attention's blockD = 0 included", () => {
    const entries = Object.fromEntries(KERNELS.map((k) => [`${k.name}/${specKey(spec)}`, k.schedule(spec)]));
    expect(Object.values(entries).some((s) => s.blockD === 0)).toBe(true);
    const parsed = parseSchedules(JSON.stringify(entries), "test.json");
    expect(parsed.size).toBe(KERNELS.length);
    for (const k of KERNELS) expect(parsed.get(`${k.name}/${specKey(spec)}`)).toEqual(k.schedule(spec));
  });

  it("names the entry and the field of a bad schedule", () => {
    const key = `attention/${specKey(spec)}`;
    const good = KERNELS.find((k) => k.name === "attention")!.schedule(spec);
    expect(() => parseSchedules(JSON.stringify({ [key]: { ...good, blockD: -1 } }), "s.json")).toThrow(
      /s.json: entry 'attention\/p2_d64_e64_c128_bf16': schedule.blockD: expected a non-negative integer, received -1/,
    );
    expect(() => parseSchedules(JSON.stringify({ [key]: { ...good, numWarps: 0 } }), "s.json")).toThrow(/schedule.numWarps: expected a positive integer, received 0/);
    expect(() => parseSchedules(JSON.stringify({ [`nope/${specKey(spec)}`]: good }), "s.json")).toThrow(/no kernel named 'nope'/);
    expect(() => parseSchedules(JSON.stringify({ [key]: { ...good, minBlocks: 0 } }), "s.json")).toThrow(/schedule.minBlocks: expected an integer in 1..32, received 0/);
    expect(() => parseSchedules(JSON.stringify({ [key]: { ...good, occupancy: 2 } }), "s.json")).toThrow(/unknown schedule field occupancy/);
  });

  it("takes minBlocks (two blocks an SM) into the key, the symbol's launch bounds and the manifest", () => {
    const key = `attention_y/${specKey(spec)}`;
    const sch = { numWarps: 8, blockD: 0, blockT: 128, stages: 2, minBlocks: 2 };
    expect(parseSchedules(JSON.stringify({ [key]: sch }), "s.json").get(key)).toEqual(sch);
    expect(parseSchedules(JSON.stringify({ [key]: { ...sch, minBlocks: 1 } }), "s.json").get(key)).toEqual({ numWarps: 8, blockD: 0, blockT: 128, stages: 2 });
    expect(scheduleKey(sch)).toBe("w8_bd0_bt128_s2_m2");
    expect(scheduleKey({ ...sch, minBlocks: 1 })).toBe("w8_bd0_bt128_s2");
    const g = generate({
      selection: { degs: [2], ds: [64], es: null, chunks: [128], dtypes: ["bf16"], archs: ["sm_80", "sm_90a"], kernels: ["attention_y"] },
      scheduleFor: (k, s) => (k.name === "attention_y" ? sch : k.schedule(s)),
    });
    const entry = g.manifest.kernels.find((k) => k.name === "attention_y")!;
    expect(entry.symbol).toMatch(/_w8_bd0_bt128_s2_m2$/);
    expect(entry.schedule).toEqual(sch);
    expect(g.files.get(entry.source)!).toContain(`__launch_bounds__(256, 2) ${entry.symbol}(`);
    for (const name of ["attention_y", "attention_bwd_dkv_y", "attention_bwd_dq_y"])
      expect(KERNELS.find((k) => k.name === name)!.scheduleSpace(spec).some((x) => x.minBlocks === 2), name).toBe(true);
  });
});
