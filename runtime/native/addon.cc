// Node binding of the prt core (core.h). Loading this addon never touches CUDA: every function
// calls into the core, which opens the driver lazily. Every failure throws a JS Error whose
// message is prt_last_error(); it also carries `code` ("PRT_ENODRIVER", ...) and `prtCode`.
//
// Device pointers, modules, functions and events travel as BigInt.

#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core.h"

namespace {

const char* code_name(int code) {
  switch (code) {
    case PRT_ENODRIVER: return "PRT_ENODRIVER";
    case PRT_ENODEVICE: return "PRT_ENODEVICE";
    case PRT_ECUDA: return "PRT_ECUDA";
    case PRT_EINVAL: return "PRT_EINVAL";
    case PRT_EIO: return "PRT_EIO";
    default: return "PRT_EUNKNOWN";
  }
}

// Throw the core's last error if rc != 0.
void check(Napi::Env env, int rc) {
  if (rc == PRT_OK) return;
  std::string msg = prt_last_error();
  if (msg.empty()) msg = std::string("prt call failed with ") + code_name(rc);
  Napi::Error err = Napi::Error::New(env, msg);
  err.Set("code", Napi::String::New(env, code_name(rc)));
  err.Set("prtCode", Napi::Number::New(env, rc));
  throw err;
}

[[noreturn]] void type_error(Napi::Env env, const std::string& msg) {
  throw Napi::TypeError::New(env, msg);
}

void want_args(const Napi::CallbackInfo& info, size_t n, const char* fn) {
  if (info.Length() < n)
    type_error(info.Env(), std::string(fn) + ": expected " + std::to_string(n) + " argument(s), got " +
                               std::to_string(info.Length()));
}

uint64_t to_u64(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (!v.IsBigInt()) type_error(env, what + " must be a BigInt");
  bool lossless = false;
  uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) type_error(env, what + " must be a BigInt in [0, 2^64)");
  return x;
}

int64_t to_i64(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (!v.IsBigInt()) type_error(env, what + " must be a BigInt");
  bool lossless = false;
  int64_t x = v.As<Napi::BigInt>().Int64Value(&lossless);
  if (!lossless) type_error(env, what + " must be a BigInt in [-2^63, 2^63)");
  return x;
}

// A non-negative integer given as Number (safe integer) or BigInt.
uint64_t to_size(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (v.IsBigInt()) return to_u64(env, v, what);
  if (!v.IsNumber()) type_error(env, what + " must be a non-negative integer (Number or BigInt)");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || std::floor(d) != d || d > 9007199254740991.0)
    type_error(env, what + " must be a non-negative safe integer, got " + std::to_string(d));
  return static_cast<uint64_t>(d);
}

int64_t to_int(Napi::Env env, const Napi::Value& v, const std::string& what, int64_t lo, int64_t hi) {
  if (!v.IsNumber()) type_error(env, what + " must be a Number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (std::floor(d) != d || d < static_cast<double>(lo) || d > static_cast<double>(hi))
    type_error(env, what + " must be an integer in [" + std::to_string(lo) + ", " +
                        std::to_string(hi) + "], got " + v.ToString().Utf8Value());
  return static_cast<int64_t>(d);
}

template <typename T>
T handle(Napi::Env env, const Napi::Value& v, const std::string& what) {
  uint64_t x = to_u64(env, v, what);
  if (x == 0) type_error(env, what + " is a null handle");
  return reinterpret_cast<T>(static_cast<uintptr_t>(x));
}

template <typename T>
Napi::BigInt from_handle(Napi::Env env, T h) {
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(h)));
}

struct HostSpan {
  uint8_t* data;
  size_t bytes;
};

// A Buffer / TypedArray / DataView's bytes.
HostSpan host_span(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    auto ab = ta.ArrayBuffer();
    return {static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset(), ta.ByteLength()};
  }
  if (v.IsDataView()) {
    auto dv = v.As<Napi::DataView>();
    auto ab = dv.ArrayBuffer();
    return {static_cast<uint8_t*>(ab.Data()) + dv.ByteOffset(), dv.ByteLength()};
  }
  type_error(env, what + " must be a Buffer, TypedArray or DataView");
}

