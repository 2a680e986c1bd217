// prt core: the CUDA driver API, opened at run time. See core.h.
//
// The handful of driver types, enums and entry points used here are declared below (matching
// cuda.h of CUDA 12/13), so building needs no CUDA toolkit and nothing links libcuda.

#include "core.h"

#include <dlfcn.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

// ---- driver API declarations ---------------------------------------------------------------

typedef int CUresult;  // CUDA_SUCCESS == 0
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st* CUcontext;
typedef struct CUmod_st* CUmodule;
typedef struct CUfunc_st* CUfunction;
typedef struct CUevent_st* CUevent;
typedef struct CUstream_st* CUstream;

constexpr CUresult CUDA_SUCCESS = 0;
constexpr CUresult CUDA_ERROR_NO_DEVICE = 100;
constexpr CUresult CUDA_ERROR_NO_BINARY_FOR_GPU = 209;
constexpr int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
constexpr int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
constexpr unsigned CU_EVENT_DEFAULT = 0;

struct Driver {
  CUresult (*cuGetErrorName)(CUresult, const char**);
  CUresult (*cuGetErrorString)(CUresult, const char**);
  CUresult (*cuInit)(unsigned);
  CUresult (*cuDriverGetVersion)(int*);
  CUresult (*cuDeviceGetCount)(int*);
  CUresult (*cuDeviceGet)(CUdevice*, int);
  CUresult (*cuDeviceGetName)(char*, int, CUdevice);
  CUresult (*cuDeviceGetAttribute)(int*, int, CUdevice);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
  CUresult (*cuCtxSetCurrent)(CUcontext);
  CUresult (*cuCtxSynchronize)(void);
  CUresult (*cuCtxGetCurrent)(CUcontext*);
  CUresult (*cuMemAlloc)(CUdeviceptr*, size_t);
  CUresult (*cuMemFree)(CUdeviceptr);
  CUresult (*cuMemGetInfo)(size_t*, size_t*);
  CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void*, size_t);
  CUresult (*cuMemcpyDtoH)(void*, CUdeviceptr, size_t);
  CUresult (*cuMemcpyDtoD)(CUdeviceptr, CUdeviceptr, size_t);
  CUresult (*cuMemsetD8)(CUdeviceptr, unsigned char, size_t);
  CUresult (*cuMemsetD32)(CUdeviceptr, unsigned int, size_t);
  CUresult (*cuMemsetD32Async)(CUdeviceptr, unsigned int, size_t, CUstream);
  CUresult (*cuModuleLoadData)(CUmodule*, const void*);
  CUresult (*cuModuleUnload)(CUmodule);
  CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
  CUresult (*cuFuncSetAttribute)(CUfunction, int, int);
  CUresult (*cuFuncGetAttribute)(int*, int, CUfunction);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, CUstream, void**, void**);
  CUresult (*cuEventCreate)(CUevent*, unsigned);
  CUresult (*cuEventRecord)(CUevent, CUstream);
  CUresult (*cuEventSynchronize)(CUevent);
  CUresult (*cuEventElapsedTime)(float*, CUevent, CUevent);
  CUresult (*cuEventDestroy)(CUevent);
};

// ---- state -----------------------------------------------------------------------------------

std::mutex g_mu;             // guards everything below except the thread-locals
void* g_lib = nullptr;       // dlopen handle, once loaded
Driver g_drv{};              // valid when g_lib != nullptr
bool g_cuinit_done = false;  // cuInit succeeded
CUresult g_cuinit_rc = CUDA_SUCCESS;
CUcontext g_ctx = nullptr;   // device 0 primary context, once retained
std::string g_last_launch;   // `what` of the most recent launch
std::unordered_map<CUmodule, std::string> g_module_files;
struct FunctionInfo {
  std::string label;  // "kernel (in file)"
  CUmodule module;
};
std::unordered_map<CUfunction, FunctionInfo> g_function_names;

