"""A byte-level corpus that needs no download: the Python standard library's own `.py` sources.

Every machine with Python has them, so the GPU machine (which reaches no network) can train on
real text. The corpus is the sorted list of `.py` files under sysconfig's "stdlib" path (third-party
`site-packages` excluded, so installing torch does not change it), concatenated byte for byte.
The first ~95% of the bytes, cut at a file boundary, are the training split and the rest the
validation split, so no file is in both.

The corpus building is plain Python (no numpy, no torch at import), so it is testable anywhere;
`Batches` imports torch when it is created.

Documents are the source files. A training window (ctx + 1 bytes at a random offset) may span
several; `--docs packed` / `--docs padded` in train.py keep a token from attending across a file
boundary inside its window (`segments`): the window's pieces packed into one row with their offsets
(power_retention's cu_seqlens), or each piece in a row of its own padded to ctx.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}  # not the standard library itself
VAL_FRACTION = 0.05


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def list_sources(root: str) -> list[str]:
    """Sorted '/'-separated paths, relative to root, of every .py file under it (SKIP_DIRS pruned)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        for f in filenames:
            if f.endswith(".py"):
                found.append(f if rel == "." else os.path.join(rel, f).replace(os.sep, "/"))
    return sorted(found)


def split_point(sizes: list[int], val_fraction: float = VAL_FRACTION) -> int:
    """Byte offset of the train/val cut: the end of the first k files, k the smallest with at least
    (1 - val_fraction) of the bytes; at most the end of the next-to-last file, so that validation
    is never empty when there are two files or more."""
    total = sum(sizes)
    end = 0
    for i, s in enumerate(sizes):
        if i == len(sizes) - 1 and i > 0:
            break
        end += s
        if end >= (1.0 - val_fraction) * total:
            break
    return end


def build_corpus(root: str, files: list[str] | None = None) -> tuple[bytes, int, list[str], list[int]]:
    """(the concatenated bytes, the train/val split offset, the file list, each file's first byte)."""
    files = list_sources(root) if files is None else files
    parts = []
    for rel in files:
        with open(os.path.join(root, rel), "rb") as f:
            parts.append(f.read())
    starts, at = [], 0
    for p in parts:
        starts.append(at)
        at += len(p)
    return b"".join(parts), split_point([len(p) for p in parts]), files, starts


def segments(start: int, ctx: int, file_starts: list[int]) -> list[int]:
    """The lengths of the documents' pieces in the window x = data[start : start + ctx] (each file
    that starts inside it cuts it), in order; they add up to ctx. file_starts: sorted offsets."""
    import bisect

    cuts = [s - start for s in file_starts[bisect.bisect_right(file_starts, start):bisect.bisect_left(file_starts, start + ctx)]]
    bounds = [0, *cuts, ctx]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _cache_key(root: str, files: list[str]) -> str:
    """Names the cache file after the file list and sizes, so another Python version gets its own."""
    h = hashlib.sha256(os.path.abspath(root).encode())
    for rel in files:
        h.update(f"\n{rel}\t{os.path.getsize(os.path.join(root, rel))}".encode())
    return h.hexdigest()[:16]


