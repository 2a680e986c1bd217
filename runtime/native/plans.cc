// The retention plan interpreter (core.h, "Retention plans"): reads the plans `gen` writes into
// the manifest (codegen/manifest.ts is the schema, codegen/plan-data.ts the writer) and runs one
// for a problem's sizes. Everything is decided at prt_plan_create (variant, shapes, grids, params,
// workspace layout, argument slots); prt_plan_run only fills in pointers and enqueues.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "core.h"
#include "json.h"

namespace {

using prt::Json;

struct Arg {
  bool tensor;
  bool f32;  // params: f32 (else i32)
  std::string name;
};

struct KernelEntry {
  std::string name, symbol, spec_key, manifest;
  std::vector<std::string> fatbin_candidates;  // its fatbin in each of kernel_dirs, in order (an empty entry: the manifest's folder)
  std::vector<Arg> args;
  unsigned threads = 0, smem = 0;
};

struct PlanDoc {
  const Json* json;
  std::string manifest;
};

}  // namespace

struct prt_runtime_st {
  std::vector<std::string> manifests;
  std::string kernel_dir;                // as given: ':'-separated folders, an empty entry = each manifest's own folder
  std::vector<std::string> kernel_dirs;  // the same, split (empty entries kept)
  std::vector<std::unique_ptr<Json>> docs;
  std::unordered_map<std::string, KernelEntry> kernels;  // by symbol, first manifest wins
  std::map<std::string, PlanDoc> plans;                  // "<kind>/<specKey>", first manifest wins
  std::mutex mu;                                         // guards the caches below
  std::map<std::pair<void*, std::string>, prt_module> modules;   // (context, fatbin)
  std::map<std::pair<void*, std::string>, prt_function> functions;  // (context, symbol)
};

namespace {

struct Buffer {
  std::string name, dtype;
  std::vector<int64_t> shape;
  size_t bytes = 0;
  int init = 0;  // 0 input, 1 nan, 2 zeros
  int role = PRT_BUF_TEMP;
  size_t offset = 0;
};

struct Step {
  const KernelEntry* kernel;
  unsigned grid[3];
  std::vector<uint64_t> slots;  // one 8-byte slot per argument; tensors filled at run
  std::vector<int> buffer;      // per argument: buffer index (tensors) or -1
  std::string what;
};

}  // namespace

struct prt_plan_st {
  prt_runtime rt;
  std::string label;  // "forward plan of p2_d64_e64_c128_bf16"
  std::vector<Buffer> buffers;
  std::vector<Step> steps;
  size_t ws_temp = 0, ws_all = 0;
  std::mutex mu;
  std::map<void*, std::vector<prt_function>> functions;  // by context
};

// ---- errors ------------------------------------------------------------------------------------
// core.cc keeps the thread's last message (prt_last_error); plan errors go there too.
extern "C" int prt_internal_set_error(int code, const char* msg);