thread_local std::string t_err;
thread_local std::string t_last_launch_copy;
thread_local CUcontext t_current = nullptr;

int fail(int code, std::string msg) {
  t_err = std::move(msg);
  return code;
}

// "CUDA_ERROR_X (description)"; works only once the driver is loaded.
std::string describe(CUresult rc) {
  const char* name = nullptr;
  const char* str = nullptr;
  if (g_lib) {
    if (g_drv.cuGetErrorName(rc, &name) != CUDA_SUCCESS) name = nullptr;
    if (g_drv.cuGetErrorString(rc, &str) != CUDA_SUCCESS) str = nullptr;
  }
  std::string out = name ? name : ("CUDA error " + std::to_string(rc));
  if (str) out += std::string(" (") + str + ")";
  else if (!name) out += " (unknown error code)";
  return out;
}

// Errors that come from earlier asynchronous work (a faulting kernel) and stick to the context.
bool is_async_error(CUresult rc) {
  switch (rc) {
    case 700: case 702: case 710: case 714: case 715: case 716: case 717: case 718: case 719:
      return true;
    default:
      return false;
  }
}

std::string last_launch_locked() {
  std::lock_guard<std::mutex> lk(g_mu);
  return g_last_launch;
}

// "<op> failed: CUDA_ERROR_X (...)", plus the last launch for asynchronous errors.
int cu_fail(const std::string& op, CUresult rc, bool always_name_launch = false) {
  std::string msg = op + " failed: " + describe(rc);
  if (always_name_launch || is_async_error(rc)) {
    std::string last = last_launch_locked();
    if (!last.empty()) msg += "; last launch: " + last;
    else if (always_name_launch) msg += "; no kernel launched yet";
  }
  return fail(PRT_ECUDA, msg);
}

// For callers holding g_mu (cu_fail would take it again to read the last launch).
int cu_fail_locked(const std::string& op, CUresult rc) {
  return fail(PRT_ECUDA, op + " failed: " + describe(rc));
}

const char* libcuda_path() {
  const char* p = std::getenv("PRT_LIBCUDA");  // test / debugging override
  return (p && *p) ? p : "libcuda.so.1";
}

template <typename F>
bool load_sym(void* lib, F& slot, const char* name, std::string& missing) {
  void* p = dlsym(lib, name);
  if (!p) {
    if (!missing.empty()) missing += ", ";
    missing += name;
    return false;
  }
  slot = reinterpret_cast<F>(p);
  return true;
}

