"""Where the native library, the manifests and the fatbins are.

The kernel search path is the TypeScript runtime's (runtime/search-path.ts), in order, the first
manifest holding a (kernel, spec) winning:

    1. RETENTION_KERNELS   ':'-separated folders (a `gen --out` folder, a folder of them, or a
                           manifest.json): the caller's own;
    2. the current project's build/generated/*/: the project is the nearest folder at or above the
       working directory with a package.json (where `npx retention gen --out build/generated/...`
       run from the project writes), the working directory itself when there is none;
    3. the package's repository: generated/manifest.json (the default set) and build/generated/*/.

Fatbins are looked for beside their manifest (`gen --build-dir <out>`), then in the repository's
build/kernels (gen's default --build-dir). Overrides, for tests and tools:

    PRT_MANIFEST     ':'-separated manifest files: replaces the whole search
    PRT_KERNEL_DIR   the one folder of the fatbins
    PRT_LIB          path of libprt.so           default <repo>/build/native/Release/libprt.so
    PRT_ROOT         the repository               (overrides the recorded one)

The repository is the one the package was installed from (setup.py records it in
_build_config.py) or, used from the source tree, the repository around it.
"""

from __future__ import annotations

import functools
import glob
import os
import threading

KERNELS_ENV = "RETENTION_KERNELS"


def repo_root() -> str:
    env = os.environ.get("PRT_ROOT")
    if env:
        return os.path.abspath(env)
    try:
        from . import _build_config  # written by setup.py at install

        return _build_config.REPO_ROOT
    except ImportError:
        # runtime/python/prt/_paths.py -> the repository three folders up
        return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def library_path() -> str:
    return os.environ.get("PRT_LIB") or os.path.join(repo_root(), "build", "native", "Release", "libprt.so")


def project_root(cwd: str | None = None) -> str:
    """The nearest folder at or above `cwd` with a package.json; `cwd` itself when there is none."""
    start = os.path.abspath(cwd or os.getcwd())
    d = start
    while True:
        if os.path.exists(os.path.join(d, "package.json")):
            return d
        up = os.path.dirname(d)
        if up == d:
            return start
        d = up


def _manifests_at(place: str) -> list[str]:
    """The manifests a place holds: itself (a file), its manifest.json, or its subfolders'."""
    if not os.path.isdir(place):
        return [place] if os.path.exists(place) else []
    own = os.path.join(place, "manifest.json")
    if os.path.exists(own):
        return [own]
    return [f for f in (os.path.join(place, d, "manifest.json") for d in sorted(os.listdir(place))) if os.path.exists(f)]


def search_places() -> list[tuple[str, str]]:
    """(place, why) in search order, each folder once; PRT_MANIFEST's files when it is set."""
    exact = os.environ.get("PRT_MANIFEST")
    if exact:
        return [(os.path.abspath(p), "PRT_MANIFEST") for p in exact.split(":") if p]
    root = repo_root()
    places = [(os.path.abspath(p), KERNELS_ENV) for p in os.environ.get(KERNELS_ENV, "").split(":") if p]
    places += [
        (os.path.join(project_root(), "build", "generated"), "project"),
        (os.path.join(root, "generated", "manifest.json"), "package"),
        (os.path.join(root, "build", "generated"), "package"),
    ]
    seen: set[str] = set()
    out = []
    for p, why in places:
        if p not in seen:
            seen.add(p)
            out.append((p, why))
    return out


def manifest_paths() -> list[str]:
    """Every manifest file on the search path that exists, in search order, each once."""
    exact = os.environ.get("PRT_MANIFEST")
    if exact:
        return [os.path.abspath(p) for p in exact.split(":") if p]
    out: list[str] = []
    for place, _ in search_places():
        for m in _manifests_at(place):
            if m not in out:
                out.append(m)
    return out


def describe_search_path() -> str:
    """The search path in words, for errors: each place, why it is searched and what it holds."""
    parts = []
    for place, why in search_places():
        held = _manifests_at(place)
        what = "no manifest" if not held else "found" if held == [place] else ", ".join(os.path.relpath(m, place) for m in held)
        parts.append(f"{place} ({why}: {what})")
    env = "" if os.environ.get("PRT_MANIFEST") else f"; {KERNELS_ENV} {'is set' if os.environ.get(KERNELS_ENV) else 'is unset'}"
    return ", ".join(parts) + env


def kernel_dir() -> str:
    """The fatbin folders for the native runtime: PRT_KERNEL_DIR alone, else each manifest's own
    folder (the empty entry) then the repository's build/kernels."""
    env = os.environ.get("PRT_KERNEL_DIR")
    if env:
        return os.path.abspath(env)
    return ":" + os.path.join(repo_root(), "build", "kernels")


def search_key() -> tuple:
    """What the kernel search path depends on (search_places): its variables and the working
    directory (the project is found from it)."""
    return (os.environ.get("PRT_MANIFEST"), os.environ.get(KERNELS_ENV), os.environ.get("PRT_ROOT"), os.getcwd())


_memo: dict = {}
_memo_lock = threading.Lock()


def per_search_path(fn):
    """Memoise fn's result per arguments (hashable) and search path (search_key). prt.ops reads the
    manifests through such functions on the first call of a problem shape only: walking the search
    path and stat-ing its manifests took about 0.1 ms, several times per call (0.6 ms of a 1.0 ms
    forward at b = 16, t = 1024 on the H100, 2026-12-07). A manifest rewritten while the process
    runs is seen by new shapes and after a change of the search path, as the native plans (cached
    per shape) are."""

    @functools.wraps(fn)
    def memoised(*args):
        key = (fn.__qualname__, args, search_key())
        hit = _memo.get(key, _memo)
        if hit is _memo:
            hit = fn(*args)
            with _memo_lock:
                if len(_memo) > 4096:
                    _memo.clear()
                _memo[key] = hit
        return hit

    return memoised
