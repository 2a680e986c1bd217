"""power_retention for PyTorch: torch.library custom ops over the native plans (libprt.so).

The ops launch on torch's current stream, take their workspace from torch's caching allocator,
never synchronize, and are registered with a fake (meta) implementation and an autograd formula,
so torch.compile(fullgraph=True) traces them without a graph break and a CUDA graph can capture
them (after one warm-up call has loaded the kernels).

Layouts (SPEC.md): Q [b, t, hq, d], K [b, t, h, d], V [b, t, h, e], log_G [b, t, h] (float32, each
<= 0), Y [b, t, hq, e]; hq a multiple of h (grouped-query attention). The recurrent state of a head
is S [D, e] and its normaliser Z [D] in float32, D = binomial(d + deg - 1, deg), features in the
order of the README's "State layout".
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import List, Optional

from ._torch import require_torch

torch = require_torch()

from . import _manifest, _native, _paths  # noqa: E402

_DTYPES = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32"}
_TORCH = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}

_state = threading.local()
_lock = threading.Lock()
_runtime: Optional[_native.Runtime] = None
_plans: dict = {}


def _rt() -> _native.Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = _native.Runtime()
        return _runtime


def _manifests() -> list:
    return _manifest.load_all(_paths.manifest_paths())


def _plan(kind: str, spec: _manifest.Spec, b: int, t: int, hq: int, h: int, scale: float, gated: bool,
          initial_state: bool = False, final_state: bool = False, len0: int = 0, ns: int = 0, nc: int = 0) -> _native.Plan:
    key = (kind, spec, b, t, hq, h, scale, gated, initial_state, final_state, len0, ns, nc)
    p = _plans.get(key)
    if p is None:
        p = _rt().plan(kind, (spec.deg, spec.d, spec.e, spec.chunk, spec.dtype), b, t, hq, h, scale, gated, initial_state, final_state,
                       len0, ns, nc)
        with _lock:
            if len(_plans) > 4096:  # plans are small, but sizes can vary without end
                _plans.clear()
            _plans[key] = p
    return p


def _run(plan: _native.Plan, device: torch.device, given: dict) -> dict:
    """Run `plan` with the tensors in `given` (by buffer name) as its inputs; returns its outputs
    (new tensors) by name. Inputs the plan updates in place are updated in place."""
    out = {}
    ptrs = {}
    for buf in plan.buffers:
        if buf.role == _native.BUF_INPUT:
            x = given.get(buf.name)
            if x is None:
                raise RuntimeError(f"{plan.kind} plan: input {buf.name} was not supplied (internal error)")
            ptrs[buf.name] = x.data_ptr()
        elif buf.role == _native.BUF_OUTPUT:
            y = torch.empty(buf.shape, dtype=_TORCH[buf.dtype], device=device)
            out[buf.name] = y
            ptrs[buf.name] = y.data_ptr()
    ws = torch.empty(max(plan.workspace_bytes, 1), dtype=torch.uint8, device=device)
    with torch.cuda.device(device):
        plan.run(torch.cuda.current_stream(device).cuda_stream, ptrs, ws.data_ptr(), plan.workspace_bytes)
    return out


def _spec_of(Q: torch.Tensor, V: torch.Tensor, deg: int, chunk: int) -> _manifest.Spec:
    return _manifest.Spec(deg, Q.shape[-1], V.shape[-1], chunk, _DTYPES[Q.dtype])


# What the manifest says, as constants for torch.compile: dynamo runs these once at trace time
# instead of tracing their file reads (which would break the graph).
_constant = getattr(getattr(torch, "_dynamo", None), "assume_constant_result", lambda f: f)


@_constant
def _device_name(device) -> Optional[str]:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


_untuned = set()


@_constant
@_paths.per_search_path
def _auto_chunk(deg: int, d: int, e: int, dtype: str, t: int, initial: bool, final: bool, device: Optional[str]) -> int:
    ms = _manifests()
    if _manifest.algorithm_entry(ms, device, deg, d, e, dtype) is None and (device, deg, d, e, dtype) not in _untuned:
        _untuned.add((device, deg, d, e, dtype))
        warnings.warn(f"power-retention: no measured algorithm table for {device or 'this device'} and p{deg}_d{d}_e{e}_{dtype}; "
                      "the quadratic form up to the default length (codegen/algorithms.json, bench/algorithms.ts)")
    return _manifest.choose_chunk(ms, deg, d, e, dtype, t, None, initial, final, device).chunk


@_constant
@_paths.per_search_path
def _output_names(kind: str, deg: int, d: int, e: int, chunk: int, dtype: str, gated: bool, initial: bool, final: bool,
                  one_chunk: bool) -> tuple:
    spec = _manifest.Spec(deg, d, e, chunk, dtype)
    plan = _manifest.find_plan(_manifests(), kind, spec, one_chunk and not initial and not final, gated)
    if plan is None:
        raise _native.PrtError(f"spec {spec.key} has no {kind} plan on the kernel search path ({_paths.describe_search_path()}); "
                               f"generate and compile it with `{spec.gen_command()}`")
    flags = {"gated": int(gated), "initialState": int(initial), "finalState": int(final), "oneChunk": int(one_chunk)}
    return tuple(_manifest.variant(plan, flags)["outputs"])


# ---- the ops ---------------------------------------------------------------------------------------
# Outputs are a list in the order the plan variant lists them (names from the manifest), so a change
# of the plans (e.g. a new saved tensor) reaches Python by regenerating, with no edit here.


@_paths.per_search_path
def _forward_names(spec, b, t, hq, h, gated, initial_state, final_state) -> list:
    plan = _manifest.find_plan(_manifests(), "forward", spec, t <= spec.chunk and not initial_state and not final_state, gated)
    if plan is None:
        raise _native.PrtError(f"spec {spec.key} has no forward plan on the kernel search path ({_paths.describe_search_path()}); "
                               f"generate and compile it with `{spec.gen_command()}`")
    env, flags = _manifest.problem_env("forward", spec.chunk, b, t, hq, h, gated, initial_state, final_state)
    return _manifest.output_shapes(plan, env, flags)


def _forward_impl(Q, K, V, logG, S0, Z0, deg: int, scale: float, chunk: int, final_state: bool) -> list:
    """The forward plan's outputs, in the order the plan variant lists them."""
    b, t, hq, _ = Q.shape
    h = K.shape[2]
    spec = _spec_of(Q, V, deg, chunk)
    gated, initial = logG is not None, S0 is not None
    plan = _plan("forward", spec, b, t, hq, h, scale, gated, initial, final_state)
    out = _run(plan, Q.device, {"Q": Q, "K": K, "V": V, "logG": logG, "S0": S0, "Z0": Z0})
    return [out[n] for n, _, _ in _forward_names(spec, b, t, hq, h, gated, initial, final_state)]