// dlopen + dlsym. Caller holds g_mu.
int load_driver_locked() {
  if (g_lib) return PRT_OK;
  const char* path = libcuda_path();
  dlerror();
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* e = dlerror();
    return fail(PRT_ENODRIVER, std::string("no CUDA driver: ") + path +
                                   " could not be loaded (" + (e ? e : "unknown dlopen error") +
                                   ")");
  }
  Driver d{};
  std::string missing;
  load_sym(lib, d.cuGetErrorName, "cuGetErrorName", missing);
  load_sym(lib, d.cuGetErrorString, "cuGetErrorString", missing);
  load_sym(lib, d.cuInit, "cuInit", missing);
  load_sym(lib, d.cuDriverGetVersion, "cuDriverGetVersion", missing);
  load_sym(lib, d.cuDeviceGetCount, "cuDeviceGetCount", missing);
  load_sym(lib, d.cuDeviceGet, "cuDeviceGet", missing);
  load_sym(lib, d.cuDeviceGetName, "cuDeviceGetName", missing);
  load_sym(lib, d.cuDeviceGetAttribute, "cuDeviceGetAttribute", missing);
  load_sym(lib, d.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", missing);
  load_sym(lib, d.cuCtxSetCurrent, "cuCtxSetCurrent", missing);
  load_sym(lib, d.cuCtxSynchronize, "cuCtxSynchronize", missing);
  load_sym(lib, d.cuCtxGetCurrent, "cuCtxGetCurrent", missing);
  load_sym(lib, d.cuMemAlloc, "cuMemAlloc_v2", missing);
  load_sym(lib, d.cuMemFree, "cuMemFree_v2", missing);
  load_sym(lib, d.cuMemGetInfo, "cuMemGetInfo_v2", missing);
  load_sym(lib, d.cuMemcpyHtoD, "cuMemcpyHtoD_v2", missing);
  load_sym(lib, d.cuMemcpyDtoH, "cuMemcpyDtoH_v2", missing);
  load_sym(lib, d.cuMemcpyDtoD, "cuMemcpyDtoD_v2", missing);
  load_sym(lib, d.cuMemsetD8, "cuMemsetD8_v2", missing);
  load_sym(lib, d.cuMemsetD32, "cuMemsetD32_v2", missing);
  load_sym(lib, d.cuMemsetD32Async, "cuMemsetD32Async", missing);
  load_sym(lib, d.cuModuleLoadData, "cuModuleLoadData", missing);
  load_sym(lib, d.cuModuleUnload, "cuModuleUnload", missing);
  load_sym(lib, d.cuModuleGetFunction, "cuModuleGetFunction", missing);
  load_sym(lib, d.cuFuncSetAttribute, "cuFuncSetAttribute", missing);
  load_sym(lib, d.cuFuncGetAttribute, "cuFuncGetAttribute", missing);
  load_sym(lib, d.cuLaunchKernel, "cuLaunchKernel", missing);
  load_sym(lib, d.cuEventCreate, "cuEventCreate", missing);
  load_sym(lib, d.cuEventRecord, "cuEventRecord", missing);
  load_sym(lib, d.cuEventSynchronize, "cuEventSynchronize", missing);
  load_sym(lib, d.cuEventDestroy, "cuEventDestroy_v2", missing);
  {
    std::string ignore;  // prefer the _v2 entry point (CUDA 12.8+), fall back to the old one
    if (!load_sym(lib, d.cuEventElapsedTime, "cuEventElapsedTime_v2", ignore))
      load_sym(lib, d.cuEventElapsedTime, "cuEventElapsedTime", missing);
  }
  if (!missing.empty()) {
    dlclose(lib);
    return fail(PRT_ENODRIVER, std::string("no usable CUDA driver: ") + path +
                                   " lacks " + missing + " (driver too old?)");
  }
  g_drv = d;
  g_lib = lib;
  return PRT_OK;
}

// Driver loaded and cuInit done. Caller holds g_mu.
int ensure_driver_locked() {
  int rc = load_driver_locked();
  if (rc) return rc;
  if (g_cuinit_done) return PRT_OK;
  CUresult r = g_drv.cuInit(0);
  g_cuinit_rc = r;
  if (r == CUDA_ERROR_NO_DEVICE)
    return fail(PRT_ENODEVICE, "no CUDA device: cuInit failed: " + describe(r));
  if (r != CUDA_SUCCESS) return fail(PRT_ECUDA, "cuInit failed: " + describe(r));
  g_cuinit_done = true;
  return PRT_OK;
}

int ensure_driver() {
  std::lock_guard<std::mutex> lk(g_mu);
  return ensure_driver_locked();
}

// Driver, cuInit, and a current context on this thread: the one the caller made current (e.g.
// PyTorch's, on whatever device it works), else device 0's primary context, made current here.
int ensure_context() {
  CUcontext ctx;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    int rc = ensure_driver_locked();
    if (rc) return rc;
    CUcontext cur = nullptr;
    if (g_drv.cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur) {
      t_current = cur;
      return PRT_OK;
    }
    if (!g_ctx) {
      int count = 0;
      CUresult r = g_drv.cuDeviceGetCount(&count);
      if (r != CUDA_SUCCESS) return cu_fail_locked("cuDeviceGetCount", r);
      if (count <= 0)
        return fail(PRT_ENODEVICE, "no CUDA device: the driver loaded but reports 0 devices");
      CUdevice dev = 0;
      r = g_drv.cuDeviceGet(&dev, 0);
      if (r != CUDA_SUCCESS) return cu_fail_locked("cuDeviceGet(0)", r);
      CUcontext c = nullptr;
      r = g_drv.cuDevicePrimaryCtxRetain(&c, dev);
      if (r != CUDA_SUCCESS) return cu_fail_locked("cuDevicePrimaryCtxRetain(device 0)", r);
      g_ctx = c;  // retained for the life of the process
    }
    ctx = g_ctx;
  }
  CUresult r = g_drv.cuCtxSetCurrent(ctx);
  if (r != CUDA_SUCCESS) return cu_fail("cuCtxSetCurrent(device 0 primary context)", r);
  t_current = ctx;
  return PRT_OK;
}