// ---- device -------------------------------------------------------------------------------

Napi::Value Init(const Napi::CallbackInfo& info) {
  check(info.Env(), prt_init());
  return info.Env().Undefined();
}

Napi::Value LastError(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), prt_last_error());
}

Napi::Value DriverVersion(const Napi::CallbackInfo& info) {
  int v = 0;
  check(info.Env(), prt_driver_version(&v));
  return Napi::Number::New(info.Env(), v);
}

Napi::Value DeviceCount(const Napi::CallbackInfo& info) {
  int n = 0;
  check(info.Env(), prt_device_count(&n));
  return Napi::Number::New(info.Env(), n);
}

int device_arg(const Napi::CallbackInfo& info, const char* fn) {
  if (info.Length() < 1 || info[0].IsUndefined()) return 0;
  return static_cast<int>(to_int(info.Env(), info[0], std::string(fn) + ": device", 0, 1 << 20));
}

Napi::Value DeviceName(const Napi::CallbackInfo& info) {
  char buf[256];
  check(info.Env(), prt_device_name(device_arg(info, "deviceName"), buf, sizeof buf));
  return Napi::String::New(info.Env(), buf);
}

Napi::Value DeviceComputeCapability(const Napi::CallbackInfo& info) {
  int major = 0, minor = 0;
  check(info.Env(), prt_device_compute_capability(device_arg(info, "deviceComputeCapability"), &major, &minor));
  auto out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, Napi::Number::New(info.Env(), major));
  out.Set(1u, Napi::Number::New(info.Env(), minor));
  return out;
}

Napi::Value DeviceSmCount(const Napi::CallbackInfo& info) {
  int sms = 0;
  check(info.Env(), prt_device_sm_count(device_arg(info, "deviceSmCount"), &sms));
  return Napi::Number::New(info.Env(), sms);
}

Napi::Value DeviceAttribute(const Napi::CallbackInfo& info) {
  want_args(info, 2, "deviceAttribute");
  int dev = static_cast<int>(to_int(info.Env(), info[0], "deviceAttribute: device", 0, 1 << 20));
  int attr = static_cast<int>(to_int(info.Env(), info[1], "deviceAttribute: attribute", 0, 1 << 20));
  int v = 0;
  check(info.Env(), prt_device_attribute(dev, attr, &v));
  return Napi::Number::New(info.Env(), v);
}

// ---- memory -----------------------------------------------------------------------------------

Napi::Value MemAlloc(const Napi::CallbackInfo& info) {
  want_args(info, 1, "memAlloc");
  uint64_t bytes = to_size(info.Env(), info[0], "memAlloc: bytes");
  prt_devptr p = 0;
  check(info.Env(), prt_mem_alloc(&p, bytes));
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(p));
}

Napi::Value MemFree(const Napi::CallbackInfo& info) {
  want_args(info, 1, "memFree");
  check(info.Env(), prt_mem_free(to_u64(info.Env(), info[0], "memFree: ptr")));
  return info.Env().Undefined();
}

Napi::Value MemInfo(const Napi::CallbackInfo& info) {
  size_t free_b = 0, total_b = 0;
  check(info.Env(), prt_mem_info(&free_b, &total_b));
  auto out = Napi::Object::New(info.Env());
  out.Set("free", Napi::Number::New(info.Env(), static_cast<double>(free_b)));
  out.Set("total", Napi::Number::New(info.Env(), static_cast<double>(total_b)));
  return out;
}

