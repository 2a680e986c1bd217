"""The manifests `gen` writes (codegen/manifest.ts is the schema), read in Python: which specs have
plans, and a plan variant's buffer shapes as expressions. The native core runs the plans; this
side needs them only for what must be known without launching: the shapes of the outputs (for
torch's fake tensors, under torch.compile, where sizes may be symbolic) and the spec to pick.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache

MANIFEST_FORMAT = 2

# The contract's fields (dsl/contract/manifest.ts KERNEL_FIELDS, PLAN_FIELDS, PLAN_KINDS;
# test/contract.test.ts holds the three readers to the same lists): each kernel entry's and plan's.
KERNEL_FIELDS = {"name": "string", "symbol": "string", "specKey": "string", "spec": "object", "schedule": "object", "args": "array",
                 "threads": "number", "smemBytes": "number", "source": "string", "fatbin": "string"}
PLAN_FIELDS = {"kind": "string", "spec": "string", "flags": "array", "variants": "array"}
PLAN_KINDS = ("forward", "backward", "decode", "forward_varlen", "backward_varlen")
_JSON_TYPES = {"string": str, "object": dict, "array": list, "number": (int, float)}


def _check_fields(file: str, what: str, entry, fields: dict) -> None:
    if not isinstance(entry, dict):
        raise ManifestError(f"{file}: {what}: expected an object, received {entry!r}; regenerate it with `npx retention gen`")
    for name, t in fields.items():
        v = entry.get(name)
        if v is None or not isinstance(v, _JSON_TYPES[t]) or (t == "number" and isinstance(v, bool)):
            state = "missing" if v is None else f"a {type(v).__name__}"
            raise ManifestError(f"{file}: {what}: field '{name}' is {state}, expected a {t}; regenerate it with `npx retention gen`")


@dataclass(frozen=True)
class Spec:
    deg: int
    d: int
    e: int
    chunk: int
    dtype: str

    @property
    def key(self) -> str:
        return f"p{self.deg}_d{self.d}_e{self.e}_c{self.chunk}_{self.dtype}"

    def gen_command(self) -> str:
        """The command (run in the repository) that generates and compiles this spec (runtime/kernels.ts genCommand)."""
        return (f"npx retention gen --deg {self.deg} --d {self.d} --e {self.e} --chunk {self.chunk} --dtype {self.dtype} "
                f"--out build/generated/{self.key} --compile")


class ManifestError(ValueError):
    pass


def eval_expr(e, env):
    """A plan expression (number, variable name, or [op, a, b]) over `env`; works on ints and on torch SymInts."""
    if isinstance(e, (int, float)):
        return e
    if isinstance(e, str):
        if e not in env:
            raise ManifestError(f"plan expression: variable '{e}' has no value")
        return env[e]
    op, a, b = e
    x, y = eval_expr(a, env), eval_expr(b, env)
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "//":
        return x // y
    if op == "%":
        return x % y
    if op == "max":
        return max(x, y)
    if op == "min":
        return min(x, y)
    raise ManifestError(f"plan expression: unknown operator {op!r}")


def init_of(init, flags: dict) -> str:
    if isinstance(init, str):
        return init
    return init["then"] if flags.get(init["flag"]) else init["else"]


@dataclass(frozen=True)
class Manifest:
    file: str
    plans: dict  # (kind, specKey) -> plan JSON
    specs: tuple  # Spec of every plan, in file order
    algorithms: dict = None  # device -> "p<deg>_d<d>_e<e>_<dtype>" -> {quadraticMaxT, chunk} (dsl/algorithm.ts)

    def __post_init__(self):
        if self.algorithms is None:
            object.__setattr__(self, "algorithms", {})


@lru_cache(maxsize=None)
def _load(file: str, mtime: float) -> Manifest:
    try:
        with open(file, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise ManifestError(f"{file}: cannot read the manifest ({e}); regenerate it with `npx retention gen`") from e
    if not isinstance(raw, dict):
        raise ManifestError(f"{file}: expected a JSON object; regenerate it with `npx retention gen`")
    if raw.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{file}: manifest format {raw.get('format')!r}, this package reads format {MANIFEST_FORMAT}; "
                            "regenerate it with `npx retention gen`")
    for key in ("kernels", "plans"):
        if not isinstance(raw.get(key), list):
            raise ManifestError(f"{file}: '{key}' is missing or not a list; regenerate it with `npx retention gen`")
    for i, k in enumerate(raw["kernels"]):
        _check_fields(file, f"kernel {i}", k, KERNEL_FIELDS)
    for i, p in enumerate(raw["plans"]):
        _check_fields(file, f"plan {i}", p, PLAN_FIELDS)
        if p["kind"] not in PLAN_KINDS:
            raise ManifestError(f"{file}: plan {i}: kind {p['kind']!r} is not one this package reads; regenerate it with `npx retention gen`")
    plans, specs = {}, []
    by_key = {k["specKey"]: k["spec"] for k in raw["kernels"]}
    for p in raw["plans"]:
        plans[(p["kind"], p["spec"])] = p
        s = by_key.get(p["spec"])
        if s and p["kind"] == "forward":
            specs.append(Spec(s["deg"], s["d"], s["e"], s["chunk"], s["dtype"]))
    algorithms = raw.get("algorithms")
    return Manifest(file, plans, tuple(specs), algorithms if isinstance(algorithms, dict) else {})


def load(file: str) -> Manifest:
    return _load(os.path.abspath(file), os.path.getmtime(file))


def load_all(files: list[str]) -> list[Manifest]:
    return [load(f) for f in files if os.path.exists(f)]


def find_plan(manifests: list[Manifest], kind: str, spec: Spec, one_window: bool = False, gated: bool = True):
    """The plan of (kind, spec); for a one-window problem (t <= chunk, no state in or out: the
    quadratic path) at a chunk no manifest has, the plan of the smallest built chunk of the same deg,
    d, e and dtype whose one-window variant is made of chunk-free kernels ("anyChunk"), as the
    native core takes it (runtime/native/plans.cc)."""
    for m in manifests:
        p = m.plans.get((kind, spec.key))
        if p is not None:
            return p
    if not one_window or kind == "decode":
        return None
    flags = {"gated": int(gated), "initialState": 0, "finalState": 0, "oneChunk": 1}
    for c in sorted({s.chunk for m in manifests for s in m.specs if (s.deg, s.d, s.e, s.dtype) == (spec.deg, spec.d, spec.e, spec.dtype)}):
        other = Spec(spec.deg, spec.d, spec.e, c, spec.dtype)
        for m in manifests:
            p = m.plans.get((kind, other.key))
            if p is None:
                continue
            try:
                if variant(p, flags).get("anyChunk"):
                    return p
            except ManifestError:
                pass
    return None


def _next_pow2(x) -> int:
    p = 16
    while p < x:
        p *= 2
    return p


def _floor_pow2(x) -> int:
    p = 16
    while p * 2 <= x:
        p *= 2
    return p


def default_quadratic_max_t(deg: int, d: int, e: int) -> int:
    """dsl/algorithm.ts defaultQuadraticMaxT: the quadratic form while t <= 4 D e / (d + e)."""
    D = 1
    for i in range(deg):
        D = D * (d + i) / (i + 1)
    return _floor_pow2(4 * D * e / (d + e))


def algorithm_entry(manifests: list[Manifest], device, deg: int, d: int, e: int, dtype: str):
    """The measured entry {quadraticMaxT, chunk} for this device and spec (the first manifest's that has one), or None."""
    key = f"p{deg}_d{d}_e{e}_{dtype}"
    for m in manifests:
        entry = m.algorithms.get(device, {}).get(key) if device is not None else None
        if entry is not None:
            return entry
    return None


def choose_chunk(manifests: list[Manifest], deg: int, d: int, e: int, dtype: str, t: int, chunk: int | None,
                 initial_state: bool = False, final_state: bool = False, device=None) -> Spec:
    """The spec for a call: the given chunk, or (chunk None) the algorithm per problem of dsl/algorithm.ts
    (chooseChunk): the quadratic form (a chunk >= t, served by any built chunk's chunk-free kernels)
    while the measured table (or the default rule) says it is cheaper and no state goes in or out, else
    the table's chunk when built, else the largest built. Raises naming the gen command when none is built."""
    if chunk is not None:
        return Spec(deg, d, e, chunk, dtype)
    built = sorted({s.chunk for m in manifests for s in m.specs if (s.deg, s.d, s.e, s.dtype) == (deg, d, e, dtype)})
    if not built:
        want = Spec(deg, d, e, 128, dtype)
        where = ", ".join(m.file for m in manifests) or "no manifest"
        raise ManifestError(f"no kernels for deg {deg}, d {d}, e {e}, {dtype} in {where}; generate and compile them with "
                            f"`{want.gen_command()}`")
    entry = algorithm_entry(manifests, device, deg, d, e, dtype)
    max_t = entry["quadraticMaxT"] if entry else default_quadratic_max_t(deg, d, e)
    if not initial_state and not final_state and t <= max_t:
        return Spec(deg, d, e, _next_pow2(t), dtype)
    if entry and entry["chunk"] in built:
        return Spec(deg, d, e, entry["chunk"], dtype)
    return Spec(deg, d, e, built[-1], dtype)


def variant(plan, flags: dict):
    for v in plan["variants"]:
        for w in v["when"]:
            if all(w[f] == flags.get(f, 0) for f in plan["flags"]):
                return v
    raise ManifestError(f"{plan['kind']} plan of {plan['spec']}: no variant for flags {flags}")


def problem_env(kind: str, chunk: int, b, t, hq, h, gated: bool, initial_state: bool = False, final_state: bool = False):
    """The variables and flags of a forward/backward problem (n and oneChunk derived as the core does)."""
    n = (t + chunk - 1) // chunk
    env = {"b": b, "t": t, "hq": hq, "h": h, "n": n, "scale": 0.0}
    flags = {"gated": int(gated), "initialState": int(initial_state), "finalState": int(final_state), "oneChunk": int(n == 1)}
    return env, flags


def varlen_layout(cu: list, chunk: int) -> dict:
    """dsl/plan-varlen.ts varlenLayout (test/python.test.ts holds the two equal): where the chunks of
    packed sequences sit in the chunk-aligned layout. cu: the ns + 1 offsets (checked by the caller).
    Returns ns, nc (the chunk slots: each sequence starts one, an empty one takes none) and the
    varlen plans' i32 inputs chunkSrc, chunkLen (per slot: the first packed row, the rows that are
    the sequence's) and seqChunk (per sequence its first slot, then nc)."""
    chunk_src, chunk_len, seq_chunk = [], [], []
    for s in range(len(cu) - 1):
        seq_chunk.append(len(chunk_src))
        r = cu[s]
        while r < cu[s + 1]:
            chunk_src.append(r)
            chunk_len.append(min(chunk, cu[s + 1] - r))
            r += chunk
    seq_chunk.append(len(chunk_src))
    return {"ns": len(cu) - 1, "nc": len(chunk_src), "chunkSrc": chunk_src, "chunkLen": chunk_len, "seqChunk": seq_chunk}


def varlen_env(t, hq, h, ns, nc, gated: bool, initial_state: bool, final_state: bool):
    """The variables and flags of a forward_varlen / backward_varlen problem (codegen/manifest.ts PLAN_VARS)."""
    env = {"t": t, "hq": hq, "h": h, "ns": ns, "nc": nc, "scale": 0.0}
    flags = {"gated": int(gated), "initialState": int(initial_state), "finalState": int(final_state)}
    return env, flags


def output_shapes(plan, env: dict, flags: dict) -> list[tuple[str, str, tuple]]:
    """(name, dtype, shape) of the variant's outputs, in the order the variant lists them."""
    v = variant(plan, flags)
    bufs = {b["name"]: b for b in v["buffers"]}
    return [(o, bufs[o]["dtype"], tuple(eval_expr(d, env) for d in bufs[o]["shape"])) for o in v["outputs"]]