// Prefix an initialisation failure with the operation that needed it.
int need_context(const std::string& op) {
  int rc = ensure_context();
  if (rc) t_err = op + ": " + t_err;
  return rc;
}

int need_driver(const std::string& op) {
  int rc = ensure_driver();
  if (rc) t_err = op + ": " + t_err;
  return rc;
}

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string function_label(CUfunction f) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = g_function_names.find(f);
  return it != g_function_names.end() ? it->second.label : "kernel " + hex(reinterpret_cast<uintptr_t>(f));
}

int get_device(int ordinal, CUdevice* dev, const char* op) {
  CUresult r = g_drv.cuDeviceGet(dev, ordinal);
  if (r != CUDA_SUCCESS)
    return cu_fail(std::string(op) + ": cuDeviceGet(" + std::to_string(ordinal) + ")", r);
  return PRT_OK;
}

}  // namespace

extern "C" {

const char* prt_last_error(void) { return t_err.c_str(); }

// For plans.cc (not in core.h): set this thread's message and return the code.
int prt_internal_set_error(int code, const char* msg) { return fail(code, msg ? msg : ""); }

int prt_init(void) { return ensure_context(); }

int prt_driver_version(int* version) {
  if (!version) return fail(PRT_EINVAL, "prt_driver_version: null output pointer");
  {
    std::lock_guard<std::mutex> lk(g_mu);
    int rc = load_driver_locked();
    if (rc) return rc;
  }
  CUresult r = g_drv.cuDriverGetVersion(version);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail("cuDriverGetVersion", r);
}

int prt_device_count(int* count) {
  if (!count) return fail(PRT_EINVAL, "prt_device_count: null output pointer");
  *count = 0;
  int rc = ensure_driver();
  if (rc == PRT_ENODEVICE) return PRT_OK;  // driver present, no device: 0 devices
  if (rc) return rc;
  CUresult r = g_drv.cuDeviceGetCount(count);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail("cuDeviceGetCount", r);
}

int prt_device_name(int device, char* buf, size_t buf_len) {
  if (!buf || buf_len == 0) return fail(PRT_EINVAL, "prt_device_name: empty output buffer");
  buf[0] = 0;
  if (int rc = need_driver("device name")) return rc;
  CUdevice dev;
  if (int rc = get_device(device, &dev, "device name")) return rc;
  CUresult r = g_drv.cuDeviceGetName(buf, static_cast<int>(buf_len), dev);
  return r == CUDA_SUCCESS ? PRT_OK
                           : cu_fail("cuDeviceGetName(" + std::to_string(device) + ")", r);
}

int prt_device_attribute(int device, int attribute, int* value) {
  if (!value) return fail(PRT_EINVAL, "prt_device_attribute: null output pointer");
  if (int rc = need_driver("device attribute")) return rc;
  CUdevice dev;
  if (int rc = get_device(device, &dev, "device attribute")) return rc;
  CUresult r = g_drv.cuDeviceGetAttribute(value, attribute, dev);
  return r == CUDA_SUCCESS ? PRT_OK
                           : cu_fail("cuDeviceGetAttribute(attribute " + std::to_string(attribute) +
                                         ", device " + std::to_string(device) + ")",
                                     r);
}

int prt_device_compute_capability(int device, int* major, int* minor) {
  if (!major || !minor) return fail(PRT_EINVAL, "prt_device_compute_capability: null output");
  if (int rc = prt_device_attribute(device, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, major))
    return rc;
  return prt_device_attribute(device, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, minor);
}

int prt_device_sm_count(int device, int* sms) {
  return prt_device_attribute(device, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, sms);
}

// ---- memory -----------------------------------------------------------------------------------

int prt_mem_alloc(prt_devptr* out, size_t bytes) {
  if (!out) return fail(PRT_EINVAL, "prt_mem_alloc: null output pointer");
  *out = 0;
  std::string op = "cuMemAlloc(" + std::to_string(bytes) + " bytes)";
  if (bytes == 0) return fail(PRT_EINVAL, op + ": cannot allocate 0 bytes");
  if (int rc = need_context(op)) return rc;
  CUdeviceptr p = 0;
  CUresult r = g_drv.cuMemAlloc(&p, bytes);
  if (r != CUDA_SUCCESS) return cu_fail(op, r);
  *out = p;
  return PRT_OK;
}

int prt_mem_free(prt_devptr ptr) {
  if (ptr == 0) return PRT_OK;
  std::string op = "cuMemFree(" + hex(ptr) + ")";
  if (int rc = need_context(op)) return rc;
  CUresult r = g_drv.cuMemFree(ptr);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail(op, r);
}

int prt_mem_info(size_t* free_bytes, size_t* total_bytes) {
  if (!free_bytes || !total_bytes) return fail(PRT_EINVAL, "prt_mem_info: null output pointer");
  if (int rc = need_context("cuMemGetInfo")) return rc;
  CUresult r = g_drv.cuMemGetInfo(free_bytes, total_bytes);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail("cuMemGetInfo", r);
}

int prt_memcpy_htod(prt_devptr dst, const void* src, size_t bytes) {
  std::string op = "cuMemcpyHtoD(" + std::to_string(bytes) + " bytes to " + hex(dst) + ")";
  if (bytes == 0) return PRT_OK;
  if (!src || !dst) return fail(PRT_EINVAL, op + ": null pointer");
  if (int rc = need_context(op)) return rc;
  CUresult r = g_drv.cuMemcpyHtoD(dst, src, bytes);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail(op, r);
}

int prt_memcpy_dtoh(void* dst, prt_devptr src, size_t bytes) {
  std::string op = "cuMemcpyDtoH(" + std::to_string(bytes) + " bytes from " + hex(src) + ")";
  if (bytes == 0) return PRT_OK;
  if (!src || !dst) return fail(PRT_EINVAL, op + ": null pointer");
  if (int rc = need_context(op)) return rc;
  CUresult r = g_drv.cuMemcpyDtoH(dst, src, bytes);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail(op, r);
}

int prt_memcpy_dtod(prt_devptr dst, prt_devptr src, size_t bytes) {
  std::string op =
      "cuMemcpyDtoD(" + std::to_string(bytes) + " bytes " + hex(src) + " -> " + hex(dst) + ")";
  if (bytes == 0) return PRT_OK;
  if (!src || !dst) return fail(PRT_EINVAL, op + ": null pointer");
  if (int rc = need_context(op)) return rc;
  CUresult r = g_drv.cuMemcpyDtoD(dst, src, bytes);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail(op, r);
}

int prt_memset_d8(prt_devptr dst, uint8_t value, size_t count) {
  std::string op = "cuMemsetD8(" + hex(dst) + ", " + std::to_string(value) + ", " +
                   std::to_string(count) + ")";
  if (count == 0) return PRT_OK;
  if (!dst) return fail(PRT_EINVAL, op + ": null pointer");
  if (int rc = need_context(op)) return rc;
  CUresult r = g_drv.cuMemsetD8(dst, value, count);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail(op, r);
}

int prt_memset_d32(prt_devptr dst, uint32_t value, size_t count) {
  std::string op = "cuMemsetD32(" + hex(dst) + ", " + hex(value) + ", " + std::to_string(count) +
                   " words)";
  if (count == 0) return PRT_OK;
  if (!dst) return fail(PRT_EINVAL, op + ": null pointer");
  if (dst % 4 != 0) return fail(PRT_EINVAL, op + ": pointer is not 4-byte aligned");
  if (int rc = need_context(op)) return rc;
  CUresult r = g_drv.cuMemsetD32(dst, value, count);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail(op, r);
}

// ---- modules and functions ------------------------------------------------------------------

int prt_module_load(prt_module* out, const char* path) {
  if (!out || !path) return fail(PRT_EINVAL, "prt_module_load: null argument");
  *out = nullptr;
  std::string op = std::string("module load of ") + path;
  if (int rc = need_context(op)) return rc;

  std::FILE* f = std::fopen(path, "rb");
  if (!f) return fail(PRT_EIO, op + " failed: cannot open file: " + std::strerror(errno));
  std::vector<char> bytes;
  char chunk[1 << 16];
  size_t n;
  while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0) bytes.insert(bytes.end(), chunk, chunk + n);
  bool read_err = std::ferror(f) != 0;
  int saved_errno = errno;
  std::fclose(f);
  if (read_err) return fail(PRT_EIO, op + " failed: read error: " + std::strerror(saved_errno));
  if (bytes.empty()) return fail(PRT_EIO, op + " failed: the file is empty");
  bytes.push_back('\0');  // PTX text must be NUL-terminated; harmless for fatbin / cubin

  CUmodule m = nullptr;
  CUresult r = g_drv.cuModuleLoadData(&m, bytes.data());
  if (r != CUDA_SUCCESS) {
    std::string ctx = "cuModuleLoadData(" + std::string(path) + ")";
    int code = cu_fail(ctx, r);
    if (r == CUDA_ERROR_NO_BINARY_FOR_GPU) {
      int major = 0, minor = 0;
      CUdevice dev = 0;
      if (g_drv.cuDeviceGet(&dev, 0) == CUDA_SUCCESS &&
          g_drv.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev) ==
              CUDA_SUCCESS &&
          g_drv.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev) ==
              CUDA_SUCCESS)
        t_err += "; the file has no code for this GPU (sm_" + std::to_string(major) +
                 std::to_string(minor) + ")";
    }
    return code;
  }
  {
    std::lock_guard<std::mutex> lk(g_mu);
    g_module_files[m] = path;
  }
  *out = reinterpret_cast<prt_module>(m);
  return PRT_OK;
}

