// The DSL as the package exports it ("power-retention-compiler/dsl"): for kernel authors, the
// tile builder, the IR and its validator, printer and interpreter, and the kernels there are; for
// anyone without a GPU, the plans (forward, backward, decode) and the CPU executor that runs them.

// writing and checking kernels
export { traceKernel, KernelBuilder, Val, Tile, TensorRef, TableRef, Range, range, i32, f32, bool, select, max, min, type Scalar, type MapIndex } from "./builder.ts";
export type { Kernel, Stmt, Expr, Slice, Space, TileType, BufferDecl, TensorDecl, ParamDecl, UnaryFn, BinaryFn } from "./ir.ts";
export { exprChildren, mapExprChildren } from "./ir.ts";
export { validateKernel, assertValid } from "./validate.ts";
export { printKernel, printExpr } from "./print.ts";
export { interpret, tensorDims, type KernelArgs } from "./interpret.ts";
export { specKey, scheduleKey, checkSpec, stateFeatures, type Spec, type Schedule, type KernelDef } from "./spec.ts";
export { KERNELS } from "./kernels/index.ts";
export { DTYPES, isDType, dtypeBytes, roundArray, roundF16, roundBF16, roundF32, type DType, type ScalarType, type TensorDType } from "./dtype.ts";
export { featureCount, symPowTable, type SymPowTable } from "./sympow.ts";

// plans and the CPU executor
export { numel, type Plan, type PlanBuffer, type PlanStep } from "./plan-types.ts";
export { forwardPlan, forwardOnCpu, checkProblem, type Problem, type ScheduleTable, type ForwardInputs, type ForwardOutputs } from "./plan.ts";
export { backwardPlan, backwardOnCpu, type BackwardInputs, type BackwardOutputs } from "./plan-backward.ts";
export { decodePlan, createDecodeState, decodeStepOnCpu, type DecodeProblem, type DecodeState, type DecodeInputs } from "./plan-decode.ts";
export { executeOnCpu } from "./execute-cpu.ts";
export {
  varlenForwardPlan, varlenBackwardPlan, varlenForwardOnCpu, varlenBackwardOnCpu, varlenLayout, varlenTables, offsetsOf, VARLEN_TABLES, checkCuSeqlens,
  type VarlenProblem, type VarlenLayout, type VarlenForwardOutputs, type VarlenBackwardOutputs,
} from "./plan-varlen.ts";
