/*
 * prt core: a thin, generic C ABI over the CUDA driver API.
 *
 * The driver (libcuda.so.1) is opened at run time with dlopen; nothing here links libcuda or
 * cudart, so a binary that contains this core loads on a machine without a GPU. CUDA is first
 * touched by prt_init() (or lazily by any call that needs it).
 *
 * Conventions
 *   - Every function returns 0 on success and a nonzero code on failure (PRT_OK / PRT_E*). On
 *     failure a thread-local message is set, read with prt_last_error(); it names the operation,
 *     the CUDA error name and string, and the caller's context where one is given.
 *   - Device pointers are 64-bit integers (prt_devptr). Modules, functions and events are opaque
 *     handles (the driver's CUmodule / CUfunction / CUevent).
 *   - Calls run in the context current on the calling thread (the one PyTorch or another caller
 *     made current); where there is none, device 0's primary context is made current first.
 *     prt_launch and the events use the legacy default stream; prt_launch_async and the
 *     retention plans (prt_plan_run) take the caller's stream.
 *
 * This header is also what a PyTorch (or any other) binding includes later.
 */
#ifndef PRT_CORE_H
#define PRT_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define PRT_API __attribute__((visibility("default")))
#else
#define PRT_API
#endif

typedef uint64_t prt_devptr;
typedef struct prt_module_st* prt_module;
typedef struct prt_function_st* prt_function;
typedef struct prt_event_st* prt_event;

enum {
  PRT_OK = 0,
  PRT_ENODRIVER = 1, /* libcuda.so.1 could not be loaded, or lacks a symbol we need */
  PRT_ENODEVICE = 2, /* driver loaded but no CUDA device */
  PRT_ECUDA = 3,     /* a CUDA driver call failed */
  PRT_EINVAL = 4,    /* bad argument (null pointer, ...) */
  PRT_EIO = 5        /* file could not be read */
};

/* Function attributes (values are the driver's CUfunction_attribute). */
enum {
  PRT_FUNC_MAX_THREADS_PER_BLOCK = 0,
  PRT_FUNC_SHARED_SIZE_BYTES = 1,
  PRT_FUNC_CONST_SIZE_BYTES = 2,
  PRT_FUNC_LOCAL_SIZE_BYTES = 3,
  PRT_FUNC_NUM_REGS = 4,
  PRT_FUNC_PTX_VERSION = 5,
  PRT_FUNC_BINARY_VERSION = 6,
  PRT_FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
};

/* The message of the last failure on this thread ("" if none yet). Valid until the next prt_
 * call on this thread. */
PRT_API const char* prt_last_error(void);

/* Load the driver, cuInit, retain device 0's primary context and make it current. Idempotent;
 * if it fails it is tried again on the next call. */
PRT_API int prt_init(void);
/* Driver version as the driver reports it (e.g. 13000). Needs the driver only. */
PRT_API int prt_driver_version(int* version);

/* Devices. prt_device_count needs the driver only (a machine with the driver but no device gives
 * 0); the others initialise first. */
PRT_API int prt_device_count(int* count);
PRT_API int prt_device_name(int device, char* buf, size_t buf_len);
PRT_API int prt_device_compute_capability(int device, int* major, int* minor);
PRT_API int prt_device_sm_count(int device, int* sms);
/* Any CUdevice_attribute, by its driver enum value. */
PRT_API int prt_device_attribute(int device, int attribute, int* value);

/* Memory (device 0). */
PRT_API int prt_mem_alloc(prt_devptr* out, size_t bytes);
PRT_API int prt_mem_free(prt_devptr ptr);
PRT_API int prt_mem_info(size_t* free_bytes, size_t* total_bytes);
PRT_API int prt_memcpy_htod(prt_devptr dst, const void* src, size_t bytes);
PRT_API int prt_memcpy_dtoh(void* dst, prt_devptr src, size_t bytes);
PRT_API int prt_memcpy_dtod(prt_devptr dst, prt_devptr src, size_t bytes);
/* count is in elements (bytes for D8, 32-bit words for D32). */
PRT_API int prt_memset_d8(prt_devptr dst, uint8_t value, size_t count);
PRT_API int prt_memset_d32(prt_devptr dst, uint32_t value, size_t count);