int prt_module_unload(prt_module module) {
  if (!module) return PRT_OK;
  CUmodule m = reinterpret_cast<CUmodule>(module);
  std::string file;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    auto it = g_module_files.find(m);
    file = it != g_module_files.end() ? it->second : hex(reinterpret_cast<uintptr_t>(m));
  }
  std::string op = "cuModuleUnload(" + file + ")";
  if (int rc = need_context(op)) return rc;
  CUresult r = g_drv.cuModuleUnload(m);
  if (r != CUDA_SUCCESS) return cu_fail(op, r);
  std::lock_guard<std::mutex> lk(g_mu);
  g_module_files.erase(m);
  for (auto it = g_function_names.begin(); it != g_function_names.end();) {
    if (it->second.module == m) it = g_function_names.erase(it);  // its functions are dead now
    else ++it;
  }
  return PRT_OK;
}

int prt_module_get_function(prt_function* out, prt_module module, const char* name) {
  if (!out || !module || !name) return fail(PRT_EINVAL, "prt_module_get_function: null argument");
  *out = nullptr;
  CUmodule m = reinterpret_cast<CUmodule>(module);
  std::string file;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    auto it = g_module_files.find(m);
    file = it != g_module_files.end() ? it->second : "module " + hex(reinterpret_cast<uintptr_t>(m));
  }
  std::string op = std::string("cuModuleGetFunction(") + name + ") in " + file;
  if (int rc = need_context(op)) return rc;
  CUfunction f = nullptr;
  CUresult r = g_drv.cuModuleGetFunction(&f, m, name);
  if (r != CUDA_SUCCESS) return cu_fail(op, r);
  {
    std::lock_guard<std::mutex> lk(g_mu);
    g_function_names[f] = FunctionInfo{std::string(name) + " (in " + file + ")", m};
  }
  *out = reinterpret_cast<prt_function>(f);
  return PRT_OK;
}