@torch.library.custom_op("prt::forward", mutates_args=())
def _forward_op(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, logG: Optional[torch.Tensor], S0: Optional[torch.Tensor],
                Z0: Optional[torch.Tensor], deg: int, scale: float, chunk: int, final_state: bool) -> List[torch.Tensor]:
    return _forward_impl(Q, K, V, logG, S0, Z0, deg, scale, chunk, final_state)


@_forward_op.register_fake
def _(Q, K, V, logG, S0, Z0, deg, scale, chunk, final_state):
    b, t, hq, _ = Q.shape
    spec = _spec_of(Q, V, deg, chunk)
    names = _forward_names(spec, b, t, hq, K.shape[2], logG is not None, S0 is not None, final_state)
    return [Q.new_empty(shape, dtype=_TORCH[dt]) for _, dt, shape in names]


@_paths.per_search_path
def _backward_names(spec, b, t, hq, h, gated, initial_state, final_state) -> list:
    plan = _manifest.find_plan(_manifests(), "backward", spec, t <= spec.chunk and not initial_state and not final_state, gated)
    if plan is None:
        raise _native.PrtError(f"spec {spec.key} has no backward plan on the kernel search path ({_paths.describe_search_path()}); "
                               f"generate and compile it with `{spec.gen_command()}`")
    env, flags = _manifest.problem_env("backward", spec.chunk, b, t, hq, h, gated, initial_state, final_state)
    return _manifest.output_shapes(plan, env, flags)


def _backward_impl(Q, K, V, logG, S0, Z0, saved: list, dY, dSfinal, dZfinal, deg: int, scale: float, chunk: int,
                   final_state: bool) -> list:
    """The backward plan's outputs, in the order the plan variant lists them."""
    b, t, hq, _ = Q.shape
    h = K.shape[2]
    spec = _spec_of(Q, V, deg, chunk)
    gated, initial = logG is not None, S0 is not None
    fwd = [n for n, _, _ in _forward_names(spec, b, t, hq, h, gated, initial, final_state)]
    given = dict(zip(fwd, saved))
    given.update({"Q": Q, "K": K, "V": V, "logG": logG, "S0": S0, "Z0": Z0, "dY": dY, "dSfinal": dSfinal, "dZfinal": dZfinal})
    plan = _plan("backward", spec, b, t, hq, h, scale, gated, initial, final_state)
    out = _run(plan, Q.device, given)
    return [out[n] for n, _, _ in _backward_names(spec, b, t, hq, h, gated, initial, final_state)]