def load_corpus(cache_dir: str, root: str | None = None) -> tuple[bytes, int, dict]:
    """The corpus of root (default: this Python's stdlib), built once and cached in cache_dir as a
    raw uint8 file (`corpus-<key>.bin`, readable with numpy.fromfile(..., dtype=numpy.uint8)) beside
    a JSON description. Returns (bytes, split offset, description)."""
    root = root or stdlib_root()
    files = list_sources(root)
    if not files:
        raise FileNotFoundError(f"no .py files under {root} (the corpus is Python's standard library sources)")
    key = _cache_key(root, files)
    bin_path = os.path.join(cache_dir, f"corpus-{key}.bin")
    meta_path = os.path.join(cache_dir, f"corpus-{key}.json")
    if os.path.exists(bin_path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        with open(bin_path, "rb") as f:
            data = f.read()
        # (a cache from before the file offsets were recorded is rebuilt)
        if len(data) == meta["bytes"] and hashlib.sha256(data).hexdigest() == meta["sha256"] and "file_starts" in meta:
            return data, meta["split"], meta
    data, split, files, starts = build_corpus(root, files)
    meta = {"root": os.path.abspath(root), "files": len(files), "bytes": len(data), "split": split,
            "sha256": hashlib.sha256(data).hexdigest(), "first": files[0], "last": files[-1], "file_starts": starts}
    os.makedirs(cache_dir, exist_ok=True)
    # write-then-rename: several DDP ranks may build at once, each writes a whole file
    for path, blob in ((bin_path, data), (meta_path, json.dumps(meta, indent=1).encode())):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    return data, split, meta


class Batches:
    """Random contiguous windows of ctx + 1 bytes: x = window[:-1], y = window[1:], both [batch, ctx]
    int64 on `device`. Both splits live on the device (tens of MB), so a batch is one gather."""

    def __init__(self, data: bytes, split: int, device, file_starts: list[int] | None = None):
        import torch

        self.torch = torch
        whole = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.splits = {"train": whole[:split].to(device), "val": whole[split:].to(device)}
        # each split's file starts, relative to the split (the split is cut at a file boundary)
        starts = file_starts or []
        self.file_starts = {"train": [s for s in starts if s < split], "val": [s - split for s in starts if s >= split]}
        self.device = device

    def _windows(self, split: str, batch: int, ctx: int, generator):
        torch = self.torch
        d = self.splits[split]
        if len(d) < ctx + 1:
            raise ValueError(f"the {split} split has {len(d)} bytes, fewer than ctx + 1 = {ctx + 1}")
        start = torch.randint(0, len(d) - ctx, (batch,), generator=generator)
        w = d[start.to(self.device)[:, None] + torch.arange(ctx + 1, device=self.device)].long()  # [batch, ctx + 1]
        return start.tolist(), w

    def get(self, split: str, batch: int, ctx: int, generator):
        """generator: a CPU torch.Generator (seeded per rank by the caller)."""
        _, w = self._windows(split, batch, ctx, generator)
        return w[:, :-1], w[:, 1:]

    def get_docs(self, split: str, batch: int, ctx: int, generator, mode: str):
        """The windows of `get` (the same draws), cut at file boundaries (`segments`):
        mode "packed": x, y [1, batch * ctx], every piece a sequence of cu_seqlens (int32), positions
        [1, batch * ctx] counted from each piece's start; mode "padded": one row per piece, x, y
        [pieces, ctx], y = -1 (ignored by the loss) past the piece, positions from 0 per row.
        Returns (x, y, cu_seqlens or None, positions). The loss sees the same targets either way."""
        torch = self.torch
        if not self.file_starts[split]:
            raise ValueError("get_docs: the corpus has no file offsets (Batches(..., file_starts=meta['file_starts']))")
        starts, w = self._windows(split, batch, ctx, generator)
        pieces = [(r, a, n) for r, s in enumerate(starts) for a, n in _offsets(segments(s, ctx, self.file_starts[split]))]
        if mode == "packed":
            x, y = w[:, :-1].reshape(1, -1), w[:, 1:].reshape(1, -1)
            cu = [0]
            pos = torch.empty(batch * ctx, dtype=torch.long)
            for _, a, n in pieces:
                pos[cu[-1]:cu[-1] + n] = torch.arange(n)
                cu.append(cu[-1] + n)
            return x, y, torch.tensor(cu, dtype=torch.int32, device=self.device), pos.to(self.device)[None]
        if mode == "padded":
            x = torch.zeros(len(pieces), ctx, dtype=torch.long, device=self.device)
            y = torch.full((len(pieces), ctx), -1, dtype=torch.long, device=self.device)
            for i, (r, a, n) in enumerate(pieces):
                x[i, :n] = w[r, a:a + n]
                y[i, :n] = w[r, a + 1:a + n + 1]
            return x, y, None, torch.arange(ctx, device=self.device)[None].expand(len(pieces), ctx)
        raise ValueError(f"mode: expected 'packed' or 'padded', received {mode!r}")


def _offsets(lengths: list[int]) -> list[tuple[int, int]]:
    """(start, length) of consecutive pieces of these lengths."""
    out, at = [], 0
    for n in lengths:
        out.append((at, n))
        at += n
    return out
