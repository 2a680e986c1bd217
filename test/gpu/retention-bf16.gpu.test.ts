// Power retention on the GPU for the manifest's bf16 specs: see retention-harness.ts.
import { defineRetentionGpuTests } from "./retention-harness.ts";

defineRetentionGpuTests("bf16");