@torch.library.custom_op("prt::backward", mutates_args=())
def _backward_op(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, logG: Optional[torch.Tensor], S0: Optional[torch.Tensor],
                 Z0: Optional[torch.Tensor], saved: List[torch.Tensor], dY: torch.Tensor, dSfinal: Optional[torch.Tensor],
                 dZfinal: Optional[torch.Tensor], deg: int, scale: float, chunk: int, final_state: bool) -> List[torch.Tensor]:
    return _backward_impl(Q, K, V, logG, S0, Z0, saved, dY, dSfinal, dZfinal, deg, scale, chunk, final_state)


@_backward_op.register_fake
def _(Q, K, V, logG, S0, Z0, saved, dY, dSfinal, dZfinal, deg, scale, chunk, final_state):
    b, t, hq, _ = Q.shape
    spec = _spec_of(Q, V, deg, chunk)
    names = _backward_names(spec, b, t, hq, K.shape[2], logG is not None, S0 is not None, final_state)
    return [Q.new_empty(shape, dtype=_TORCH[dt]) for _, dt, shape in names]


def _setup_context(ctx, inputs, output):
    Q, K, V, logG, S0, Z0, deg, scale, chunk, final_state = inputs
    ctx.save_for_backward(Q, K, V, logG, S0, Z0, *output)
    ctx.args = (deg, scale, chunk, final_state)
    ctx.n_out = len(output)


def _backward(ctx, *grads, run=None):
    """The gradients of (Q, K, V, log_G, S0, Z0) from those of the forward's outputs (None or
    missing: no gradient); `run` launches the backward plan (the custom op unless given)."""
    if len(grads) == 1 and isinstance(grads[0], (list, tuple)):  # one list output: its grads as one list
        grads = tuple(grads[0])
    Q, K, V, logG, S0, Z0, *saved = ctx.saved_tensors
    deg, scale, chunk, final_state = ctx.args
    b, t, hq, _ = Q.shape
    spec = _spec_of(Q, V, deg, chunk)
    names = [n for n, _, _ in _forward_names(spec, b, t, hq, K.shape[2], logG is not None, S0 is not None, final_state)]
    g = dict(zip(names, grads))
    dY = g["Y"] if g.get("Y") is not None else torch.zeros_like(saved[names.index("Y")])
    dS = dZ = None
    if final_state:
        dS = g.get("Sfinal")
        dZ = g.get("Zfinal")
        dS = torch.zeros_like(saved[names.index("Sfinal")]) if dS is None else dS.contiguous()
        dZ = torch.zeros_like(saved[names.index("Zfinal")]) if dZ is None else dZ.contiguous()
    out = (run or _backward_op)(Q, K, V, logG, S0, Z0, saved, dY.contiguous(), dS, dZ, deg, scale, chunk, final_state)
    bn = [n for n, _, _ in _backward_names(spec, b, t, hq, K.shape[2], logG is not None, S0 is not None, final_state)]
    r = dict(zip(bn, out))
    return (r["dQ"], r["dK"], r["dV"], r["dlogG"] if logG is not None else None,
            r.get("dS0") if S0 is not None else None, r.get("dZ0") if S0 is not None else None, None, None, None, None)


torch.library.register_autograd("prt::forward", _backward, setup_context=_setup_context)


# The outputs a caller can differentiate; the rest are saved for the backward only.
_DIFFERENTIABLE = ("Y", "Sfinal", "Zfinal")