Napi::Value MemcpyHtoD(const Napi::CallbackInfo& info) {
  want_args(info, 2, "memcpyHtoD");
  uint64_t dst = to_u64(info.Env(), info[0], "memcpyHtoD: dst");
  HostSpan src = host_span(info.Env(), info[1], "memcpyHtoD: src");
  check(info.Env(), prt_memcpy_htod(dst, src.data, src.bytes));
  return info.Env().Undefined();
}

Napi::Value MemcpyDtoH(const Napi::CallbackInfo& info) {
  want_args(info, 2, "memcpyDtoH");
  HostSpan dst = host_span(info.Env(), info[0], "memcpyDtoH: dst");
  uint64_t src = to_u64(info.Env(), info[1], "memcpyDtoH: src");
  check(info.Env(), prt_memcpy_dtoh(dst.data, src, dst.bytes));
  return info.Env().Undefined();
}

Napi::Value MemcpyDtoD(const Napi::CallbackInfo& info) {
  want_args(info, 3, "memcpyDtoD");
  uint64_t dst = to_u64(info.Env(), info[0], "memcpyDtoD: dst");
  uint64_t src = to_u64(info.Env(), info[1], "memcpyDtoD: src");
  uint64_t bytes = to_size(info.Env(), info[2], "memcpyDtoD: bytes");
  check(info.Env(), prt_memcpy_dtod(dst, src, bytes));
  return info.Env().Undefined();
}

Napi::Value MemsetD8(const Napi::CallbackInfo& info) {
  want_args(info, 3, "memsetD8");
  uint64_t dst = to_u64(info.Env(), info[0], "memsetD8: dst");
  auto value = static_cast<uint8_t>(to_int(info.Env(), info[1], "memsetD8: value", 0, 255));
  uint64_t count = to_size(info.Env(), info[2], "memsetD8: count");
  check(info.Env(), prt_memset_d8(dst, value, count));
  return info.Env().Undefined();
}

Napi::Value MemsetD32(const Napi::CallbackInfo& info) {
  want_args(info, 3, "memsetD32");
  uint64_t dst = to_u64(info.Env(), info[0], "memsetD32: dst");
  // accept the pattern as an unsigned or a signed 32-bit integer (0x7fc00000, -1, ...)
  auto value = static_cast<uint32_t>(
      to_int(info.Env(), info[1], "memsetD32: value", -2147483648LL, 4294967295LL));
  uint64_t count = to_size(info.Env(), info[2], "memsetD32: count");
  check(info.Env(), prt_memset_d32(dst, value, count));
  return info.Env().Undefined();
}

// ---- modules ------------------------------------------------------------------------------------

Napi::Value ModuleLoad(const Napi::CallbackInfo& info) {
  want_args(info, 1, "moduleLoad");
  if (!info[0].IsString()) type_error(info.Env(), "moduleLoad: path must be a string");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  prt_module m = nullptr;
  check(info.Env(), prt_module_load(&m, path.c_str()));
  return from_handle(info.Env(), m);
}

Napi::Value ModuleUnload(const Napi::CallbackInfo& info) {
  want_args(info, 1, "moduleUnload");
  check(info.Env(), prt_module_unload(handle<prt_module>(info.Env(), info[0], "moduleUnload: module")));
  return info.Env().Undefined();
}

Napi::Value ModuleGetFunction(const Napi::CallbackInfo& info) {
  want_args(info, 2, "moduleGetFunction");
  auto m = handle<prt_module>(info.Env(), info[0], "moduleGetFunction: module");
  if (!info[1].IsString()) type_error(info.Env(), "moduleGetFunction: name must be a string");
  std::string name = info[1].As<Napi::String>().Utf8Value();
  prt_function f = nullptr;
  check(info.Env(), prt_module_get_function(&f, m, name.c_str()));
  return from_handle(info.Env(), f);
}

Napi::Value FunctionSetMaxDynamicSmem(const Napi::CallbackInfo& info) {
  want_args(info, 2, "functionSetMaxDynamicSmem");
  auto f = handle<prt_function>(info.Env(), info[0], "functionSetMaxDynamicSmem: fn");
  int bytes = static_cast<int>(
      to_int(info.Env(), info[1], "functionSetMaxDynamicSmem: bytes", 0, 2147483647LL));
  check(info.Env(), prt_function_set_max_dynamic_smem(f, bytes));
  return info.Env().Undefined();
}