int prt_function_set_max_dynamic_smem(prt_function fn, int bytes) {
  if (!fn) return fail(PRT_EINVAL, "prt_function_set_max_dynamic_smem: null function");
  CUfunction f = reinterpret_cast<CUfunction>(fn);
  std::string op = "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES = " + std::to_string(bytes) +
                   ") on " + function_label(f);
  if (int rc = need_context(op)) return rc;
  CUresult r = g_drv.cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail(op, r);
}

int prt_function_get_attribute(prt_function fn, int attribute, int* value) {
  if (!fn || !value) return fail(PRT_EINVAL, "prt_function_get_attribute: null argument");
  CUfunction f = reinterpret_cast<CUfunction>(fn);
  std::string op =
      "cuFuncGetAttribute(attribute " + std::to_string(attribute) + ") on " + function_label(f);
  if (int rc = need_context(op)) return rc;
  CUresult r = g_drv.cuFuncGetAttribute(value, attribute, f);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail(op, r);
}

// ---- launch and synchronisation -------------------------------------------------------------

int prt_launch(prt_function fn, unsigned grid_x, unsigned grid_y, unsigned grid_z,
               unsigned block_x, unsigned block_y, unsigned block_z, unsigned smem_bytes,
               void** args, const char* what) {
  CUfunction f = reinterpret_cast<CUfunction>(fn);
  std::string label = (what && *what) ? std::string(what) : (f ? function_label(f) : "<null>");
  std::string op = "launch of " + label;
  auto shape = [&] {
    return " [grid=(" + std::to_string(grid_x) + "," + std::to_string(grid_y) + "," +
           std::to_string(grid_z) + ") block=(" + std::to_string(block_x) + "," +
           std::to_string(block_y) + "," + std::to_string(block_z) +
           ") smem=" + std::to_string(smem_bytes) + "]";
  };
  if (!f) return fail(PRT_EINVAL, op + " failed: null function");
  if (int rc = need_context(op)) return rc;
  std::string previous;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    previous.swap(g_last_launch);
    g_last_launch = label;
  }
  CUresult r = g_drv.cuLaunchKernel(f, grid_x, grid_y, grid_z, block_x, block_y, block_z,
                                    smem_bytes, nullptr, args, nullptr);
  if (r != CUDA_SUCCESS) {
    std::string msg = op + " failed: " + describe(r) + shape();
    // a fault of an *earlier* kernel can surface here: name it
    if (is_async_error(r) && !previous.empty()) msg += "; previous launch: " + previous;
    return fail(PRT_ECUDA, msg);
  }
  return PRT_OK;
}