class _Eager(torch.autograd.Function):
    """The same forward and backward outside torch.compile, without the custom op's dispatch: that
    machinery (schema checks, pytree flattening, redispatch, zero gradients for the saved outputs)
    cost about 0.4 ms of host time per forward + backward, more than the kernels of a b = 16,
    t = 1024 problem take on the H100 (bench/profile_binding.py, 2026-12-08). The saved outputs are
    marked non-differentiable and gradients are not materialised, so none is zero-filled."""

    @staticmethod
    def forward(ctx, Q, K, V, logG, S0, Z0, deg, scale, chunk, final_state):
        out = _forward_impl(Q, K, V, logG, S0, Z0, deg, scale, chunk, final_state)
        b, t, hq, _ = Q.shape
        names = _forward_names(_spec_of(Q, V, deg, chunk), b, t, hq, K.shape[2], logG is not None, S0 is not None, final_state)
        ctx.mark_non_differentiable(*[x for (n, _, _), x in zip(names, out) if n not in _DIFFERENTIABLE])
        ctx.set_materialize_grads(False)
        _setup_context(ctx, (Q, K, V, logG, S0, Z0, deg, scale, chunk, final_state), out)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        return _backward(ctx, *grads, run=_backward_impl)


_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or getattr(torch._dynamo, "is_compiling")


def _forward(Q, K, V, logG, S0, Z0, deg, scale, chunk, final_state) -> list:
    """The forward outputs: through the custom op while torch.compile traces (it cannot trace the
    native call), else through _Eager."""
    if _is_compiling():
        return _forward_op(Q, K, V, logG, S0, Z0, deg, scale, chunk, final_state)
    return list(_Eager.apply(Q, K, V, logG, S0, Z0, deg, scale, chunk, final_state))


# ---- packed variable-length sequences (dsl/plan-varlen.ts) ---------------------------------------
# The plans forward_varlen / backward_varlen take the caller's packed [1, t, ...] tensors, one state
# per sequence, and three i32 tables computed here from the offsets (_manifest.varlen_layout). Eager
# only: the aligned layout's size (nc chunk slots) depends on the offsets' values, which a traced
# graph does not know.

_VARLEN_TABLES = ("chunkSrc", "chunkLen", "seqChunk")


@_paths.per_search_path
def _varlen_names(kind: str, spec, t, hq, h, ns, nc, gated, initial_state, final_state) -> list:
    plan = _manifest.find_plan(_manifests(), kind, spec)
    if plan is None:
        raise _native.PrtError(f"spec {spec.key} has no {kind} plan on the kernel search path ({_paths.describe_search_path()}); "
                               f"generate and compile it with `{spec.gen_command()}`")
    env, flags = _manifest.varlen_env(t, hq, h, ns, nc, gated, initial_state, final_state)
    return _manifest.output_shapes(plan, env, flags)


def _varlen_forward_impl(Q, K, V, logG, S0, Z0, tables: dict, deg: int, scale: float, chunk: int, final_state: bool, ns: int, nc: int) -> list:
    """The forward_varlen plan's outputs, in the order the plan variant lists them."""
    t, hq, h = Q.shape[1], Q.shape[2], K.shape[2]
    spec = _spec_of(Q, V, deg, chunk)
    gated, initial = logG is not None, S0 is not None
    plan = _plan("forward_varlen", spec, 1, t, hq, h, scale, gated, initial, final_state, ns=ns, nc=nc)
    out = _run(plan, Q.device, {"Q": Q, "K": K, "V": V, "logG": logG, "S0": S0, "Z0": Z0, **tables})
    return [out[n] for n, _, _ in _varlen_names("forward_varlen", spec, t, hq, h, ns, nc, gated, initial, final_state)]


def _varlen_backward_impl(Q, K, V, logG, S0, Z0, tables: dict, saved: list, dY, dSfinal, dZfinal, deg: int, scale: float, chunk: int,
                          final_state: bool, ns: int, nc: int) -> list:
    """The backward_varlen plan's outputs, in the order the plan variant lists them."""
    t, hq, h = Q.shape[1], Q.shape[2], K.shape[2]
    spec = _spec_of(Q, V, deg, chunk)
    gated, initial = logG is not None, S0 is not None
    fwd = [n for n, _, _ in _varlen_names("forward_varlen", spec, t, hq, h, ns, nc, gated, initial, final_state)]
    given = dict(zip(fwd, saved))
    given.update({"Q": Q, "K": K, "V": V, "logG": logG, "S0": S0, "Z0": Z0, "dY": dY, "dSfinal": dSfinal, "dZfinal": dZfinal, **tables})
    plan = _plan("backward_varlen", spec, 1, t, hq, h, scale, gated, initial, final_state, ns=ns, nc=nc)
    out = _run(plan, Q.device, given)
    return [out[n] for n, _, _ in _varlen_names("backward_varlen", spec, t, hq, h, ns, nc, gated, initial, final_state)]


