"""examples/train: the corpus (determinism, the file list, the train/val split, the cache) without
torch; every example file compiles; with torch, the model's loss at init and both decoding caches
against the whole-sequence forward (the retention cache on a GPU with the kernels built)."""

import importlib.util
import math
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
EXAMPLE = os.path.join(REPO, "examples", "train")
sys.path.insert(0, os.path.join(HERE, ".."))  # prt


def load_data_module():
    spec = importlib.util.spec_from_file_location("train_example_data", os.path.join(EXAMPLE, "data.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


try:
    import torch
except ImportError:
    torch = None
TORCH_REASON = "torch is not installed" if torch is None else None
if TORCH_REASON:
    print(f"test_train_example: torch parts skipped: {TORCH_REASON}", file=sys.stderr)


def write(root, rel, content: bytes):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


class CorpusTest(unittest.TestCase):
    def setUp(self):
        self.data = load_data_module()
        self.tmp = tempfile.mkdtemp(prefix="prt-train-example-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.root = os.path.join(self.tmp, "lib")

    def test_lists_sorted_py_sources_without_third_party(self):
        for rel in ("b.py", "a/y.py", "a/x.py", "site-packages/torch/z.py", "dist-packages/q.py", "__pycache__/c.py",
                    "notes.txt", "a/.hidden/h.py", "a/sub/w.py"):
            write(self.root, rel, rel.encode())
        self.assertEqual(self.data.list_sources(self.root), ["a/sub/w.py", "a/x.py", "a/y.py", "b.py"])

    def test_corpus_is_deterministic_and_split_at_a_file_boundary(self):
        # 20 files of 100 bytes, written in an order unlike the sorted one
        for i in reversed(range(20)):
            write(self.root, f"m{i:02d}.py", bytes([65 + i]) * 100)
        data1, split1, files1, starts1 = self.data.build_corpus(self.root)
        data2, split2, files2, starts2 = self.data.build_corpus(self.root)
        self.assertEqual((data1, split1, files1, starts1), (data2, split2, files2, starts2))
        self.assertEqual(starts1, list(range(0, 2000, 100)))
        self.assertEqual(files1, [f"m{i:02d}.py" for i in range(20)])
        self.assertEqual(data1, b"".join(bytes([65 + i]) * 100 for i in range(20)))
        self.assertEqual(split1, 1900)  # 95% of the bytes, the first 19 files; validation the last one
        self.assertEqual(set(data1[split1:]), {65 + 19})

    def test_segments_cut_a_window_at_the_files_it_spans(self):
        seg = self.data.segments
        starts = [0, 100, 130, 400]
        self.assertEqual(seg(0, 64, starts), [64])  # inside the first file
        self.assertEqual(seg(90, 64, starts), [10, 30, 24])  # files 2 and 3 start at 100 and 130
        self.assertEqual(seg(100, 30, starts), [30])  # starts with file 2, ends where file 3 starts
        self.assertEqual(seg(99, 2, starts), [1, 1])
        self.assertEqual(sum(seg(350, 100, starts)), 100)

    def test_split_point_edge_cases(self):
        sp = self.data.split_point
        self.assertEqual(sp([10, 10]), 10)  # validation never empty with two files
        self.assertEqual(sp([1000, 1, 1]), 1000)
        self.assertEqual(sp([50]), 50)  # one file: all of it is training
        self.assertEqual(sp([1] * 100), 95)

    def test_cache_is_raw_bytes_and_rebuilt_when_damaged(self):
        for i in range(5):
            write(self.root, f"p{i}.py", f"print({i})\n".encode() * (i + 1))
        cache = os.path.join(self.tmp, "cache")
        data, split, meta = self.data.load_corpus(cache, self.root)
        bins = [f for f in os.listdir(cache) if f.endswith(".bin")]
        self.assertEqual(len(bins), 1)
        with open(os.path.join(cache, bins[0]), "rb") as f:
            self.assertEqual(f.read(), data)  # the cache is the uint8 bytes themselves
        self.assertEqual((meta["files"], meta["bytes"], meta["split"]), (5, len(data), split))
        self.assertEqual(meta["file_starts"], [0, 9, 27, 54, 90])  # "print(i)\n" is 9 bytes, file i holds i + 1 of them
        self.assertEqual(self.data.load_corpus(cache, self.root)[:2], (data, split))
        with open(os.path.join(cache, bins[0]), "wb") as f:
            f.write(b"damaged")
        self.assertEqual(self.data.load_corpus(cache, self.root)[:2], (data, split))

    def test_imports_neither_torch_nor_numpy(self):
        code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('d', sys.argv[1]); "
                "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); m.list_sources(m.stdlib_root()); "
                "print(sorted({'torch', 'numpy'} & set(sys.modules)))")
        out = subprocess.run([sys.executable, "-c", code, os.path.join(EXAMPLE, "data.py")], capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "[]")

    def test_stdlib_has_sources(self):
        files = self.data.list_sources(self.data.stdlib_root())
        self.assertGreater(len(files), 100)
        self.assertFalse(any(f.startswith("site-packages/") for f in files))


class CompileTest(unittest.TestCase):
    def test_every_example_file_compiles(self):
        tmp = tempfile.mkdtemp(prefix="prt-train-pyc-")
        self.addCleanup(shutil.rmtree, tmp, True)
        names = sorted(f for f in os.listdir(EXAMPLE) if f.endswith(".py"))
        self.assertEqual(names, ["data.py", "generate.py", "model.py", "plot.py", "train.py"])
        for name in names:
            py_compile.compile(os.path.join(EXAMPLE, name), cfile=os.path.join(tmp, name + "c"), doraise=True)

    def test_run_device_script_parses(self):
        if shutil.which("bash") is None:
            self.skipTest("bash is not on PATH")
        subprocess.run(["bash", "-n", os.path.join(EXAMPLE, "run-device.sh")], check=True)


@unittest.skipIf(TORCH_REASON is not None, TORCH_REASON or "")
class ModelTest(unittest.TestCase):
    def setUp(self):
        sys.path.insert(0, EXAMPLE)
        self.addCleanup(sys.path.remove, EXAMPLE)
        import generate
        import model

        self.model, self.generate = model, generate
        torch.manual_seed(0)

    def test_loss_at_init_is_uniform_and_kv_cache_matches_forward(self):
        cfg = self.model.GPTConfig(n_layer=2, n_head=2, n_embd=64, attn="sdpa")
        m = self.model.GPT(cfg).eval()
        x = torch.randint(0, 256, (2, 40))
        # targets independent of the inputs: with tied embeddings a token's own logit starts high
        # (LN(e_x) . e_x > 0), so targets = inputs would not see a uniform loss
        y = torch.randint(0, 256, (2, 40))
        logits, loss = m(x, y)
        self.assertEqual(tuple(logits.shape), (2, 40, 256))
        self.assertLess(abs(loss.item() - math.log(256)), 0.05)
        seq = torch.randint(0, 256, (1, 60))
        r = self.generate.check_decoding(m, seq, 7, 128)
        self.assertEqual(r["tokens"], 53)
        self.assertLess(r["max_abs_logit_diff"], 1e-4 * max(1.0, r["logit_scale"]))

    def test_batches_are_shifted_windows(self):
        data = load_data_module()
        b = data.Batches(bytes(range(256)) * 4, 900, "cpu")
        x, y = b.get("train", 3, 16, torch.Generator().manual_seed(0))
        self.assertEqual(tuple(x.shape), (3, 16))
        self.assertTrue(torch.equal(x[:, 1:], y[:, :-1]))
        self.assertTrue(torch.equal((x + 1) % 256, y))  # bytes 0..255 repeated: the next byte is x + 1

    def docs_batches(self, device="cpu"):
        """A corpus of 12 files of 37..170 bytes (so a window of 64 spans several), and its Batches."""
        data = load_data_module()
        files = [bytes((7 * i + j) % 256 for j in range(37 + 12 * i)) for i in range(12)]
        starts = [sum(len(f) for f in files[:i]) for i in range(len(files))]
        blob = b"".join(files)
        return data.Batches(blob, len(blob) - len(files[-1]), device, starts), starts

    def test_docs_batches_pack_and_pad_the_same_targets(self):
        b, starts = self.docs_batches()
        x0, y0 = b.get("train", 5, 64, torch.Generator().manual_seed(3))
        xp, yp, cu, pos = b.get_docs("train", 5, 64, torch.Generator().manual_seed(3), "packed")
        xd, yd, none, posd = b.get_docs("train", 5, 64, torch.Generator().manual_seed(3), "padded")
        self.assertIsNone(none)
        # the same windows as get(), cut where files start
        self.assertTrue(torch.equal(xp, x0.reshape(1, -1)) and torch.equal(yp, y0.reshape(1, -1)))
        self.assertEqual(cu.dtype, torch.int32)
        cu = cu.tolist()
        self.assertEqual((cu[0], cu[-1]), (0, 5 * 64))
        self.assertGreater(len(cu) - 1, 5)  # windows of 64 over files of 37..170 bytes span several
        self.assertEqual(len(cu) - 1, xd.shape[0])
        for i in range(len(cu) - 1):
            a, n = cu[i], cu[i + 1] - cu[i]
            self.assertTrue(torch.equal(xd[i, :n], xp[0, a:a + n]) and torch.equal(yd[i, :n], yp[0, a:a + n]), f"piece {i}")
            self.assertTrue(bool((yd[i, n:] == -1).all()), f"piece {i}: padding is ignored")
            self.assertTrue(torch.equal(pos[0, a:a + n], torch.arange(n)) and torch.equal(posd[i, :n], torch.arange(n)))
        # the cuts are where files start inside each window (the same draws as get's)
        data = load_data_module()
        w0 = torch.randint(0, len(b.splits["train"]) - 64, (5,), generator=torch.Generator().manual_seed(3)).tolist()
        want = [0]
        for r, w in enumerate(w0):
            for n in data.segments(w, 64, starts):
                want.append(want[-1] + n)
        self.assertEqual(cu, want)

    def test_padded_documents_equal_separate_calls(self):
        # SDPA on the CPU: each padded row's pieces see only themselves, at positions from 0, and the
        # padding adds nothing to the loss
        cfg = self.model.GPTConfig(n_layer=2, n_head=2, n_embd=64, attn="sdpa")
        m = self.model.GPT(cfg).eval()
        b, _ = self.docs_batches()
        x, y, _, pos = b.get_docs("train", 3, 64, torch.Generator().manual_seed(5), "padded")
        logits, loss = m(x, y, docs=(None, pos))
        total, count = 0.0, 0
        for i in range(x.shape[0]):
            n = int((y[i] >= 0).sum())
            li, _ = m(x[i:i + 1, :n])
            self.assertLess((li[0] - logits[i, :n]).abs().max().item(), 1e-4, f"row {i}")
            total += torch.nn.functional.cross_entropy(li[0], y[i, :n], reduction="sum").item()
            count += n
        self.assertAlmostEqual(loss.item(), total / count, places=4)
        with self.assertRaisesRegex(ValueError, "packed documents .* need attn='retention'"):
            m(x[:1], y[:1], docs=(torch.tensor([0, 64], dtype=torch.int32), pos[:1]))

    def test_retention_packed_documents_match_padded_rows(self):
        if not torch.cuda.is_available():
            self.skipTest("torch sees no CUDA device")
        cfg = self.model.GPTConfig(n_layer=2, n_head=2, n_embd=128, attn="retention")
        m = self.model.GPT(cfg).cuda()
        b, _ = self.docs_batches("cuda")
        losses = {}
        for mode in ("packed", "padded"):
            x, y, cu, pos = b.get_docs("train", 4, 64, torch.Generator().manual_seed(9), mode)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                losses[mode] = m(x, y, docs=(cu, pos))[1].item()
        self.assertLess(abs(losses["packed"] - losses["padded"]), 1e-3 * losses["padded"], losses)

    def test_retention_cache_matches_the_forward(self):
        if not torch.cuda.is_available():
            self.skipTest("torch sees no CUDA device")
        import prt

        b, t, h, d, c = 1, 300, 2, 32, 128
        g = torch.Generator(device="cuda").manual_seed(1)
        Q, K, V = (torch.randn(b, t, h, d, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
        G = torch.nn.functional.logsigmoid(torch.randn(b, t, h, device="cuda", generator=g) + 3)
        want = prt.power_retention(Q, K, V, log_G=G, chunk_size=c).double()
        cfg = self.model.GPTConfig(n_head=h, n_embd=h * d, attn="retention", chunk_size=c)
        cache = self.generate.RetentionCache(cfg, b, "cuda", c)
        ys = [cache(Q[:, :5], K[:, :5], V[:, :5], G[:, :5])]  # the prompt: power_retention's final state
        ys += [cache(Q[:, i:i + 1], K[:, i:i + 1], V[:, i:i + 1], G[:, i:i + 1]) for i in range(5, 200)]
        ys.append(cache(Q[:, 200:], K[:, 200:], V[:, 200:], G[:, 200:]))  # 100 tokens at once, across a fold
        got = torch.cat(ys, dim=1).double()
        self.assertEqual(cache.folds, 2)  # after tokens 132 and 260 (5 + 128, + 128)
        self.assertLess(((got - want).norm() / want.norm()).item(), 2e-2)
