// Power retention on the GPU for the manifest's f16 specs: see retention-harness.ts.
import { defineRetentionGpuTests } from "./retention-harness.ts";

defineRetentionGpuTests("f16");
