"""Train the byte-level GPT of model.py on the Python standard library's sources (data.py).

One GPU:   PYTHONPATH=runtime/python python3 examples/train/train.py --attn retention --out runs/r1024
DDP:       PYTHONPATH=runtime/python torchrun --standalone --nproc_per_node=N examples/train/train.py ...

--batch is per GPU. Rank 0 prints a progress line every --log-every steps, appends one JSON line
per evaluation to OUT/log.jsonl ({step, wall_s, train_loss, val_loss, tokens_per_s, peak_mem_gb})
and saves OUT/ckpt.pt (model, optimizer, step, rng) after every evaluation and at the end.
wall_s is training time only (evaluation and saving excluded), accumulated across --resume.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data import Batches, load_corpus  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attn", choices=["retention", "sdpa"], default="retention")
    p.add_argument("--ctx", type=int, default=1024, help="context length (bytes per sequence)")
    p.add_argument("--batch", type=int, default=16, help="sequences per step per GPU")
    p.add_argument("--steps", type=int, default=2000, help="at most this many optimizer steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this much training wall time")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--out", required=True, help="folder for log.jsonl and ckpt.pt")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument("--cache", default=None, help="corpus cache folder (default OUT/../corpus-cache)")
    p.add_argument("--n-layer", type=int, default=10)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--n-embd", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--docs", choices=["window", "packed", "padded"], default="window",
                   help="window: a window attends across the files it spans; packed: its files are packed sequences "
                        "(power_retention's cu_seqlens, positions from each file's start); padded: each file's piece a "
                        "row of its own, padded to ctx (the same loss as packed, up to rounding)")
    args = p.parse_args(argv)
    if args.docs == "packed" and args.attn != "retention":
        p.error("--docs packed needs --attn retention (SDPA takes padded rows: --docs padded)")
    return args


def batch_of(batches, split: str, args, generator):
    """(x, y, docs) for the model: docs None for --docs window, else (cu_seqlens or None, positions)."""
    if args.docs == "window":
        x, y = batches.get(split, args.batch, args.ctx, generator)
        return x, y, None
    x, y, cu, positions = batches.get_docs(split, args.batch, args.ctx, generator, args.docs)
    return x, y, (cu, positions)


def lr_at(args, step: int, progress: float) -> float:
    """Linear warmup over --warmup steps, times a cosine from lr to lr * min-lr-ratio over progress in
    [0, 1] (the fraction of --steps or of --max-minutes done, whichever is larger)."""
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * warm * (args.min_lr_ratio + (1.0 - args.min_lr_ratio) * cos)


def bar(frac: float, width: int = 24) -> str:
    n = int(round(width * min(1.0, max(0.0, frac))))
    return "[" + "#" * n + "." * (width - n) + f"] {100 * min(1.0, frac):3.0f}%"


def make_optimizer(model, args, device):
    # decay the matrices (and the embedding), not the biases and LayerNorm gains
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


@torch.no_grad()
def evaluate(model, batches, args, rank, world, device, amp):
    """Mean validation loss over --eval-batches batches per rank, the same windows at every
    evaluation (a fixed seed per rank), averaged over ranks."""
    model.eval()
    g = torch.Generator().manual_seed(10_000 + rank)
    total = torch.zeros((), device=device)
    for _ in range(args.eval_batches):
        x, y, docs = batch_of(batches, "val", args, g)
        with amp():
            total += model(x, y, docs=docs)[1]
    total /= args.eval_batches
    if world > 1:
        dist.all_reduce(total)
        total /= world
    model.train()
    return total.item()


def save(path, model, opt, step, wall_s, data_gen, cfg, args):
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "wall_s": wall_s,
             "config": asdict(cfg), "args": vars(args),
             "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(), "data": data_gen.get_state()}}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash while saving leaves the previous checkpoint whole


def main():
    args = parse_args()
    # torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain `python train.py` sets none
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world, local = 0, 1, 0
    if ddp:
        rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
    if not torch.cuda.is_available():
        sys.exit("train.py needs a CUDA GPU (power retention's kernels and bf16 autocast)")
    device = torch.device("cuda", local)
    main_rank = rank == 0
    log = print if main_rank else (lambda *a, **k: None)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    log_path = os.path.join(args.out, "log.jsonl")
    ckpt = None
    if args.resume:
        if not os.path.exists(ckpt_path):
            sys.exit(f"--resume: {ckpt_path} does not exist")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)

    cfg = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, attn=args.attn)
    if ckpt is not None:
        saved = GPTConfig(**ckpt["config"])
        if saved != cfg:
            log(f"--resume: the checkpoint's model config wins over the flags: {saved}")
        cfg = saved
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = GPT(cfg).to(device)  # float32 master weights; bf16 compute under autocast
    opt = make_optimizer(model, args, device)
    step, wall_s = 0, 0.0
    # the batches' random windows: a different stream per rank (no DistributedSampler needed)
    data_gen = torch.Generator().manual_seed(args.seed * 1_000_003 + rank)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])  # moves the moments onto the parameters' device
        step, wall_s = ckpt["step"], ckpt["wall_s"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        if world == 1:
            data_gen.set_state(ckpt["rng"]["data"])  # continues exactly where it stopped
        else:  # only rank 0's stream was saved: every rank starts a fresh one, distinct per step and rank
            data_gen.manual_seed(args.seed * 1_000_003 + rank + 7919 * step)
        log(f"resumed from {ckpt_path} at step {step} ({wall_s:.0f} s of training)")
        del ckpt
    raw = model
    if ddp:
        model = DDP(model, device_ids=[local])

    cache_dir = args.cache or os.path.join(os.path.dirname(os.path.abspath(args.out)), "corpus-cache")
    data, split, meta = load_corpus(cache_dir)
    batches = Batches(data, split, device, meta["file_starts"])
    log(f"corpus: {meta['files']} files, {meta['bytes'] / 1e6:.1f} MB ({split / 1e6:.1f} MB train) from {meta['root']}")
    log(f"model: {raw.num_params() / 1e6:.1f} M parameters, {cfg}")
    log(f"{args.attn}: ctx {args.ctx}, batch {args.batch} x {world} GPU(s) = {args.batch * args.ctx * world} tokens/step")
    if main_rank:
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump({"model": asdict(cfg), "args": vars(args), "world_size": world, "corpus": meta}, f, indent=1)
        if not args.resume and os.path.exists(log_path):
            log(f"note: starting a new run, {log_path} is overwritten")
            os.remove(log_path)

    def amp():
        return torch.autocast("cuda", dtype=torch.bfloat16)

    max_s = None if args.max_minutes is None else 60.0 * args.max_minutes
    tokens_per_step = args.batch * args.ctx * world

    def record(train_loss, tok_s):
        """Evaluate, append a log line, save: rank 0 writes, every rank evaluates."""
        val = evaluate(raw, batches, args, rank, world, device, amp)
        row = {"step": step, "wall_s": round(wall_s, 3), "train_loss": train_loss, "val_loss": val,
               "tokens_per_s": tok_s, "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
               "attn": cfg.attn, "ctx": args.ctx, "batch": args.batch, "world_size": world, "docs": args.docs}
        if main_rank:
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            save(ckpt_path, raw, opt, step, wall_s, data_gen, cfg, args)
        log(f"eval  step {step:6d} | val loss {val:.4f} | train loss {train_loss if train_loss is None else round(train_loss, 4)}"
            f" | {wall_s:.0f} s")

    if step == 0:
        record(None, None)  # the starting point of the curves (loss ~ ln 256 = 5.55)
    model.train()
    t_start = time.time() - wall_s  # wall_s = time.time() - t_start, minus the paused time
    log_loss = torch.zeros((), device=device)
    eval_loss = torch.zeros((), device=device)
    n_log = n_eval = 0
    t_log, w_eval = time.time(), wall_s
    last_eval_step = step
    while step < args.steps:
        # one clock for every rank (rank 0's), so every rank takes the same LR and stops together
        wall_s = time.time() - t_start
        if ddp and max_s is not None:
            w = torch.tensor([wall_s], device=device, dtype=torch.float64)
            dist.broadcast(w, 0)
            wall_s = w.item()
        progress = max(step / args.steps, 0.0 if max_s is None else wall_s / max_s)
        if progress >= 1.0:
            break
        lr = lr_at(args, step, progress)
        for group in opt.param_groups:
            group["lr"] = lr

        x, y, docs = batch_of(batches, "train", args, data_gen)
        with amp():
            _, loss = model(x, y, docs=docs)
        loss.backward()  # DDP all-reduces the gradients here
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        log_loss += loss.detach()
        eval_loss += loss.detach()
        n_log += 1
        n_eval += 1

        if step % args.log_every == 0:
            lossv = log_loss.item() / n_log  # .item() waits for the GPU: the timing below is honest
            now = time.time()
            tok_s = n_log * tokens_per_step / (now - t_log)
            wall_s = now - t_start
            frac = max(step / args.steps, 0.0 if max_s is None else wall_s / max_s)
            log(f"step {step:6d}/{args.steps} {bar(frac)} | loss {lossv:.4f} | lr {lr:.2e} | {tok_s / 1e3:8.1f} k tok/s"
                f" | peak {torch.cuda.max_memory_allocated(device) / 2**30:5.1f} GB | {wall_s / 60:5.1f} min", flush=True)
            log_loss.zero_()
            n_log, t_log = 0, time.time()

        if step % args.eval_every == 0:
            train_loss = eval_loss.item() / n_eval
            wall_s = time.time() - t_start
            tok_s = n_eval * tokens_per_step / max(1e-9, wall_s - w_eval)
            paused = time.time()
            record(round(train_loss, 5), round(tok_s, 1))
            t_start += time.time() - paused  # evaluation and saving do not count as training time
            t_log += time.time() - paused
            eval_loss.zero_()
            n_eval, w_eval, last_eval_step = 0, wall_s, step

    if step != last_eval_step or n_eval:  # the final evaluation and checkpoint
        wall_s = time.time() - t_start
        train_loss = eval_loss.item() / max(1, n_eval) if n_eval else None
        tok_s = n_eval * tokens_per_step / max(1e-9, wall_s - w_eval) if n_eval else None
        record(None if train_loss is None else round(train_loss, 5), None if tok_s is None else round(tok_s, 1))
    log(f"done: {step} steps, {wall_s / 60:.1f} min of training, log {log_path}, checkpoint {ckpt_path}")
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