int prt_launch_async(prt_function fn, const unsigned grid[3], const unsigned block[3],
                     unsigned smem_bytes, void* stream, void** args, const char* what) {
  CUfunction f = reinterpret_cast<CUfunction>(fn);
  if (!grid || !block) return fail(PRT_EINVAL, "prt_launch_async: null grid or block");
  if (!f) return fail(PRT_EINVAL, std::string("launch of ") + (what ? what : "<null>") + " failed: null function");
  if (!g_lib) return fail(PRT_ENODRIVER, std::string("launch of ") + (what ? what : "<null>") + " failed: the CUDA driver is not loaded");
  {
    std::lock_guard<std::mutex> lk(g_mu);
    g_last_launch = (what && *what) ? what : "";
  }
  CUresult r = g_drv.cuLaunchKernel(f, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                                    smem_bytes, reinterpret_cast<CUstream>(stream), args, nullptr);
  if (r != CUDA_SUCCESS)
    return fail(PRT_ECUDA, std::string("launch of ") + ((what && *what) ? what : function_label(f)) +
                               " failed: " + describe(r) + " [grid=(" + std::to_string(grid[0]) +
                               "," + std::to_string(grid[1]) + "," + std::to_string(grid[2]) +
                               ") block=(" + std::to_string(block[0]) + "," +
                               std::to_string(block[1]) + "," + std::to_string(block[2]) +
                               ") smem=" + std::to_string(smem_bytes) + "]");
  return PRT_OK;
}