namespace {

int set_error(int code, const std::string& msg) { return prt_internal_set_error(code, msg.c_str()); }
int einval(const std::string& msg) { return set_error(PRT_EINVAL, msg); }

std::string trim_slash(std::string s) {
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}
// "a:b::c" -> {"a", "b", "", "c"} (empty entries kept)
std::vector<std::string> split_colons(const std::string& list) {
  std::vector<std::string> out;
  for (size_t start = 0;;) {
    size_t colon = list.find(':', start);
    out.push_back(list.substr(start, colon == std::string::npos ? std::string::npos : colon - start));
    if (colon == std::string::npos) return out;
    start = colon + 1;
  }
}

std::string dir_of(const std::string& f) {
  size_t k = f.rfind('/');
  return k == std::string::npos ? "." : f.substr(0, k);
}

// The command that generates and compiles every kernel of a spec (runtime/kernels.ts genCommand).
std::string gen_command(const std::string& spec_key) {
  int deg, d, e, c;
  char dtype[8] = {0};
  if (std::sscanf(spec_key.c_str(), "p%d_d%d_e%d_c%d_%7s", &deg, &d, &e, &c, dtype) != 5)
    return "npx retention gen --out generated --compile";
  return "npx retention gen --deg " + std::to_string(deg) + " --d " + std::to_string(d) + " --e " +
         std::to_string(e) + " --chunk " + std::to_string(c) + " --dtype " + dtype +
         " --out build/generated/" + spec_key + " --compile";
}

// For errors: the problem flag under which a plan reads the caller's `name` (", problem.gated is 0").
std::string flag_of_input(const std::string& name) {
  if (name == "logG") return ": problem.gated is 0, so it runs with a gate of 1";
  if (name == "S0" || name == "Z0") return ": problem.initial_state is 0, so the state starts at zero";
  if (name == "dSfinal" || name == "dZfinal") return ": problem.final_state is 0, so the final state's gradient is zero";
  return "";
}

// The spec key inside a symbol prt_<kernel>_<specKey>_w...
std::string spec_of_symbol(const std::string& symbol, const std::string& kernel) {
  std::string head = "prt_" + kernel + "_";
  if (symbol.compare(0, head.size(), head) != 0) return "";
  std::string rest = symbol.substr(head.size());
  size_t w = rest.find("_w");
  return w == std::string::npos ? rest : rest.substr(0, w);
}

size_t dtype_bytes(const std::string& t) { return t == "f32" || t == "i32" ? 4 : (t == "f16" || t == "bf16") ? 2 : 0; }

// ---- expressions (codegen/manifest.ts PlanExpr) ---------------------------------------------

typedef std::map<std::string, double> Vars;

bool eval(const Json& e, const Vars& vars, double& out, std::string& err) {
  if (e.is(Json::Number)) return out = e.num, true;
  if (e.is(Json::String)) {
    auto it = vars.find(e.str);
    if (it == vars.end()) return err = "variable '" + e.str + "' has no value", false;
    return out = it->second, true;
  }
  if (!e.is(Json::Array) || e.items.size() != 3 || !e.items[0].is(Json::String))
    return err = "malformed expression", false;
  double a, b;
  if (!eval(e.items[1], vars, a, err) || !eval(e.items[2], vars, b, err)) return false;
  const std::string& op = e.items[0].str;
  if (op == "+") out = a + b;
  else if (op == "-") out = a - b;
  else if (op == "*") out = a * b;
  else if (op == "//" || op == "%") {
    if (b == 0) return err = "division by zero", false;
    double q = std::floor(a / b);
    out = op == "//" ? q : a - q * b;
  } else if (op == "max") out = a > b ? a : b;
  else if (op == "min") out = a < b ? a : b;
  else return err = "unknown operator '" + op + "'", false;
  return true;
}

std::string num_str(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

// ---- manifest reading ---------------------------------------------------------------------------

bool read_file(const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  out = ss.str();
  return true;
}

// The contract's fields (dsl/contract/manifest.ts KERNEL_FIELDS, PLAN_FIELDS; test/contract.test.ts
// holds the three readers to the same lists): each kernel entry's and each plan's, with their types.
struct Field {
  const char* name;
  Json::Kind kind;
  const char* type;
};
const Field kKernelFields[] = {{"name", Json::String, "string"}, {"symbol", Json::String, "string"}, {"specKey", Json::String, "string"},
                               {"spec", Json::Object, "object"},   {"schedule", Json::Object, "object"}, {"args", Json::Array, "array"},
                               {"threads", Json::Number, "number"}, {"smemBytes", Json::Number, "number"}, {"source", Json::String, "string"},
                               {"fatbin", Json::String, "string"}};
const Field kPlanFields[] = {{"kind", Json::String, "string"}, {"spec", Json::String, "string"}, {"flags", Json::Array, "array"},
                             {"variants", Json::Array, "array"}};
const char* const kPlanKinds[] = {"forward", "backward", "decode", "forward_varlen", "backward_varlen"};

// "" when `entry` has every field with its type, else what is wrong ("field 'x' is missing, expected a string").
template <size_t N>
std::string check_fields(const Json& entry, const Field (&fields)[N]) {
  if (!entry.is(Json::Object)) return "expected an object";
  for (const Field& f : fields) {
    const Json* v = entry.get(f.name);
    if (!v || !v->is(f.kind)) return std::string("field '") + f.name + "' is " + (v ? "of another type" : "missing") + ", expected a " + f.type;
  }
  return "";
}

int load_manifest(prt_runtime rt, const std::string& file) {
  std::string text, err;
  if (!read_file(file, text)) return set_error(PRT_EIO, "manifest " + file + ": cannot read the file");
  auto doc = std::make_unique<Json>();
  if (!prt::parse_json(text, *doc, err))
    return set_error(PRT_EIO, "manifest " + file + ": not valid JSON (" + err + "); regenerate it with `npx retention gen`");
  const Json* fmt = doc->get("format");
  if (!fmt || !fmt->is(Json::Number) || fmt->num != 2)
    return set_error(PRT_EIO, "manifest " + file + ": format " + (fmt && fmt->is(Json::Number) ? num_str(fmt->num) : "missing") +
                                  ", this runtime reads format 2; regenerate it with `npx retention gen`");
  const std::string regen = "; regenerate it with `npx retention gen`";
  for (const char* list : {"kernels", "plans"}) {
    const Json* l = doc->get(list);
    if (!l || !l->is(Json::Array)) return set_error(PRT_EIO, "manifest " + file + ": '" + list + "' is missing or not a list" + regen);
  }
  const Json* kernels = doc->get("kernels");
  const Json* plans = doc->get("plans");
  for (size_t i = 0; i < kernels->items.size(); ++i) {
    const Json& k = kernels->items[i];
    std::string bad = check_fields(k, kKernelFields);
    if (!bad.empty()) return set_error(PRT_EIO, "manifest " + file + ": kernel " + std::to_string(i) + ": " + bad + regen);
    const Json *sym = k.get("symbol"), *name = k.get("name"), *args = k.get("args"), *thr = k.get("threads"),
               *smem = k.get("smemBytes"), *fat = k.get("fatbin"), *spec = k.get("specKey");
    if (rt->kernels.count(sym->str)) continue;
    KernelEntry e;
    e.name = name->str;
    e.symbol = sym->str;
    e.spec_key = spec->str;
    for (const std::string& d : rt->kernel_dirs) {
      std::string c = (d.empty() ? dir_of(file) : d) + "/" + fat->str;
      if (std::find(e.fatbin_candidates.begin(), e.fatbin_candidates.end(), c) == e.fatbin_candidates.end()) e.fatbin_candidates.push_back(c);
    }
    e.manifest = file;
    e.threads = unsigned(thr->num);
    e.smem = unsigned(smem->num);
    for (const Json& a : args->items) {
      const Json *kind = a.get("kind"), *an = a.get("name"), *type = a.get("type");
      if (!kind || !an) return set_error(PRT_EIO, "manifest " + file + ": kernel " + e.symbol + ": malformed argument");
      e.args.push_back(Arg{kind->str == "tensor", type && type->str == "f32", an->str});
    }
    rt->kernels.emplace(e.symbol, std::move(e));
  }
  for (size_t i = 0; i < plans->items.size(); ++i) {
    const Json& p = plans->items[i];
    std::string bad = check_fields(p, kPlanFields);
    if (!bad.empty()) return set_error(PRT_EIO, "manifest " + file + ": plan " + std::to_string(i) + ": " + bad + regen);
    const Json *kind = p.get("kind"), *spec = p.get("spec");
    if (std::find_if(std::begin(kPlanKinds), std::end(kPlanKinds), [&](const char* k) { return kind->str == k; }) == std::end(kPlanKinds))
      return set_error(PRT_EIO, "manifest " + file + ": plan " + std::to_string(i) + ": kind \"" + kind->str + "\" is not one this runtime reads" + regen);
    rt->plans.emplace(kind->str + "/" + spec->str, PlanDoc{&p, file});
  }
  rt->docs.push_back(std::move(doc));
  return PRT_OK;
}

// ---- plan creation --------------------------------------------------------------------------------

struct Builder {
  prt_plan plan;
  const Json* variant;
  std::map<std::string, int> index;  // buffer name -> index
  std::map<std::string, double> flags;

  int fail(const std::string& m) { return einval(plan->label + ": " + m); }

  int init_of(const Json& b, int& out) {
    const Json* init = b.get("init");
    if (!init) return fail("a buffer lacks 'init'");
    const Json* pick = init;
    if (init->is(Json::Object)) {
      const Json *flag = init->get("flag"), *t = init->get("then"), *f = init->get("else");
      if (!flag || !t || !f) return fail("malformed conditional init");
      pick = flags[flag->str] != 0 ? t : f;
    }
    out = pick->str == "input" ? 0 : pick->str == "nan" ? 1 : pick->str == "zeros" ? 2 : -1;
    return out < 0 ? fail("unknown init '" + pick->str + "'") : PRT_OK;
  }

  int add_buffers(const Json* list, const Vars& vars) {
    if (!list || !list->is(Json::Array)) return fail("a variant lacks its buffer list");
    for (const Json& b : list->items) {
      Buffer buf;
      const Json *name = b.get("name"), *dtype = b.get("dtype"), *shape = b.get("shape");
      if (!name || !dtype || !shape || !shape->is(Json::Array) || shape->items.size() > 8) return fail("malformed buffer");
      buf.name = name->str;
      buf.dtype = dtype->str;
      if (int rc = init_of(b, buf.init)) return rc;
      size_t n = 1;
      for (const Json& d : shape->items) {
        double v;
        std::string err;
        if (!eval(d, vars, v, err)) return fail("buffer " + buf.name + ": " + err);
        if (v < 0 || v != std::floor(v)) return fail("buffer " + buf.name + ": a dim evaluates to " + num_str(v));
        buf.shape.push_back(int64_t(v));
        n *= size_t(v);
      }
      buf.bytes = n * dtype_bytes(buf.dtype);
      index[buf.name] = int(plan->buffers.size());
      plan->buffers.push_back(std::move(buf));
    }
    return PRT_OK;
  }

  int add_steps(const Json* list, const Vars& vars) {
    if (!list || !list->is(Json::Array)) return fail("a variant lacks its step list");
    prt_runtime rt = plan->rt;
    for (const Json& s : list->items) {
      const Json *sym = s.get("symbol"), *kname = s.get("kernel"), *grid = s.get("grid"), *params = s.get("params"), *bind = s.get("bind");
      if (!sym || !kname || !grid || !grid->is(Json::Array) || grid->items.size() != 3 || !params || !bind) return fail("malformed step");
      auto it = rt->kernels.find(sym->str);
      if (it == rt->kernels.end()) {
        std::string spec = spec_of_symbol(sym->str, kname->str);
        std::string where;
        for (const auto& m : rt->manifests) where += (where.empty() ? "" : ", ") + m;
        return set_error(PRT_EINVAL, plan->label + ": kernel " + kname->str + " for spec " + spec + " (" + sym->str +
                                         ") is not in " + where + "; generate and compile it with `" + gen_command(spec) + "`");
      }
      const KernelEntry& k = it->second;
      Step st;
      st.kernel = &k;
      st.what = k.name + "{" + k.spec_key + "} (" + k.symbol + ")";
      static const double limits[3] = {2147483647.0, 65535.0, 65535.0};
      for (int a = 0; a < 3; ++a) {
        double v;
        std::string err;
        if (!eval(grid->items[a], vars, v, err)) return fail("step " + st.what + ": grid: " + err);
        if (v < 0 || v > limits[a])
          return fail("step " + st.what + ": grid[" + std::to_string(a) + "] = " + num_str(v) + " exceeds CUDA's limit of " + num_str(limits[a]) + " programs on that axis");
        st.grid[a] = unsigned(v);
      }
      for (const Arg& a : k.args) {
        uint64_t slot = 0;
        int buf = -1;
        if (a.tensor) {
          const Json* to = bind->get(a.name);
          if (!to) return fail("step " + st.what + ": kernel tensor '" + a.name + "' is not bound");
          auto bi = index.find(to->str);
          if (bi == index.end()) return fail("step " + st.what + ": tensor '" + a.name + "' is bound to '" + to->str + "', which is not a plan buffer");
          buf = bi->second;
        } else {
          const Json* e = params->get(a.name);
          double v;
          std::string err;
          if (!e) return fail("step " + st.what + ": param '" + a.name + "' is not set");
          if (!eval(*e, vars, v, err)) return fail("step " + st.what + ": param '" + a.name + "': " + err);
          if (a.f32) {
            float f = float(v);
            std::memcpy(&slot, &f, sizeof f);
          } else {
            if (v != std::floor(v) || v < -2147483648.0 || v > 2147483647.0)
              return fail("step " + st.what + ": param '" + a.name + "' = " + num_str(v) + " is not a 32-bit integer");
            int32_t i = int32_t(v);
            std::memcpy(&slot, &i, sizeof i);
          }
        }
        st.slots.push_back(slot);
        st.buffer.push_back(buf);
      }
      plan->steps.push_back(std::move(st));
    }
    return PRT_OK;
  }
};

// Every kernel the step lists name that the runtime's manifests lack, as one error: the manifests
// (each once), then the kernels per spec, then the command that builds them all; PRT_OK if none.
int missing_kernels(prt_runtime rt, const std::string& label, const std::vector<const Json*>& lists) {
  std::vector<std::pair<std::string, std::vector<std::string>>> by_spec;  // spec -> kernels, in order
  for (const Json* list : lists) {
    if (!list || !list->is(Json::Array)) continue;
    for (const Json& s : list->items) {
      const Json *sym = s.get("symbol"), *kname = s.get("kernel");
      if (!sym || !kname || rt->kernels.count(sym->str)) continue;
      const std::string spec = spec_of_symbol(sym->str, kname->str);
      auto it = std::find_if(by_spec.begin(), by_spec.end(), [&](const auto& e) { return e.first == spec; });
      if (it == by_spec.end()) it = by_spec.insert(by_spec.end(), {spec, {}});
      if (std::find(it->second.begin(), it->second.end(), kname->str) == it->second.end()) it->second.push_back(kname->str);
    }
  }
  if (by_spec.empty()) return PRT_OK;
  std::string where, what, cmd;
  for (const auto& m : rt->manifests) where += (where.empty() ? "" : ", ") + m;
  size_t count = 0;
  for (const auto& [spec, names] : by_spec) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    what += (what.empty() ? "" : "; no ") + std::string(names.size() > 1 ? "kernels " : "kernel ") + list + " for spec " + spec;
    cmd += (cmd.empty() ? "" : " && ") + gen_command(spec);
    count += names.size();
  }
  return set_error(PRT_EINVAL, label + ": the manifest" + (rt->manifests.size() > 1 ? "s " + where + " have" : " " + where + " has") + " no " + what +
                                   "; generate and compile " + (count > 1 ? "them" : "it") + " with `" + cmd + "`");
}

const Json* select_variant(const Json& plan, const std::map<std::string, double>& flags) {
  const Json *variants = plan.get("variants"), *names = plan.get("flags");
  if (!variants || !names) return nullptr;
  for (const Json& v : variants->items) {
    const Json* when = v.get("when");
    if (!when) continue;
    for (const Json& w : when->items) {
      bool all = true;
      for (const Json& f : names->items) {
        const Json* x = w.get(f.str);
        auto it = flags.find(f.str);
        if (!x || it == flags.end() || x->num != it->second) { all = false; break; }
      }
      if (all) return &v;
    }
  }
  return nullptr;
}

size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

}  // namespace