Napi::Value FunctionGetAttribute(const Napi::CallbackInfo& info) {
  want_args(info, 2, "functionGetAttribute");
  auto f = handle<prt_function>(info.Env(), info[0], "functionGetAttribute: fn");
  int attr = static_cast<int>(to_int(info.Env(), info[1], "functionGetAttribute: attribute", 0, 1 << 20));
  int v = 0;
  check(info.Env(), prt_function_get_attribute(f, attr, &v));
  return Napi::Number::New(info.Env(), v);
}

// ---- launch -------------------------------------------------------------------------------------

void dim3_arg(Napi::Env env, const Napi::Value& v, const std::string& what, unsigned out[3]) {
  if (!v.IsArray()) type_error(env, what + " must be an array [x, y, z]");
  auto a = v.As<Napi::Array>();
  if (a.Length() < 1 || a.Length() > 3) type_error(env, what + " must have 1 to 3 entries");
  for (uint32_t i = 0; i < 3; ++i)
    out[i] = i < a.Length()
                 ? static_cast<unsigned>(to_int(env, a.Get(i), what + "[" + std::to_string(i) + "]",
                                                1, 4294967295LL))
                 : 1u;
}

union ArgSlot {
  uint64_t u64;
  int64_t i64;
  int32_t i32;
  float f32;
};

// launch(fn, grid, block, smem, args, what)
Napi::Value Launch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  want_args(info, 5, "launch");
  std::string what = info.Length() >= 6 && info[5].IsString() ? info[5].As<Napi::String>().Utf8Value()
                                                               : std::string();
  std::string ctx = "launch of " + (what.empty() ? std::string("<unnamed kernel>") : what);
  auto f = handle<prt_function>(env, info[0], ctx + ": fn");
  unsigned grid[3], block[3];
  dim3_arg(env, info[1], ctx + ": grid", grid);
  dim3_arg(env, info[2], ctx + ": block", block);
  auto smem = static_cast<unsigned>(to_int(env, info[3], ctx + ": smem", 0, 4294967295LL));
  if (!info[4].IsArray()) type_error(env, ctx + ": args must be an array");
  auto arr = info[4].As<Napi::Array>();
  uint32_t n = arr.Length();
  std::vector<ArgSlot> slots(n);
  std::vector<void*> ptrs(n);
  for (uint32_t i = 0; i < n; ++i) {
    std::string at = ctx + ": argument " + std::to_string(i);
    Napi::Value item = arr.Get(i);
    if (!item.IsObject()) type_error(env, at + " must be {kind, value}");
    auto obj = item.As<Napi::Object>();
    Napi::Value kv = obj.Get("kind");
    if (!kv.IsString()) type_error(env, at + ": kind must be a string");
    std::string kind = kv.As<Napi::String>().Utf8Value();
    Napi::Value val = obj.Get("value");
    ArgSlot& s = slots[i];
    s.u64 = 0;
    if (kind == "ptr") {
      s.u64 = to_u64(env, val, at + " (ptr)");
    } else if (kind == "i64") {
      s.i64 = to_i64(env, val, at + " (i64)");
    } else if (kind == "i32") {
      s.i32 = static_cast<int32_t>(to_int(env, val, at + " (i32)", -2147483648LL, 2147483647LL));
    } else if (kind == "f32") {
      if (!val.IsNumber()) type_error(env, at + " (f32) must be a Number");
      s.f32 = static_cast<float>(val.As<Napi::Number>().DoubleValue());
    } else {
      type_error(env, at + ": unknown kind '" + kind + "' (expected ptr, i32, f32 or i64)");
    }
    ptrs[i] = &slots[i];
  }
  check(env, prt_launch(f, grid[0], grid[1], grid[2], block[0], block[1], block[2], smem,
                        n ? ptrs.data() : nullptr, what.empty() ? nullptr : what.c_str()));
  return env.Undefined();
}

Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  check(info.Env(), prt_synchronize());
  return info.Env().Undefined();
}