int prt_memset_d32_async(prt_devptr dst, uint32_t value, size_t count, void* stream) {
  if (count == 0) return PRT_OK;
  std::string op = "cuMemsetD32Async(" + hex(dst) + ", " + hex(value) + ", " + std::to_string(count) + " words)";
  if (!dst) return fail(PRT_EINVAL, op + ": null pointer");
  if (dst % 4 != 0) return fail(PRT_EINVAL, op + ": pointer is not 4-byte aligned");
  if (int rc = need_context(op)) return rc;
  CUresult r = g_drv.cuMemsetD32Async(dst, value, count, reinterpret_cast<CUstream>(stream));
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail(op, r);
}

int prt_current_context(void** out) {
  if (!out) return fail(PRT_EINVAL, "prt_current_context: null output pointer");
  *out = nullptr;
  if (int rc = ensure_context()) return rc;
  *out = t_current;
  return PRT_OK;
}

int prt_synchronize(void) {
  if (int rc = need_context("synchronize")) return rc;
  CUresult r = g_drv.cuCtxSynchronize();
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail("synchronize", r, /*always_name_launch=*/true);
}

const char* prt_last_launch(void) {
  t_last_launch_copy = last_launch_locked();
  return t_last_launch_copy.c_str();
}

// ---- events -------------------------------------------------------------------------------------

int prt_event_create(prt_event* out) {
  if (!out) return fail(PRT_EINVAL, "prt_event_create: null output pointer");
  *out = nullptr;
  if (int rc = need_context("cuEventCreate")) return rc;
  CUevent e = nullptr;
  CUresult r = g_drv.cuEventCreate(&e, CU_EVENT_DEFAULT);
  if (r != CUDA_SUCCESS) return cu_fail("cuEventCreate", r);
  *out = reinterpret_cast<prt_event>(e);
  return PRT_OK;
}

int prt_event_record(prt_event ev) {
  if (!ev) return fail(PRT_EINVAL, "prt_event_record: null event");
  if (int rc = need_context("cuEventRecord")) return rc;
  CUresult r = g_drv.cuEventRecord(reinterpret_cast<CUevent>(ev), nullptr);
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail("cuEventRecord", r);
}

int prt_event_elapsed_ms(float* ms, prt_event start, prt_event end) {
  if (!ms || !start || !end) return fail(PRT_EINVAL, "prt_event_elapsed_ms: null argument");
  *ms = 0.f;
  if (int rc = need_context("cuEventElapsedTime")) return rc;
  CUresult r = g_drv.cuEventSynchronize(reinterpret_cast<CUevent>(end));
  if (r != CUDA_SUCCESS) return cu_fail("cuEventSynchronize", r);
  r = g_drv.cuEventElapsedTime(ms, reinterpret_cast<CUevent>(start), reinterpret_cast<CUevent>(end));
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail("cuEventElapsedTime", r);
}

int prt_event_destroy(prt_event ev) {
  if (!ev) return PRT_OK;
  if (int rc = need_context("cuEventDestroy")) return rc;
  CUresult r = g_drv.cuEventDestroy(reinterpret_cast<CUevent>(ev));
  return r == CUDA_SUCCESS ? PRT_OK : cu_fail("cuEventDestroy", r);
}

}  // extern "C"