/* Modules and functions. prt_module_load reads a fatbin / cubin / PTX file and hands its bytes
 * to cuModuleLoadData; errors name the file. */
PRT_API int prt_module_load(prt_module* out, const char* path);
PRT_API int prt_module_unload(prt_module module);
/* Errors name the kernel and the module's file. */
PRT_API int prt_module_get_function(prt_function* out, prt_module module, const char* name);
PRT_API int prt_function_set_max_dynamic_smem(prt_function fn, int bytes);
PRT_API int prt_function_get_attribute(prt_function fn, int attribute, int* value);

/* Launch on the default stream. args is what cuLaunchKernel wants: one pointer per kernel
 * parameter, pointing at the parameter's value. `what` (may be NULL) names the launch in errors
 * ("launch of <what> failed: ...") and is remembered for errors that surface later. */
PRT_API int prt_launch(prt_function fn, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                       unsigned block_x, unsigned block_y, unsigned block_z, unsigned smem_bytes,
                       void** args, const char* what);
/* Launch on `stream` (a CUstream; NULL: the legacy default stream). Never synchronizes; capturable
 * in a CUDA graph. grid and block are 3 values each. */
PRT_API int prt_launch_async(prt_function fn, const unsigned grid[3], const unsigned block[3],
                             unsigned smem_bytes, void* stream, void** args, const char* what);
/* cuMemsetD32Async: count 32-bit words on `stream`. */
PRT_API int prt_memset_d32_async(prt_devptr dst, uint32_t value, size_t count, void* stream);
/* The context calls from this thread run in (see Conventions), initialising if needed. Modules
 * and functions belong to a context. */
PRT_API int prt_current_context(void** out);

/* cuCtxSynchronize; an asynchronous error is reported with the last launch's context. */
PRT_API int prt_synchronize(void);
/* The `what` of the last launch on any thread ("" if none). */
PRT_API const char* prt_last_launch(void);

/* Events, for timing on the default stream. elapsed waits for `end` to complete. */
PRT_API int prt_event_create(prt_event* out);
PRT_API int prt_event_record(prt_event ev);
PRT_API int prt_event_elapsed_ms(float* ms, prt_event start, prt_event end);
PRT_API int prt_event_destroy(prt_event ev);


/* ---- Retention plans ----------------------------------------------------------------------------
 *
 * The composition of kernels into a forward, backward or decode call, as `gen` writes it into the
 * manifest (codegen/manifest.ts, "plans"; traced from dsl/plan*.ts), run here for any sizes.
 *
 *   prt_runtime rt;  prt_runtime_open(&rt, "generated/manifest.json", "build/kernels");
 *   prt_problem p = {.b = 2, .t = 1000, .hq = 8, .h = 8, .scale = 0.125, .gated = 1};
 *   prt_plan plan;   prt_plan_create(&plan, rt, "forward", 2, 64, 64, 128, "bf16", &p);
 *   size_t ws = prt_plan_workspace_bytes(plan, 0);          // then allocate ws bytes (256-aligned)
 *   prt_devptr ptrs[n] = one pointer per buffer of role INPUT or OUTPUT (prt_plan_buffer), 0 else
 *   prt_plan_run(plan, stream, ptrs, n, workspace, ws, 0);  // async, on `stream`
 *
 * Creating a plan needs no driver: it reads the manifest, evaluates the plan's expressions for the
 * sizes and lays out the workspace. Running allocates nothing and never synchronizes, so a CUDA
 * graph can capture it once the plan's kernels are loaded (prt_plan_prepare, or any earlier run).
 * Plans are immutable after creation and may run from several threads at once.
 */
typedef struct prt_runtime_st* prt_runtime;
typedef struct prt_plan_st* prt_plan;

/* `manifests`: one or more manifest.json paths separated by ':' (searched in order for kernels
 * and plans); `kernel_dir`: the folders their fatbins are looked for in (gen's --build-dir),
 * separated by ':', first hit wins; an empty entry stands for each manifest's own folder (so
 * ":/pkg/build/kernels" tries beside the manifest, then the package's). Errors name the files. */
PRT_API int prt_runtime_open(prt_runtime* out, const char* manifests, const char* kernel_dir);
PRT_API void prt_runtime_close(prt_runtime rt);

