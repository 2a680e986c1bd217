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
 *   - All work goes to the legacy default stream of device 0's primary context. Calls made from
 *     a thread make that context current on it first.
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
/* cuCtxSynchronize; an asynchronous error is reported with the last launch's context. */
PRT_API int prt_synchronize(void);
/* The `what` of the last launch on any thread ("" if none). */
PRT_API const char* prt_last_launch(void);

/* Events, for timing on the default stream. elapsed waits for `end` to complete. */
PRT_API int prt_event_create(prt_event* out);
PRT_API int prt_event_record(prt_event ev);
PRT_API int prt_event_elapsed_ms(float* ms, prt_event start, prt_event end);
PRT_API int prt_event_destroy(prt_event ev);

#ifdef __cplusplus
}
#endif

#endif /* PRT_CORE_H */
