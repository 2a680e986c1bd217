"""ctypes over libprt.so (runtime/native/core.h): the retention plans, and the few driver calls the
tests use. Needs no torch and no GPU to import or to create plans; CUDA is touched by running.

Every failing call raises PrtError with the core's message (it names the argument, kernel, spec or
file, and the command that builds a missing spec).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass

from . import _paths

PRT_OK, PRT_ENODRIVER, PRT_ENODEVICE, PRT_ECUDA, PRT_EINVAL, PRT_EIO = range(6)
CODE_NAMES = {1: "PRT_ENODRIVER", 2: "PRT_ENODEVICE", 3: "PRT_ECUDA", 4: "PRT_EINVAL", 5: "PRT_EIO"}
BUF_INPUT, BUF_OUTPUT, BUF_TEMP = 0, 1, 2
RUN_POISON = 1


class PrtError(RuntimeError):
    """A failure reported by the native core; `code` is its PRT_E* name."""

    def __init__(self, message: str, code: str = "PRT_EINVAL"):
        super().__init__(message)
        self.code = code


class _Problem(ctypes.Structure):
    _fields_ = [
        ("b", ctypes.c_int64), ("t", ctypes.c_int64), ("hq", ctypes.c_int64), ("h", ctypes.c_int64),
        ("len0", ctypes.c_int64), ("scale", ctypes.c_double),
        ("gated", ctypes.c_int32), ("initial_state", ctypes.c_int32), ("final_state", ctypes.c_int32),
        ("ns", ctypes.c_int64), ("nc", ctypes.c_int64),  # the varlen kinds: sequences and chunk slots
    ]


class _BufferInfo(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p), ("dtype", ctypes.c_char_p), ("ndim", ctypes.c_int),
        ("shape", ctypes.c_int64 * 8), ("bytes", ctypes.c_size_t), ("role", ctypes.c_int), ("offset", ctypes.c_size_t),
    ]


_lib = None
_lib_lock = threading.Lock()


def _declare(lib: ctypes.CDLL) -> None:
    c = ctypes
    sig = {
        "prt_last_error": (c.c_char_p, []),
        "prt_init": (c.c_int, []),
        "prt_device_count": (c.c_int, [c.POINTER(c.c_int)]),
        "prt_driver_version": (c.c_int, [c.POINTER(c.c_int)]),
        "prt_mem_alloc": (c.c_int, [c.POINTER(c.c_uint64), c.c_size_t]),
        "prt_mem_free": (c.c_int, [c.c_uint64]),
        "prt_memcpy_htod": (c.c_int, [c.c_uint64, c.c_void_p, c.c_size_t]),
        "prt_memcpy_dtoh": (c.c_int, [c.c_void_p, c.c_uint64, c.c_size_t]),
        "prt_synchronize": (c.c_int, []),
        "prt_runtime_open": (c.c_int, [c.POINTER(c.c_void_p), c.c_char_p, c.c_char_p]),
        "prt_runtime_close": (None, [c.c_void_p]),
        "prt_plan_create": (c.c_int, [c.POINTER(c.c_void_p), c.c_void_p, c.c_char_p, c.c_int, c.c_int, c.c_int, c.c_int,
                                      c.c_char_p, c.POINTER(_Problem)]),
        "prt_plan_destroy": (None, [c.c_void_p]),
        "prt_plan_buffer_count": (c.c_int, [c.c_void_p]),
        "prt_plan_buffer": (c.c_int, [c.c_void_p, c.c_int, c.POINTER(_BufferInfo)]),
        "prt_plan_workspace_bytes": (c.c_size_t, [c.c_void_p, c.c_int]),
        "prt_plan_step_count": (c.c_int, [c.c_void_p]),
        "prt_plan_step_describe": (c.c_int, [c.c_void_p, c.c_int, c.c_char_p, c.c_size_t]),
        "prt_plan_prepare": (c.c_int, [c.c_void_p]),
        "prt_plan_run": (c.c_int, [c.c_void_p, c.c_void_p, c.POINTER(c.c_uint64), c.c_int, c.c_uint64, c.c_size_t, c.c_uint]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


def library() -> ctypes.CDLL:
    """libprt.so, loaded once. Raises PrtError naming the path and how to build it when absent."""
    global _lib
    with _lib_lock:
        if _lib is None:
            path = _paths.library_path()
            if not os.path.exists(path):
                raise PrtError(
                    f"the native library {path} does not exist: build it with `npm run build:native` in {_paths.repo_root()} "
                    "(or point PRT_LIB at a built libprt.so)", "PRT_EIO")
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:
                raise PrtError(f"the native library {path} could not be loaded: {e}", "PRT_EIO") from e
            _declare(lib)
            _lib = lib
        return _lib


def check(rc: int) -> None:
    if rc != PRT_OK:
        msg = library().prt_last_error().decode("utf-8", "replace")
        raise PrtError(msg, CODE_NAMES.get(rc, f"code {rc}"))


def device_count() -> int:
    """CUDA devices the driver reports; raises PrtError (PRT_ENODRIVER) where there is no driver."""
    n = ctypes.c_int(0)
    check(library().prt_device_count(ctypes.byref(n)))
    return n.value


def cuda_status() -> tuple[bool, str]:
    """(True, "") when a driver and a device are there, else (False, why)."""
    try:
        n = device_count()
    except PrtError as e:
        return False, str(e)
    return (n > 0, "" if n > 0 else "no CUDA device: the driver reports 0 devices")


@dataclass(frozen=True)
class Buffer:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    bytes: int
    role: int  # BUF_INPUT, BUF_OUTPUT or BUF_TEMP
    offset: int  # in the workspace (temporaries; outputs the caller leaves to it)


class Runtime:
    """Manifests plus the folder of their fatbins (prt_runtime). Opening needs no driver."""

    def __init__(self, manifests: list[str] | None = None, kernel_dir: str | None = None):
        self.manifests = manifests if manifests is not None else [m for m in _paths.manifest_paths() if os.path.exists(m)]
        if not self.manifests:
            raise PrtError(
                f"no kernel manifest found on the kernel search path ({_paths.describe_search_path()}): generate and "
                "compile the default kernels with `npx retention gen --out generated --compile`", "PRT_EIO")
        self.kernel_dir = kernel_dir or _paths.kernel_dir()
        self._lib = library()
        h = ctypes.c_void_p()
        check(self._lib.prt_runtime_open(ctypes.byref(h), ":".join(self.manifests).encode(), self.kernel_dir.encode()))
        self._h = h

    def close(self) -> None:
        if self._h:
            self._lib.prt_runtime_close(self._h)
            self._h = None

    def __del__(self):  # plans keep their runtime alive, so this runs after them
        try:
            self.close()
        except Exception:
            pass

    def plan(self, kind: str, spec: tuple[int, int, int, int, str], b: int, t: int, hq: int, h: int, scale: float,
             gated: bool = False, initial_state: bool = False, final_state: bool = False, len0: int = 0,
             ns: int = 0, nc: int = 0) -> "Plan":
        """kind "forward_varlen"/"backward_varlen" (b = 1, t the packed length) also take ns, the
        sequences, and nc, the chunk slots of their aligned layout (_manifest.varlen_tables)."""
        return Plan(self, kind, spec, _Problem(b, t, hq, h, len0, scale, int(gated), int(initial_state), int(final_state), ns, nc))


class Plan:
    """One plan for one problem (prt_plan): its buffers, workspace size and run."""

    def __init__(self, rt: Runtime, kind: str, spec: tuple[int, int, int, int, str], problem: _Problem):
        self.runtime = rt  # keeps the runtime (and the manifests the plan points into) alive
        self._lib = rt._lib
        deg, d, e, chunk, dtype = spec
        h = ctypes.c_void_p()
        check(self._lib.prt_plan_create(ctypes.byref(h), rt._h, kind.encode(), deg, d, e, chunk, dtype.encode(), ctypes.byref(problem)))
        self._h = h
        self.kind = kind
        self.problem = problem
        info = _BufferInfo()
        self.buffers: list[Buffer] = []
        for i in range(self._lib.prt_plan_buffer_count(h)):
            check(self._lib.prt_plan_buffer(h, i, ctypes.byref(info)))
            self.buffers.append(Buffer(i, info.name.decode(), info.dtype.decode(), tuple(info.shape[: info.ndim]), info.bytes, info.role, info.offset))
        self.by_name = {b.name: b for b in self.buffers}
        self.workspace_bytes = self._lib.prt_plan_workspace_bytes(h, 0)
        self.workspace_bytes_all = self._lib.prt_plan_workspace_bytes(h, 1)
        self._ptrs_type = ctypes.c_uint64 * len(self.buffers)

    def __del__(self):
        if getattr(self, "_h", None):
            self._lib.prt_plan_destroy(self._h)
            self._h = None

    def steps(self) -> list[str]:
        buf = ctypes.create_string_buffer(512)
        out = []
        for i in range(self._lib.prt_plan_step_count(self._h)):
            check(self._lib.prt_plan_step_describe(self._h, i, buf, len(buf)))
            out.append(buf.value.decode())
        return out

    def prepare(self) -> None:
        check(self._lib.prt_plan_prepare(self._h))

    def run(self, stream: int, ptrs: dict[str, int], workspace: int, workspace_bytes: int, poison: bool = False) -> None:
        """Enqueue on `stream` (a CUstream as an int; 0 is the legacy default stream). `ptrs` maps
        buffer names to device pointers: every input, and the outputs the caller keeps."""
        unknown = set(ptrs) - set(self.by_name)
        if unknown:
            # a state (or its gradient) the problem's flags leave out is in no plan: say which flag
            flags = {"S0": "initial_state", "Z0": "initial_state", "dSfinal": "final_state", "dZfinal": "final_state"}
            why = [f"{n}: problem.{flags[n]} is {getattr(self.problem, flags[n])}, so the plan reads none" for n in sorted(unknown) if n in flags]
            raise PrtError(f"ptrs: {', '.join(sorted(unknown))} not a buffer of this plan (it has {', '.join(self.by_name)})"
                           + (f"; {'; '.join(why)}" if why else ""))
        arr = self._ptrs_type(*[ptrs.get(b.name, 0) for b in self.buffers])
        check(self._lib.prt_plan_run(self._h, ctypes.c_void_p(stream or None), arr, len(self.buffers), workspace, workspace_bytes,
                                     RUN_POISON if poison else 0))