Napi::Value LastLaunch(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), prt_last_launch());
}

// ---- events -------------------------------------------------------------------------------------

Napi::Value EventCreate(const Napi::CallbackInfo& info) {
  prt_event e = nullptr;
  check(info.Env(), prt_event_create(&e));
  return from_handle(info.Env(), e);
}

Napi::Value EventRecord(const Napi::CallbackInfo& info) {
  want_args(info, 1, "eventRecord");
  check(info.Env(), prt_event_record(handle<prt_event>(info.Env(), info[0], "eventRecord: event")));
  return info.Env().Undefined();
}

Napi::Value EventElapsedMs(const Napi::CallbackInfo& info) {
  want_args(info, 2, "eventElapsedMs");
  auto a = handle<prt_event>(info.Env(), info[0], "eventElapsedMs: start");
  auto b = handle<prt_event>(info.Env(), info[1], "eventElapsedMs: end");
  float ms = 0;
  check(info.Env(), prt_event_elapsed_ms(&ms, a, b));
  return Napi::Number::New(info.Env(), ms);
}

Napi::Value EventDestroy(const Napi::CallbackInfo& info) {
  want_args(info, 1, "eventDestroy");
  check(info.Env(), prt_event_destroy(handle<prt_event>(info.Env(), info[0], "eventDestroy: event")));
  return info.Env().Undefined();
}

// ---- retention plans (core.h "Retention plans": the one executor every language runs) -------------