class _Varlen(torch.autograd.Function):
    """power_retention over packed sequences: the varlen plans forward and backward, the saved
    outputs non-differentiable and gradients not materialised (as _Eager)."""

    @staticmethod
    def forward(ctx, Q, K, V, logG, S0, Z0, tables, deg, scale, chunk, final_state, ns, nc):
        out = _varlen_forward_impl(Q, K, V, logG, S0, Z0, tables, deg, scale, chunk, final_state, ns, nc)
        names = [n for n, _, _ in _varlen_names("forward_varlen", _spec_of(Q, V, deg, chunk), Q.shape[1], Q.shape[2], K.shape[2], ns, nc,
                                                 logG is not None, S0 is not None, final_state)]
        ctx.mark_non_differentiable(*[x for n, x in zip(names, out) if n not in _DIFFERENTIABLE])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(Q, K, V, logG, S0, Z0, *out)
        ctx.tables, ctx.names = tables, names
        ctx.args = (deg, scale, chunk, final_state, ns, nc)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        Q, K, V, logG, S0, Z0, *saved = ctx.saved_tensors
        deg, scale, chunk, final_state, ns, nc = ctx.args
        g = dict(zip(ctx.names, grads))
        dY = g["Y"] if g.get("Y") is not None else torch.zeros_like(saved[ctx.names.index("Y")])
        dS = dZ = None
        if final_state:
            dS, dZ = g.get("Sfinal"), g.get("Zfinal")
            dS = torch.zeros_like(saved[ctx.names.index("Sfinal")]) if dS is None else dS.float().contiguous()
            dZ = torch.zeros_like(saved[ctx.names.index("Zfinal")]) if dZ is None else dZ.float().contiguous()
        out = _varlen_backward_impl(Q, K, V, logG, S0, Z0, ctx.tables, saved, dY.contiguous(), dS, dZ, deg, scale, chunk, final_state, ns, nc)
        r = dict(zip([n for n, _, _ in _varlen_names("backward_varlen", _spec_of(Q, V, deg, chunk), Q.shape[1], Q.shape[2], K.shape[2], ns, nc,
                                                       logG is not None, S0 is not None, final_state)], out))
        return (r["dQ"], r["dK"], r["dV"], r["dlogG"] if logG is not None else None,
                r.get("dS0") if S0 is not None else None, r.get("dZ0") if S0 is not None else None) + (None,) * 7


def _check_cu_seqlens(cu_seqlens, Q) -> list:
    """cu_seqlens (int32 [ns + 1], on Q's device or the CPU) as a list of offsets, checked as
    dsl/plan-varlen.ts checkCuSeqlens does; errors name the argument, the expected and the received."""
    if _is_compiling():
        raise NotImplementedError("cu_seqlens: power_retention over packed sequences runs eagerly only (the aligned layout's size "
                                  "depends on the offsets' values, which torch.compile does not know when it traces); call it outside "
                                  "the compiled region")
    b, t = Q.shape[0], Q.shape[1]
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens: expected a torch.Tensor of int32 offsets [ns + 1], received {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"cu_seqlens: expected dtype torch.int32, received {cu_seqlens.dtype}")
    if cu_seqlens.device != Q.device and cu_seqlens.device.type != "cpu":
        raise ValueError(f"cu_seqlens: expected a tensor on {Q.device} (Q's device) or the CPU, received one on {cu_seqlens.device}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens: expected a 1-D tensor of at least 2 offsets (one sequence: [0, t]), received shape {tuple(cu_seqlens.shape)}")
    if b != 1:
        raise ValueError(f"Q: expected b = 1 with cu_seqlens (the sequences packed along t: [1, total, hq, d]), received b = {b}")
    cu = cu_seqlens.tolist()  # the layout is computed on the host: one copy (a sync when on the GPU)
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens[0]: expected 0 (the first sequence starts the packed tensor), received {cu[0]}")
    for i in range(1, len(cu)):
        if cu[i] < cu[i - 1]:
            raise ValueError(f"cu_seqlens[{i}]: expected offsets that do not decrease, received {cu[i]} after {cu[i - 1]}")
    if cu[-1] != t:
        raise ValueError(f"cu_seqlens[{len(cu) - 1}]: expected the packed length {t} (the t of Q, K, V), received {cu[-1]}")
    return cu


