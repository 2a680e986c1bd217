// The tuned-schedules file that `gen` applies (codegen/schedules.json, written by bench/autotune.ts):
// every kernel's schedules parse, the attention kernels' blockD = 0 included, and bad entries are
// errors naming the entry and the field.
import { describe, expect, it } from "vitest";
import { parseSchedules } from "../codegen/gen.ts";
import { KERNELS } from "../dsl/kernels/index.ts";
import { checkSpec, specKey } from "../dsl/spec.ts";

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
  });
});