/* The sizes and options of one call. Q [b,t,hq,d], K [b,t,h,d], V [b,t,h,e], logG [b,t,h]. */
typedef struct prt_problem {
  int64_t b, t, hq, h; /* decode: t = tokens of the call (tn); the varlen kinds: b = 1, t = packed length */
  int64_t len0;        /* decode only: cache rows in use before the call, in [0, chunk) */
  double scale;
  int32_t gated;         /* logG given (else a gate of 1) */
  int32_t initial_state; /* forward/backward: S0, Z0 given (varlen: one state per sequence) */
  int32_t final_state;   /* forward/backward: Sfinal, Zfinal wanted (backward: dSfinal, dZfinal given) */
  /* forward_varlen/backward_varlen only (packed sequences, dsl/plan-varlen.ts): ns sequences and
   * nc chunk slots of the chunk-aligned layout (varlenLayout); the plan's i32 inputs chunkSrc [nc],
   * chunkLen [nc] and seqChunk [ns + 1] are the caller's, computed from the offsets (varlenTables). */
  int64_t ns, nc;
} prt_problem;

/* kind: "forward", "backward", "decode", "forward_varlen" or "backward_varlen"; the spec (deg, d, e, chunk, dtype "f16"|"bf16"|"f32")
 * names the plan. A spec or kernels that no manifest has fail with one message: the manifests, every
 * kernel missing, and the gen command(s) that build them. */
PRT_API int prt_plan_create(prt_plan* out, prt_runtime rt, const char* kind, int deg, int d, int e,
                            int chunk, const char* dtype, const prt_problem* problem);
PRT_API void prt_plan_destroy(prt_plan plan);

enum { PRT_BUF_INPUT = 0, PRT_BUF_OUTPUT = 1, PRT_BUF_TEMP = 2 };

typedef struct prt_buffer_info {
  const char* name;  /* valid while the plan lives */
  const char* dtype; /* "f16", "bf16", "f32", or "i32" (a varlen plan's tables) */
  int ndim;
  int64_t shape[8];
  size_t bytes;
  /* INPUT: the caller's (read, and updated in place where the plan writes it, e.g. decode's S);
   * OUTPUT: what the caller reads back (its own memory, or the workspace at `offset` when it
   * passes 0); TEMP: the workspace at `offset`. */
  int role;
  size_t offset;
} prt_buffer_info;

PRT_API int prt_plan_buffer_count(prt_plan plan);
PRT_API int prt_plan_buffer(prt_plan plan, int index, prt_buffer_info* out);
/* Index of the buffer `name`, or -1. */
PRT_API int prt_plan_buffer_index(prt_plan plan, const char* name);
/* Bytes of workspace a run needs: temporaries only, or (outputs_too) room for every output as
 * well, for callers that pass 0 for outputs they do not keep. */
PRT_API size_t prt_plan_workspace_bytes(prt_plan plan, int outputs_too);
PRT_API int prt_plan_step_count(prt_plan plan);
/* One launch, for logs and tests: "symbol grid=(x,y,z) block=n smem=n". */
PRT_API int prt_plan_step_describe(prt_plan plan, int step, char* buf, size_t buf_len);

/* Load the fatbins and functions the plan launches into the current context (cached per context
 * by the runtime). prt_plan_run does it when needed; call it before capturing a CUDA graph. */
PRT_API int prt_plan_prepare(prt_plan plan);

enum { PRT_RUN_POISON = 1 /* fill 'nan' buffers with NaN first: catches unwritten elements */ };

/* Enqueue the plan on `stream` (a CUstream; NULL: the legacy default stream). ptrs[i] is buffer
 * i's device pointer (nptrs == prt_plan_buffer_count); every INPUT needs one, an OUTPUT with 0
 * lives in the workspace (then workspace_bytes must be prt_plan_workspace_bytes(plan, 1)), and a
 * TEMP takes 0 (a pointer there is an error: e.g. logG of a plan created with gated = 0, whose
 * gates it would not read).
 * Buffers a plan zeroes (e.g. logG when ungated) are zeroed on the stream. */
PRT_API int prt_plan_run(prt_plan plan, void* stream, const prt_devptr* ptrs, int nptrs,
                         prt_devptr workspace, size_t workspace_bytes, unsigned flags);

#ifdef __cplusplus
}
#endif

#endif /* PRT_CORE_H */