def _varlen(Q, K, V, log_G, S0, Z0, cu: list, deg, scale, chunk_size, final):
    """power_retention's packed path (cu: the checked offsets): Y [1, t, hq, e] and, when `final`,
    the states per sequence."""
    d, e, dtype = Q.shape[3], V.shape[3], _DTYPES[Q.dtype]
    # packed sequences take the chunked form (each starts a chunk of the aligned layout)
    chunk = chunk_size if chunk_size is not None else _auto_chunk(deg, d, e, dtype, Q.shape[1], S0 is not None, True, _device_name(Q.device))
    lay = _manifest.varlen_layout(cu, chunk)
    tables = {n: torch.tensor(lay[n], dtype=torch.int32, device=Q.device) for n in _VARLEN_TABLES}
    out = _Varlen.apply(Q, K, V, log_G, S0, Z0, tables, deg, scale, chunk, final, lay["ns"], lay["nc"])
    names = [n for n, _, _ in _varlen_names("forward_varlen", _spec_of(Q, V, deg, chunk), Q.shape[1], Q.shape[2], K.shape[2], lay["ns"],
                                             lay["nc"], log_G is not None, S0 is not None, final)]
    r = dict(zip(names, out))
    return (r["Y"], (r["Sfinal"], r["Zfinal"])) if final else r["Y"]


# ---- the user-facing function ---------------------------------------------------------------------