extern "C" {

int prt_runtime_open(prt_runtime* out, const char* manifests, const char* kernel_dir) {
  if (!out) return einval("prt_runtime_open: null output pointer");
  *out = nullptr;
  if (!manifests || !*manifests) return einval("prt_runtime_open: manifests: expected one or more manifest.json paths separated by ':', received an empty string");
  if (!kernel_dir || !*kernel_dir) return einval("prt_runtime_open: kernel_dir: expected the folders of the fatbins (':'-separated; an empty entry is each manifest's own folder), received an empty string");
  auto rt = std::make_unique<prt_runtime_st>();
  rt->kernel_dir = kernel_dir;
  for (const std::string& d : split_colons(kernel_dir)) rt->kernel_dirs.push_back(d.empty() ? d : trim_slash(d));
  for (const std::string& f : split_colons(manifests))
    if (!f.empty()) rt->manifests.push_back(f);
  for (const auto& f : rt->manifests)
    if (int rc = load_manifest(rt.get(), f)) return rc;
  *out = rt.release();
  return PRT_OK;
}

void prt_runtime_close(prt_runtime rt) {
  if (!rt) return;
  for (auto& m : rt->modules) prt_module_unload(m.second);  // best effort; errors are dropped
  delete rt;
}

int prt_plan_create(prt_plan* out, prt_runtime rt, const char* kind, int deg, int d, int e, int chunk,
                    const char* dtype, const prt_problem* p) {
  if (!out) return einval("prt_plan_create: null output pointer");
  *out = nullptr;
  if (!rt || !p) return einval("prt_plan_create: null runtime or problem");
  std::string k = kind ? kind : "";
  if (k != "forward" && k != "backward" && k != "decode" && k != "forward_varlen" && k != "backward_varlen")
    return einval("prt_plan_create: kind: expected \"forward\", \"backward\", \"decode\", \"forward_varlen\" or \"backward_varlen\", received \"" + k + "\"");
  std::string dt = dtype ? dtype : "";
  if (dt == "i32" || dtype_bytes(dt) == 0) return einval("prt_plan_create: dtype: expected one of f16, bf16, f32, received \"" + dt + "\"");
  std::string spec = "p" + std::to_string(deg) + "_d" + std::to_string(d) + "_e" + std::to_string(e) + "_c" + std::to_string(chunk) + "_" + dt;
  auto plan = std::make_unique<prt_plan_st>();
  plan->rt = rt;
  plan->label = k + " plan of " + spec;
  auto bad = [&](const char* field, const std::string& expected, const std::string& got) {
    return einval(plan->label + ": " + field + ": expected " + expected + ", received " + got);
  };
  const bool decode = k == "decode", varlen = k == "forward_varlen" || k == "backward_varlen";
  if (p->b < 1) return bad("b", "a positive integer", std::to_string(p->b));
  if (varlen && p->b != 1) return bad("b", "1 (sequences packed along t)", std::to_string(p->b));
  if (varlen && p->ns < 1) return bad("ns", "a positive integer (sequences)", std::to_string(p->ns));
  // every slot holds 1..chunk of the t tokens and a non-empty sequence at least one slot
  if (varlen && (p->nc < (p->t + chunk - 1) / chunk || p->nc > p->t))
    return bad("nc", "the chunk slots of the packing, in [ceil(t / chunk), t] = [" + std::to_string((p->t + chunk - 1) / chunk) + ", " + std::to_string(p->t) + "]", std::to_string(p->nc));
  if (p->t < 1) return bad(decode ? "t (new tokens)" : "t", "a positive integer", std::to_string(p->t));
  if (p->h < 1) return bad("h", "a positive integer", std::to_string(p->h));
  if (p->hq < 1 || p->hq % p->h != 0) return bad("hq", "a positive multiple of h = " + std::to_string(p->h), std::to_string(p->hq));
  if (!std::isfinite(p->scale)) return bad("scale", "a finite number", num_str(p->scale));
  if (decode && (p->len0 < 0 || p->len0 >= chunk)) return bad("len0", "an integer in [0, " + std::to_string(chunk) + ")", std::to_string(p->len0));

  auto it = rt->plans.find(k + "/" + spec);
  if (it == rt->plans.end() && !decode && !varlen && chunk >= 16 && p->t <= chunk && !p->initial_state && !p->final_state) {
    // one window over t (the quadratic path) at a chunk no manifest has: the one-window variant of
    // any built chunk of this deg, d, e and dtype serves it when all its kernels are chunk-free
    // (the variant's "anyChunk"; codegen/plan-data.ts)
    const std::string head = k + "/p" + std::to_string(deg) + "_d" + std::to_string(d) + "_e" + std::to_string(e) + "_c", tail = "_" + dt;
    // (the smallest such chunk, as the TS runtime and the Python package take it)
    std::map<std::string, double> one{{"gated", p->gated ? 1.0 : 0.0}, {"initialState", 0}, {"finalState", 0}, {"oneChunk", 1}};
    long best = -1;
    for (auto c = rt->plans.lower_bound(head); c != rt->plans.end() && c->first.compare(0, head.size(), head) == 0; ++c) {
      const std::string& key = c->first;
      if (key.size() <= head.size() + tail.size() || key.compare(key.size() - tail.size(), tail.size(), tail) != 0) continue;
      const std::string digits = key.substr(head.size(), key.size() - head.size() - tail.size());
      if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
      const Json* v = select_variant(*c->second.json, one);
      const Json* any = v ? v->get("anyChunk") : nullptr;
      const long built = std::stol(digits);
      if (any && any->is(Json::Bool) && any->b && (best < 0 || built < best)) {
        it = c;
        best = built;
      }
    }
  }
  if (it == rt->plans.end()) {
    std::string where;
    for (const auto& m : rt->manifests) where += (where.empty() ? "" : ", ") + m;
    return set_error(PRT_EINVAL, "spec " + spec + " (deg " + std::to_string(deg) + ", d " + std::to_string(d) + ", e " + std::to_string(e) +
                                     ", chunk " + std::to_string(chunk) + ", " + dt + ") has no " + k + " plan in " + where +
                                     "; generate and compile it with `" + gen_command(spec) + "`");
  }
  Builder bld{plan.get(), nullptr, {}, {}};
  Vars vars{{"b", double(p->b)}, {"hq", double(p->hq)}, {"h", double(p->h)}, {"scale", p->scale}};
  bld.flags["gated"] = p->gated ? 1 : 0;
  if (varlen) {
    vars["t"] = double(p->t);
    vars["ns"] = double(p->ns);
    vars["nc"] = double(p->nc);
    bld.flags["initialState"] = p->initial_state ? 1 : 0;
    bld.flags["finalState"] = p->final_state ? 1 : 0;
  } else if (!decode) {
    double n = std::ceil(double(p->t) / chunk);
    vars["t"] = double(p->t);
    vars["n"] = n;
    bld.flags["initialState"] = p->initial_state ? 1 : 0;
    bld.flags["finalState"] = p->final_state ? 1 : 0;
    bld.flags["oneChunk"] = n == 1 ? 1 : 0;
  } else {
    vars["tn"] = double(p->t);
  }
  const Json* v = select_variant(*it->second.json, bld.flags);
  if (!v) return bld.fail("the manifest has no variant for these flags");
  bld.variant = v;
  // (the fold's kernels only when this call folds: a decode that fills no cache needs none of them)
  const bool folds = decode && p->len0 + p->t >= chunk;
  const Json* fold_steps = folds && v->get("fold") ? v->get("fold")->get("steps") : nullptr;
  if (int rc = missing_kernels(rt, plan->label, {v->get("steps"), fold_steps})) return rc;
  if (int rc = bld.add_buffers(v->get("buffers"), vars)) return rc;
  if (!decode) {
    if (int rc = bld.add_steps(v->get("steps"), vars)) return rc;
  } else {
    // the segments of dsl/plan-decode.ts decodeSegments
    const Json* fold = v->get("fold");
    if (!fold) return bld.fail("the decode variant lacks its fold");
    bool folded = false;
    int64_t len = p->len0;
    for (int64_t q0 = 0; q0 < p->t;) {
      int64_t seg = std::min<int64_t>(p->t - q0, chunk - len);
      Vars at = vars;
      at["q0"] = double(q0);
      at["seg"] = double(seg);
      at["len0"] = double(len);
      if (int rc = bld.add_steps(v->get("steps"), at)) return rc;
      if (len + seg == chunk) {
        if (!folded) {
          if (int rc = bld.add_buffers(fold->get("buffers"), vars)) return rc;
          folded = true;
        }
        if (int rc = bld.add_steps(fold->get("steps"), at)) return rc;
        len = 0;
      } else {
        len += seg;
      }
      q0 += seg;
    }
  }
  // roles and the workspace: temporaries first, then the outputs a caller may leave to it
  const Json* outputs = v->get("outputs");
  for (auto& b : plan->buffers) {
    bool is_out = false;
    if (outputs)
      for (const Json& o : outputs->items) is_out |= o.str == b.name;
    b.role = b.init == 0 ? PRT_BUF_INPUT : is_out ? PRT_BUF_OUTPUT : PRT_BUF_TEMP;
  }
  size_t off = 0;
  for (auto& b : plan->buffers)
    if (b.role == PRT_BUF_TEMP) b.offset = off, off += align256(b.bytes);
  plan->ws_temp = off;
  for (auto& b : plan->buffers)
    if (b.role == PRT_BUF_OUTPUT) b.offset = off, off += align256(b.bytes);
  plan->ws_all = off;
  *out = plan.release();
  return PRT_OK;
}

void prt_plan_destroy(prt_plan plan) { delete plan; }

int prt_plan_buffer_count(prt_plan plan) { return plan ? int(plan->buffers.size()) : 0; }

int prt_plan_buffer(prt_plan plan, int i, prt_buffer_info* out) {
  if (!plan || !out) return einval("prt_plan_buffer: null argument");
  if (i < 0 || i >= int(plan->buffers.size()))
    return einval(plan->label + ": buffer index: expected 0.." + std::to_string(int(plan->buffers.size()) - 1) + ", received " + std::to_string(i));
  const Buffer& b = plan->buffers[size_t(i)];
  out->name = b.name.c_str();
  out->dtype = b.dtype.c_str();
  out->ndim = int(b.shape.size());
  for (size_t k = 0; k < 8; ++k) out->shape[k] = k < b.shape.size() ? b.shape[k] : 0;
  out->bytes = b.bytes;
  out->role = b.role;
  out->offset = b.offset;
  return PRT_OK;
}

int prt_plan_buffer_index(prt_plan plan, const char* name) {
  if (!plan || !name) return -1;
  for (size_t i = 0; i < plan->buffers.size(); ++i)
    if (plan->buffers[i].name == name) return int(i);
  return -1;
}

size_t prt_plan_workspace_bytes(prt_plan plan, int outputs_too) {
  return plan ? (outputs_too ? plan->ws_all : plan->ws_temp) : 0;
}

int prt_plan_step_count(prt_plan plan) { return plan ? int(plan->steps.size()) : 0; }

int prt_plan_step_describe(prt_plan plan, int i, char* buf, size_t len) {
  if (!plan || !buf || len == 0) return einval("prt_plan_step_describe: null argument");
  if (i < 0 || i >= int(plan->steps.size())) return einval(plan->label + ": step index out of range: " + std::to_string(i));
  const Step& s = plan->steps[size_t(i)];
  std::snprintf(buf, len, "%s grid=(%u,%u,%u) block=%u smem=%u", s.kernel->symbol.c_str(), s.grid[0], s.grid[1], s.grid[2],
                s.kernel->threads, s.kernel->smem);
  return PRT_OK;
}

// The plan's functions in the current context, loading modules once per (context, fatbin).
static int plan_functions(prt_plan plan, const std::vector<prt_function>** out) {
  void* ctx = nullptr;
  if (int rc = prt_current_context(&ctx)) return rc;
  std::lock_guard<std::mutex> lk(plan->mu);
  auto hit = plan->functions.find(ctx);
  if (hit != plan->functions.end()) return *out = &hit->second, PRT_OK;
  prt_runtime rt = plan->rt;
  std::vector<prt_function> fns;
  std::lock_guard<std::mutex> rlk(rt->mu);
  for (const Step& s : plan->steps) {
    const KernelEntry& k = *s.kernel;
    auto fk = std::make_pair(ctx, k.symbol);
    auto f = rt->functions.find(fk);
    if (f == rt->functions.end()) {
      // the first candidate folder that holds the fatbin
      const std::string* found = nullptr;
      for (const std::string& c : k.fatbin_candidates)
        if (std::ifstream(c)) { found = &c; break; }
      if (!found) {
        std::string where;
        for (const std::string& c : k.fatbin_candidates) where += (where.empty() ? "" : ", ") + c;
        // the last folder is searched for every manifest (the package's build/kernels by default)
        return set_error(PRT_EIO, plan->label + ": the fatbin of kernel " + k.name + " (" + k.symbol + ") is missing: " +
                                      (k.fatbin_candidates.size() == 1 ? where + " does not exist" : "none of " + where + " exists") +
                                      "; compile it with `npx retention build --out " + dir_of(k.manifest) + " --build-dir " +
                                      dir_of(k.fatbin_candidates.back()) + "`");
      }
      auto mk = std::make_pair(ctx, *found);
      auto m = rt->modules.find(mk);
      if (m == rt->modules.end()) {
        prt_module mod = nullptr;
        if (int rc = prt_module_load(&mod, found->c_str())) return rc;
        m = rt->modules.emplace(mk, mod).first;
      }
      prt_function fn = nullptr;
      if (int rc = prt_module_get_function(&fn, m->second, k.symbol.c_str())) return rc;
      if (k.smem > 48 * 1024)
        if (int rc = prt_function_set_max_dynamic_smem(fn, int(k.smem))) return rc;
      f = rt->functions.emplace(fk, fn).first;
    }
    fns.push_back(f->second);
  }
  auto ins = plan->functions.emplace(ctx, std::move(fns)).first;
  *out = &ins->second;
  return PRT_OK;
}

int prt_plan_prepare(prt_plan plan) {
  if (!plan) return einval("prt_plan_prepare: null plan");
  const std::vector<prt_function>* fns;
  return plan_functions(plan, &fns);
}

int prt_plan_run(prt_plan plan, void* stream, const prt_devptr* ptrs, int nptrs, prt_devptr workspace,
                 size_t workspace_bytes, unsigned flags) {
  if (!plan) return einval("prt_plan_run: null plan");
  const int n = int(plan->buffers.size());
  if (nptrs != n || (n > 0 && !ptrs))
    return einval(plan->label + ": ptrs: expected " + std::to_string(n) + " pointers (one per buffer), received " + std::to_string(nptrs));
  // resolve every buffer's address (no allocation: a fixed array on the stack for small plans)
  std::vector<prt_devptr> addr_heap;
  prt_devptr addr_stack[64];
  prt_devptr* addr = n <= 64 ? addr_stack : (addr_heap.resize(size_t(n)), addr_heap.data());
  bool need_all = false;
  for (int i = 0; i < n; ++i) {
    const Buffer& b = plan->buffers[size_t(i)];
    if (b.role == PRT_BUF_INPUT && !ptrs[i] && b.bytes)
      return einval(plan->label + ": buffer " + b.name + " (an input, " + b.dtype + " " + std::to_string(b.bytes) + " bytes): expected a device pointer, received 0");
    if (b.role == PRT_BUF_OUTPUT && !ptrs[i]) need_all = true;
    // a pointer for a buffer the plan keeps in its workspace would be ignored: for logG that is an
    // ungated run of a caller who meant gates, so it is an error naming the flag
    if (b.role == PRT_BUF_TEMP && ptrs[i])
      return einval(plan->label + ": buffer " + b.name + ": expected 0 (the plan keeps it in its workspace" + flag_of_input(b.name) +
                    "), received a pointer; pass 0, or create the plan with the flag set");
  }
  size_t need = need_all ? plan->ws_all : plan->ws_temp;
  if (workspace_bytes < need || (need > 0 && !workspace))
    return einval(plan->label + ": workspace: expected " + std::to_string(need) + " bytes" + (need_all ? " (outputs in the workspace too)" : "") +
                  ", received " + std::to_string(workspace ? workspace_bytes : 0) + (workspace ? "" : " (null pointer)"));
  for (int i = 0; i < n; ++i) {
    const Buffer& b = plan->buffers[size_t(i)];
    addr[i] = (b.role == PRT_BUF_TEMP || !ptrs[i]) ? workspace + b.offset : ptrs[i];
  }
  const std::vector<prt_function>* fns;
  if (int rc = plan_functions(plan, &fns)) return rc;
  for (int i = 0; i < n; ++i) {
    const Buffer& b = plan->buffers[size_t(i)];
    bool zero = b.init == 2, poison = b.init == 1 && (flags & PRT_RUN_POISON);
    if ((!zero && !poison) || b.bytes == 0) continue;
    if (b.bytes % 4 != 0 && ptrs[i] && b.role != PRT_BUF_TEMP)
      return einval(plan->label + ": buffer " + b.name + ": " + std::to_string(b.bytes) + " bytes cannot be filled by 32-bit words; leave it to the workspace");
    if (int rc = prt_memset_d32_async(addr[i], zero ? 0u : 0xFFFFFFFFu, (b.bytes + 3) / 4, stream)) return rc;
  }
  for (size_t s = 0; s < plan->steps.size(); ++s) {
    const Step& st = plan->steps[s];
    if (uint64_t(st.grid[0]) * st.grid[1] * st.grid[2] == 0) continue;  // nothing to do
    const size_t na = st.slots.size();
    if (na > 63) return einval(st.what + ": more than 63 arguments");
    uint64_t vals[64];
    void* args[65];
    for (size_t a = 0; a < na; ++a) {
      vals[a] = st.buffer[a] >= 0 ? addr[st.buffer[a]] : st.slots[a];
      args[a] = &vals[a];
    }
    args[na] = nullptr;  // not read by the driver; lets a test driver count the arguments
    const unsigned block[3] = {st.kernel->threads, 1, 1};
    if (int rc = prt_launch_async((*fns)[s], st.grid, block, st.kernel->smem, stream, args, st.what.c_str())) return rc;
  }
  return PRT_OK;
}

}  // extern "C"