std::string str_arg(const Napi::CallbackInfo& info, size_t i, const std::string& what) {
  if (!info[i].IsString()) type_error(info.Env(), what + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

// runtimeOpen(manifests, kernelDir) -> runtime
Napi::Value RuntimeOpen(const Napi::CallbackInfo& info) {
  want_args(info, 2, "runtimeOpen");
  std::string manifests = str_arg(info, 0, "runtimeOpen: manifests"), kdir = str_arg(info, 1, "runtimeOpen: kernelDir");
  prt_runtime rt = nullptr;
  check(info.Env(), prt_runtime_open(&rt, manifests.c_str(), kdir.c_str()));
  return from_handle(info.Env(), rt);
}

Napi::Value RuntimeClose(const Napi::CallbackInfo& info) {
  want_args(info, 1, "runtimeClose");
  prt_runtime_close(handle<prt_runtime>(info.Env(), info[0], "runtimeClose: runtime"));
  return info.Env().Undefined();
}

// planCreate(runtime, kind, [deg, d, e, chunk, dtype], {b, t, hq, h, len0, scale, gated, initialState, finalState, ns, nc}) -> plan
Napi::Value PlanCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  want_args(info, 4, "planCreate");
  auto rt = handle<prt_runtime>(env, info[0], "planCreate: runtime");
  std::string kind = str_arg(info, 1, "planCreate: kind");
  if (!info[2].IsArray() || info[2].As<Napi::Array>().Length() != 5) type_error(env, "planCreate: spec must be [deg, d, e, chunk, dtype]");
  auto spec = info[2].As<Napi::Array>();
  int dims[4];
  const char* names[4] = {"deg", "d", "e", "chunk"};
  for (uint32_t i = 0; i < 4; ++i) dims[i] = static_cast<int>(to_int(env, spec.Get(i), std::string("planCreate: spec.") + names[i], 0, 1 << 30));
  if (!spec.Get(4u).IsString()) type_error(env, "planCreate: spec.dtype must be a string");
  std::string dtype = spec.Get(4u).As<Napi::String>().Utf8Value();
  if (!info[3].IsObject()) type_error(env, "planCreate: problem must be an object");
  auto o = info[3].As<Napi::Object>();
  auto num = [&](const char* k, double dflt) {
    Napi::Value v = o.Get(k);
    if (v.IsUndefined()) return dflt;
    if (!v.IsNumber()) type_error(env, std::string("planCreate: problem.") + k + " must be a number");
    return v.As<Napi::Number>().DoubleValue();
  };
  auto flag = [&](const char* k) {
    Napi::Value v = o.Get(k);
    if (v.IsUndefined()) return 0;
    if (!v.IsBoolean()) type_error(env, std::string("planCreate: problem.") + k + " must be a boolean");
    return v.As<Napi::Boolean>().Value() ? 1 : 0;
  };
  prt_problem p{};
  p.b = static_cast<int64_t>(num("b", 0));
  p.t = static_cast<int64_t>(num("t", 0));
  p.hq = static_cast<int64_t>(num("hq", 0));
  p.h = static_cast<int64_t>(num("h", 0));
  p.len0 = static_cast<int64_t>(num("len0", 0));
  p.scale = num("scale", 0);
  p.gated = flag("gated");
  p.initial_state = flag("initialState");
  p.final_state = flag("finalState");
  p.ns = static_cast<int64_t>(num("ns", 0));
  p.nc = static_cast<int64_t>(num("nc", 0));
  prt_plan plan = nullptr;
  check(env, prt_plan_create(&plan, rt, kind.c_str(), dims[0], dims[1], dims[2], dims[3], dtype.c_str(), &p));
  return from_handle(env, plan);
}

Napi::Value PlanDestroy(const Napi::CallbackInfo& info) {
  want_args(info, 1, "planDestroy");
  prt_plan_destroy(handle<prt_plan>(info.Env(), info[0], "planDestroy: plan"));
  return info.Env().Undefined();
}

// planBuffers(plan) -> [{name, dtype, shape, bytes, role, offset}]
Napi::Value PlanBuffers(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  want_args(info, 1, "planBuffers");
  auto plan = handle<prt_plan>(env, info[0], "planBuffers: plan");
  int n = prt_plan_buffer_count(plan);
  auto out = Napi::Array::New(env, static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    prt_buffer_info b{};
    check(env, prt_plan_buffer(plan, i, &b));
    auto o = Napi::Object::New(env);
    o.Set("name", Napi::String::New(env, b.name));
    o.Set("dtype", Napi::String::New(env, b.dtype));
    auto shape = Napi::Array::New(env, static_cast<size_t>(b.ndim));
    for (int d = 0; d < b.ndim; ++d) shape.Set(static_cast<uint32_t>(d), Napi::Number::New(env, static_cast<double>(b.shape[d])));
    o.Set("shape", shape);
    o.Set("bytes", Napi::Number::New(env, static_cast<double>(b.bytes)));
    o.Set("role", Napi::Number::New(env, b.role));
    o.Set("offset", Napi::Number::New(env, static_cast<double>(b.offset)));
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

// planWorkspaceBytes(plan, outputsToo) -> bytes
Napi::Value PlanWorkspaceBytes(const Napi::CallbackInfo& info) {
  want_args(info, 2, "planWorkspaceBytes");
  auto plan = handle<prt_plan>(info.Env(), info[0], "planWorkspaceBytes: plan");
  return Napi::Number::New(info.Env(), static_cast<double>(prt_plan_workspace_bytes(plan, info[1].ToBoolean().Value() ? 1 : 0)));
}

// planSteps(plan) -> ["symbol grid=(x,y,z) block=n smem=n", ...]
Napi::Value PlanSteps(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  want_args(info, 1, "planSteps");
  auto plan = handle<prt_plan>(env, info[0], "planSteps: plan");
  int n = prt_plan_step_count(plan);
  auto out = Napi::Array::New(env, static_cast<size_t>(n));
  std::vector<char> buf(512);
  for (int i = 0; i < n; ++i) {
    check(env, prt_plan_step_describe(plan, i, buf.data(), buf.size()));
    out.Set(static_cast<uint32_t>(i), Napi::String::New(env, buf.data()));
  }
  return out;
}

Napi::Value PlanPrepare(const Napi::CallbackInfo& info) {
  want_args(info, 1, "planPrepare");
  check(info.Env(), prt_plan_prepare(handle<prt_plan>(info.Env(), info[0], "planPrepare: plan")));
  return info.Env().Undefined();
}

// planRun(plan, stream, ptrs: bigint[] (one per buffer, 0n where none), workspace, workspaceBytes, flags)
Napi::Value PlanRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  want_args(info, 6, "planRun");
  auto plan = handle<prt_plan>(env, info[0], "planRun: plan");
  uint64_t stream = to_u64(env, info[1], "planRun: stream");
  if (!info[2].IsArray()) type_error(env, "planRun: ptrs must be an array of BigInt device pointers");
  auto arr = info[2].As<Napi::Array>();
  std::vector<prt_devptr> ptrs(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) ptrs[i] = to_u64(env, arr.Get(i), "planRun: ptrs[" + std::to_string(i) + "]");
  uint64_t ws = to_u64(env, info[3], "planRun: workspace");
  uint64_t ws_bytes = to_size(env, info[4], "planRun: workspaceBytes");
  auto flags = static_cast<unsigned>(to_int(env, info[5], "planRun: flags", 0, 255));
  check(env, prt_plan_run(plan, reinterpret_cast<void*>(static_cast<uintptr_t>(stream)), ptrs.empty() ? nullptr : ptrs.data(),
                          static_cast<int>(ptrs.size()), ws, ws_bytes, flags));
  return env.Undefined();
}

Napi::Object Register(Napi::Env env, Napi::Object exports) {
  auto fn = [&](const char* name, Napi::Value (*f)(const Napi::CallbackInfo&)) {
    exports.Set(name, Napi::Function::New(env, f, name));
  };
  fn("init", Init);
  fn("lastError", LastError);
  fn("driverVersion", DriverVersion);
  fn("deviceCount", DeviceCount);
  fn("deviceName", DeviceName);
  fn("deviceComputeCapability", DeviceComputeCapability);
  fn("deviceSmCount", DeviceSmCount);
  fn("deviceAttribute", DeviceAttribute);
  fn("memAlloc", MemAlloc);
  fn("memFree", MemFree);
  fn("memInfo", MemInfo);
  fn("memcpyHtoD", MemcpyHtoD);
  fn("memcpyDtoH", MemcpyDtoH);
  fn("memcpyDtoD", MemcpyDtoD);
  fn("memsetD8", MemsetD8);
  fn("memsetD32", MemsetD32);
  fn("moduleLoad", ModuleLoad);
  fn("moduleUnload", ModuleUnload);
  fn("moduleGetFunction", ModuleGetFunction);
  fn("functionSetMaxDynamicSmem", FunctionSetMaxDynamicSmem);
  fn("functionGetAttribute", FunctionGetAttribute);
  fn("launch", Launch);
  fn("synchronize", Synchronize);
  fn("lastLaunch", LastLaunch);
  fn("eventCreate", EventCreate);
  fn("eventRecord", EventRecord);
  fn("eventElapsedMs", EventElapsedMs);
  fn("eventDestroy", EventDestroy);
  fn("runtimeOpen", RuntimeOpen);
  fn("runtimeClose", RuntimeClose);
  fn("planCreate", PlanCreate);
  fn("planDestroy", PlanDestroy);
  fn("planBuffers", PlanBuffers);
  fn("planWorkspaceBytes", PlanWorkspaceBytes);
  fn("planSteps", PlanSteps);
  fn("planPrepare", PlanPrepare);
  fn("planRun", PlanRun);
  exports.Set("abiVersion", Napi::Number::New(env, 2));
  return exports;
}

}  // namespace

NODE_API_MODULE(prt_native, Register)