def _check(name: str, x, shape_desc: str, ndim: int):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {shape_desc}, received {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims {shape_desc}, received shape {tuple(x.shape)}")


def _prepare(Q, K, V, log_G, deg, scale, chunk_size):
    """Validate and normalise the arguments shared by power_retention and its inference twin."""
    _check("Q", Q, "[b, t, hq, d]", 4)
    _check("K", K, "[b, t, h, d]", 4)
    _check("V", V, "[b, t, h, e]", 4)
    b, t, hq, d = Q.shape
    if Q.dtype not in _DTYPES:
        raise TypeError(f"Q: expected dtype float16, bfloat16 or float32, received {Q.dtype}")
    for name, x in (("K", K), ("V", V)):
        if x.dtype != Q.dtype:
            raise TypeError(f"{name}: expected dtype {Q.dtype} (Q's), received {x.dtype}")
        if x.device != Q.device:
            raise ValueError(f"{name}: expected device {Q.device} (Q's), received {x.device}")
    if Q.device.type != "cuda":
        raise ValueError(f"Q: expected a CUDA tensor, received one on {Q.device}")
    h = K.shape[2]
    if K.shape[0] != b or K.shape[1] != t or K.shape[3] != d:
        raise ValueError(f"K: expected shape [{b}, {t}, h, {d}] (Q's b, t, d), received {tuple(K.shape)}")
    if h < 1 or hq % h != 0:
        raise ValueError(f"K: expected a head count h that divides Q's hq = {hq}, received h = {h}")
    if V.shape[0] != b or V.shape[1] != t or V.shape[2] != h:
        raise ValueError(f"V: expected shape [{b}, {t}, {h}, e] (K's b, t, h), received {tuple(V.shape)}")
    if not isinstance(deg, int) or deg < 2 or deg % 2:
        raise ValueError(f"deg: expected a positive even integer, received {deg!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number or None (1/sqrt(d)), received {scale!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size: expected None or a power of two >= 16, received {chunk_size!r}")
    if log_G is not None:
        _check("log_G", log_G, "[b, t, h]", 3)
        if tuple(log_G.shape) != (b, t, h):
            raise ValueError(f"log_G: expected shape [{b}, {t}, {h}] (Q's b, t and K's h), received {tuple(log_G.shape)}")
        log_G = log_G.float().contiguous()  # the kernels read float32 gates
    # non-contiguous inputs are copied (the kernels read dense [b, t, h, d] rows)
    return Q.contiguous(), K.contiguous(), V.contiguous(), log_G, float(scale)


def state_features(d: int, deg: int) -> int:
    """D, the length of the symmetric power embedding of a d-vector: binomial(d + deg - 1, deg)."""
    return math.comb(d + deg - 1, deg)


def power_retention(Q, K, V, log_G=None, initial_state=None, return_final_state=False, deg=2, scale=None, chunk_size=None,
                    switch_over_seq_len=None, cu_seqlens=None):
    """Power retention (SPEC.md) of Q [b,t,hq,d], K [b,t,h,d], V [b,t,h,e], optional log_G [b,t,h].

    initial_state: None or a pair (S [b,h,D,e], Z [b,h,D]) in float32, the state before the first
    token. return_final_state: also return the state after the last token, as such a pair.
    chunk_size: the chunk of the chunked algorithm (a built spec's, or >= t: the quadratic form; the
    result does not depend on it); None chooses per problem (dsl/algorithm.ts): the quadratic form while a
    table measured on this GPU (or the default rule) says it is cheaper, else a built chunk.
    switch_over_seq_len is accepted for compatibility and has no effect (the plans choose).
    cu_seqlens: packed variable-length sequences (flash-attention's varlen convention): Q, K, V,
    log_G hold ns sequences back to back along t (b = 1), sequence s on rows cu_seqlens[s] up to
    cu_seqlens[s + 1] (int32 [ns + 1] from 0 to t, not decreasing; an empty sequence is allowed); no
    token attends across a boundary. initial_state and the final state then hold one state per
    sequence ([ns, h, D, e], [ns, h, D]). Eager only (not under torch.compile); the offsets are read
    on the host.
    Differentiable in Q, K, V, log_G and the initial state. Returns Y [b,t,hq,e] (and the state).
    """
    Q, K, V, log_G, scale = _prepare(Q, K, V, log_G, deg, scale, chunk_size)
    b, t, hq, d = Q.shape
    h, e = K.shape[2], V.shape[3]
    cu = _check_cu_seqlens(cu_seqlens, Q) if cu_seqlens is not None else None
    if cu is not None:
        b = len(cu) - 1  # the states: one per sequence
    S0 = Z0 = None
    if initial_state is not None:
        D = state_features(d, deg)
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise TypeError(f"initial_state: expected None or a pair (S [b,h,D,e], Z [b,h,D]), received {type(initial_state).__name__}")
        S0, Z0 = initial_state
        _check("initial_state[0]", S0, f"[{b}, {h}, {D}, {e}]", 4)
        _check("initial_state[1]", Z0, f"[{b}, {h}, {D}]", 3)
        if tuple(S0.shape) != (b, h, D, e):
            raise ValueError(f"initial_state[0]: expected shape [{b}, {h}, {D}, {e}] (D = binomial(d + deg - 1, deg)), received {tuple(S0.shape)}")
        if tuple(Z0.shape) != (b, h, D):
            raise ValueError(f"initial_state[1]: expected shape [{b}, {h}, {D}], received {tuple(Z0.shape)}")
        S0, Z0 = S0.float().contiguous(), Z0.float().contiguous()
    if cu is not None:
        return _varlen(Q, K, V, log_G, S0, Z0, cu, deg, scale, chunk_size, bool(return_final_state))
    dtype = _DTYPES[Q.dtype]
    final = bool(return_final_state)
    chunk = chunk_size
    if chunk is None:  # the algorithm per problem (dsl/algorithm.ts): the quadratic form while it is cheaper
        chunk = _auto_chunk(deg, d, e, dtype, t, S0 is not None, final, _device_name(Q.device))
    out = _forward(Q, K, V, log_G, S0, Z0, deg, scale, chunk, final)
    names = _output_names("forward", deg, d, e, chunk, dtype, log_G is not None, S0 is not None, final,
                          bool((t + chunk - 1) // chunk == 1))
    r = dict(zip(names, out))
    if final:
        return r["Y"], (r["Sfinal"], r["Zfinal"])
    return r["Y"]


def power_retention_inference(Q, K, V, log_G=None, initial_state=None, sum_of_keys=None, deg=2, scale=None,
                              switch_over_seq_len=512):
    """Decoding: the output for new queries given the state and the keys since the state was last updated.

    Q [b, tq, hq, d]: the new queries, the last tq positions of K and V.
    K [b, tk, h, d], V [b, tk, h, e], log_G [b, tk, h]: every token since the state was last
    updated (the new ones included), at most switch_over_seq_len of them.
    initial_state S [b, h, D, e] and sum_of_keys Z [b, h, D] (float32; None: zeros): the state of
    every token before K's first (e.g. power_retention's final state, or this function's).
    switch_over_seq_len: the capacity of the key cache, a built chunk size. When tk reaches it,
    the cache is folded into the state: the returned state and sum_of_keys then cover K too and the
    caller starts an empty cache; otherwise they are the ones passed in.

    K, V and log_G all None: the new queries against the state alone (initial_state required), as
    after a prefill that folded its whole cache; the state comes back as it was passed.

    Returns (Y [b, tq, hq, e], state, sum_of_keys). Y equals power_retention on the whole sequence.
    """
    _check("Q", Q, "[b, tq, hq, d]", 4)
    if K is None or V is None:
        return _query_state_alone(Q, K, V, log_G, initial_state, sum_of_keys, deg, scale, switch_over_seq_len)
    _check("K", K, "[b, tk, h, d]", 4)
    b, tq, hq, d = Q.shape
    tk = K.shape[1]
    if tq > tk:
        raise ValueError(f"Q: expected at most K's tk = {tk} tokens (the new queries are K's last ones), received tq = {tq}")
    c = switch_over_seq_len
    if not isinstance(c, int) or c < 16 or c & (c - 1):
        raise ValueError(f"switch_over_seq_len: expected a power of two >= 16 (a built chunk size), received {c!r}")
    if tk > c:
        raise ValueError(f"K: expected at most switch_over_seq_len = {c} tokens since the state was last updated, received tk = {tk}")
    # checks of Q, K, V and log_G as for the forward, on the new tokens' rows
    Qn, Kn, Vn, Gn, scale = _prepare(Q, K[:, tk - tq:], V[:, tk - tq:], None if log_G is None else log_G[:, tk - tq:], deg, scale, c)
    h, e = K.shape[2], V.shape[3]
    D = state_features(d, deg)
    dev = Q.device
    S = torch.zeros(b, h, D, e, device=dev) if initial_state is None else initial_state.float().contiguous().clone()
    Z = torch.zeros(b, h, D, device=dev) if sum_of_keys is None else sum_of_keys.float().contiguous().clone()
    if tuple(S.shape) != (b, h, D, e):
        raise ValueError(f"initial_state: expected shape [{b}, {h}, {D}, {e}] (D = binomial(d + deg - 1, deg)), received {tuple(S.shape)}")
    if tuple(Z.shape) != (b, h, D):
        raise ValueError(f"sum_of_keys: expected shape [{b}, {h}, {D}], received {tuple(Z.shape)}")
    len0 = tk - tq
    # the cache of the decode plan: [b, c, h, .] float32 (values of the dtype), the first len0 rows in use
    Kc = torch.zeros(b, c, h, d, device=dev)
    Vc = torch.zeros(b, c, h, e, device=dev)
    Gc = torch.zeros(b, c, h, device=dev)
    Kc[:, :len0] = K[:, :len0].float()
    Vc[:, :len0] = V[:, :len0].float()
    if log_G is not None:
        Gc[:, :len0] = log_G[:, :len0].float()
    spec = _spec_of(Qn, Vn, deg, c)
    with torch.no_grad():
        plan = _plan("decode", spec, b, tq, hq, h, scale, Gn is not None, len0=len0)
        out = _run(plan, dev, {"Q": Qn, "K": Kn, "V": Vn, "logG": Gn, "S": S, "Z": Z, "Kc": Kc, "Vc": Vc, "Gc": Gc})
    if len0 + tq == c:  # folded: S, Z (updated in place) now cover the cache
        return out["Y"], S, Z
    return out["Y"], initial_state if initial_state is not None else S, sum_of_keys if sum_of_keys is not None else Z


def _query_state_alone(Q, K, V, log_G, initial_state, sum_of_keys, deg, scale, c):
    """power_retention_inference with no new keys: the queries run as new tokens whose keys and values
    are 0 (a zero key scores 0, which is no weight: SPEC.md's log|0| = -inf) and whose gates are 1,
    so each output is the state's part alone; the state is returned unchanged."""
    if K is not None or V is not None:
        given, missing = ("K", "V") if K is not None else ("V", "K")
        raise ValueError(f"{missing}: expected a tensor when {given} is given (both None: the queries against the state alone), received None")
    if log_G is not None:
        raise ValueError("log_G: expected None when K and V are None (no new tokens to gate), received a tensor")
    if initial_state is None:
        raise ValueError("initial_state: expected the state [b, h, D, e] when K and V are None (the queries against the state alone), "
                         "received None")
    _check("initial_state", initial_state, "[b, h, D, e]", 4)
    b, tq, _, d = Q.shape
    if not isinstance(c, int) or tq > c:
        raise ValueError(f"Q: expected at most switch_over_seq_len = {c!r} queries when K and V are None, received tq = {tq}")
    h, e = initial_state.shape[1], initial_state.shape[3]
    K0, V0 = Q.new_zeros(b, tq, h, d), Q.new_zeros(b, tq, h, e)
    Y, _, _ = power_retention_inference(Q, K0, V0, None, initial_state, sum_of_keys, deg, scale, c)
    return Y, initial_state, sum_of_keys if sum_of_keys is not None else torch.zeros(b, h, initial_state.shape[2], device=Q.device)
