"""Sample bytes from a trained checkpoint, and time one decoding step of both attentions.

    PYTHONPATH=runtime/python python3 examples/train/generate.py --ckpt runs/retention-1024/ckpt.pt \
        --prompt "def main(" --tokens 300 --bench-ctx 1024,8192 --json runs/generate.json

Retention decodes with prt.power_retention_inference and a per-layer cache (RetentionCache), SDPA
with a key/value cache (KVCache). The latency table times both on the same model shape: the
checkpoint's model for its own attention, --other-ckpt (or a randomly initialised model of the
same config) for the other; the time of a step does not depend on the weights.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import GPT, GPTConfig  # noqa: E402


class RetentionCache:
    """One layer's decoding state, as power_retention_inference's contract (prt/ops.py) has it:

    - S [b, h, D, e], Z [b, h, D] (float32): the state of every token before the key cache (None: no
      such token yet; D = binomial(d + 1, 2) at deg 2);
    - the key cache K [b, n, h, d], V [b, n, h, e], G [b, n, h]: every token since the state was
      last updated, n < switch_over (a built chunk size), kept here in preallocated buffers.

    A call appends the new tokens to the cache and passes the whole cache (new tokens last) with
    the new queries. When the cache reaches switch_over tokens, the function folds it into the
    state it returns: then we keep that state and empty the cache; otherwise the state stays ours.
    The prompt goes through power_retention (the chunked forward) instead, whose final state covers
    all of it, so decoding starts with an empty cache."""

    def __init__(self, cfg: GPTConfig, b: int, device, switch_over: int):
        h, d = cfg.n_head, cfg.head_dim
        self.cfg, self.c = cfg, switch_over
        self.K = torch.zeros(b, switch_over, h, d, device=device, dtype=torch.bfloat16)
        self.V = torch.zeros(b, switch_over, h, d, device=device, dtype=torch.bfloat16)
        self.G = torch.zeros(b, switch_over, h, device=device, dtype=torch.float32)
        self.n = 0
        self.S = self.Z = None
        self.folds = 0

    def __call__(self, q, k, v, log_g):
        """q, k, v [b, t, h, d] bf16 (rotated), log_g [b, t, h] float32 -> y [b, t, h, d]."""
        from prt import power_retention, power_retention_inference

        t = q.shape[1]
        if self.S is None and self.n == 0 and t > 1:  # the prompt
            y, (self.S, self.Z) = power_retention(q, k, v, log_G=log_g, deg=self.cfg.deg, chunk_size=self.cfg.chunk_size,
                                                  return_final_state=True)
            return y
        ys, i = [], 0
        while i < t:  # token blocks that never overfill the cache
            m = min(t - i, self.c - self.n)
            n = self.n + m
            self.K[:, self.n:n], self.V[:, self.n:n], self.G[:, self.n:n] = k[:, i:i + m], v[:, i:i + m], log_g[:, i:i + m]
            y, S, Z = power_retention_inference(q[:, i:i + m], self.K[:, :n], self.V[:, :n], self.G[:, :n],
                                                initial_state=self.S, sum_of_keys=self.Z, deg=self.cfg.deg,
                                                switch_over_seq_len=self.c)
            if n == self.c:  # folded: S, Z now cover the cache, which starts over empty
                self.S, self.Z, self.n = S, Z, 0
                self.folds += 1
            else:
                self.n = n
            ys.append(y)
            i += m
        return torch.cat(ys, dim=1)


class KVCache:
    """One layer's keys and values [b, h, max_len, d] for SDPA; a call appends the new tokens."""

    def __init__(self, cfg: GPTConfig, b: int, device, max_len: int):
        self.shape = (b, cfg.n_head, max_len, cfg.head_dim)
        self.device, self.k, self.v, self.n = device, None, None, 0

    def __call__(self, q, k, v, log_g):
        if self.k is None:  # the dtype of the first call's keys (bf16 under autocast)
            self.k = torch.zeros(self.shape, device=self.device, dtype=k.dtype)
            self.v = torch.zeros(self.shape, device=self.device, dtype=v.dtype)
        t, n = q.shape[1], self.n
        if n + t > self.shape[2]:
            raise ValueError(f"KVCache: {n + t} tokens exceed its max_len {self.shape[2]}")
        self.k[:, :, n:n + t] = k.transpose(1, 2)
        self.v[:, :, n:n + t] = v.transpose(1, 2)
        self.n = n + t
        K, V, qt = self.k[:, :, :n + t], self.v[:, :, :n + t], q.transpose(1, 2)
        if n == 0:
            y = F.scaled_dot_product_attention(qt, K, V, is_causal=True)
        elif t == 1:  # one new query sees every cached key
            y = F.scaled_dot_product_attention(qt, K, V)
        else:  # new query i (position n + i) sees keys 0 .. n + i
            mask = torch.arange(n + t, device=q.device)[None, :] <= (n + torch.arange(t, device=q.device))[:, None]
            y = F.scaled_dot_product_attention(qt, K, V, attn_mask=mask)
        return y.transpose(1, 2)


def new_caches(model: GPT, b: int, max_len: int, switch_over: int, device):
    cfg = model.cfg
    if cfg.attn == "retention":
        return [RetentionCache(cfg, b, device, switch_over) for _ in model.blocks]
    return [KVCache(cfg, b, device, max_len) for _ in model.blocks]


def amp(device):
    """bf16 autocast as in training; none on the CPU (the tests' SDPA check runs there in float32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def sample(model, prompt: torch.Tensor, tokens: int, temperature: float, top_k: int, switch_over: int, gen=None):
    """prompt [1, t0] -> [1, t0 + tokens] and the logits of each step [tokens, 256] (the first from the
    prompt's last position). temperature 0: greedy."""
    dev = prompt.device
    caches = new_caches(model, prompt.shape[0], prompt.shape[1] + tokens, switch_over, dev)
    with amp(dev):
        logits = model(prompt, caches=caches)[0][:, -1]
    seq, steps, pos = [prompt], [], prompt.shape[1]
    for _ in range(tokens):
        steps.append(logits)
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            lg = logits / temperature
            if top_k:
                kth = lg.topk(min(top_k, lg.shape[-1]), dim=-1).values[:, -1:]
                lg = lg.masked_fill(lg < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(lg, dim=-1), 1, generator=gen)
        seq.append(nxt)
        with amp(dev):
            logits = model(nxt, pos0=pos, caches=caches)[0][:, -1]
        pos += 1
    return torch.cat(seq, dim=1), torch.cat(steps, dim=0)


@torch.no_grad()
def check_decoding(model, seq: torch.Tensor, prompt_len: int, switch_over: int):
    """Decoding token by token (after a prompt_len prefill) against one forward over seq: the largest
    logit difference and how often both pick the same byte."""
    caches = new_caches(model, 1, seq.shape[1], switch_over, seq.device)
    with amp(seq.device):
        inc = [model(seq[:, :prompt_len], caches=caches)[0][:, -1]]
        for p in range(prompt_len, seq.shape[1] - 1):
            inc.append(model(seq[:, p:p + 1], pos0=p, caches=caches)[0][:, -1])
        full = model(seq[:, :-1])[0][0, prompt_len - 1:]
    inc = torch.cat(inc, dim=0)
    return {"tokens": inc.shape[0], "max_abs_logit_diff": (inc - full).abs().max().item(),
            "logit_scale": full.abs().max().item(), "argmax_agree": (inc.argmax(-1) == full.argmax(-1)).float().mean().item()}


@torch.no_grad()
def time_decoding(model, ctx: int, steps: int, switch_over: int, device):
    """Prefill ctx random bytes, then time `steps` single-token steps (CUDA-synchronised) -> ms each."""
    g = torch.Generator(device="cpu").manual_seed(ctx)
    prompt = torch.randint(0, 256, (1, ctx), generator=g).to(device)
    caches = new_caches(model, 1, ctx + steps, switch_over, device)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with amp(device):
        logits = model(prompt, caches=caches)[0][:, -1]
    torch.cuda.synchronize()
    prefill_ms = 1e3 * (time.perf_counter() - t0)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        with amp(device):
            logits = model(logits.argmax(-1, keepdim=True), pos0=ctx + i, caches=caches)[0][:, -1]
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    return prefill_ms, times


def load(path, device):
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ck["config"]))
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default=None, help="train.py's ckpt.pt (none: random models, latency only)")
    p.add_argument("--other-ckpt", default=None, help="a checkpoint of the other attention for the latency table")
    p.add_argument("--prompt", default="def ")
    p.add_argument("--tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--switch-over", type=int, default=128, help="retention's key-cache length (a built chunk size)")
    p.add_argument("--bench-ctx", default="1024,8192", help="prompt lengths for the latency table")
    p.add_argument("--bench-steps", type=int, default=256, help="timed decoding steps per prompt length")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    if not args.prompt:
        sys.exit("--prompt: expected at least one character")
    if not torch.cuda.is_available():
        sys.exit("generate.py needs a CUDA GPU")
    device = torch.device("cuda")
    torch.manual_seed(args.seed)
    result = {"args": vars(args)}

    models = {}
    if args.ckpt:
        model, ck = load(args.ckpt, device)
        models[model.cfg.attn] = model
        result["ckpt"] = {"path": args.ckpt, "step": ck["step"], "config": ck["config"]}
        prompt = torch.tensor([list(args.prompt.encode())], device=device)
        gen = torch.Generator(device=device).manual_seed(args.seed)
        seq, _ = sample(model, prompt, args.tokens, args.temperature, args.top_k, args.switch_over, gen)
        text = bytes(seq[0].tolist()).decode("utf-8", errors="replace")
        print(f"--- {model.cfg.attn} sample, step {ck['step']} ---\n{text}\n---")
        result["sample"] = text
        base = model.cfg
    else:
        base = GPTConfig()
        prompt = torch.tensor([list(args.prompt.encode())], device=device)
        seq = torch.cat([prompt, torch.randint(0, 256, (1, args.tokens), device=device)], dim=1)
    if args.other_ckpt:
        m2, _ = load(args.other_ckpt, device)
        models.setdefault(m2.cfg.attn, m2)
    for attn in ("retention", "sdpa"):
        if attn not in models:  # same shape, random weights: the step time does not depend on them
            models[attn] = GPT(dataclasses.replace(base, attn=attn)).to(device).eval()

    # token-by-token decoding against one forward over the same bytes (the retention cache's folds
    # included); the model of the other attention may have random weights, which checks the cache all the same
    result["check"] = {}
    for attn, m in models.items():
        result["check"][attn] = check_decoding(m, seq, prompt.shape[1], args.switch_over)
        print(f"decoding vs forward, {attn}: {result['check'][attn]}")

    # warm-up: loads the kernels, fills the allocator
    for m in models.values():
        time_decoding(m, 200, 140, args.switch_over, device)
    rows = []
    for ctx in [int(c) for c in args.bench_ctx.split(",") if c]:
        for attn in ("retention", "sdpa"):
            prefill_ms, ts = time_decoding(models[attn], ctx, args.bench_steps, args.switch_over, device)
            rows.append({"attn": attn, "ctx": ctx, "median_ms": statistics.median(ts), "mean_ms": statistics.fmean(ts),
                         "max_ms": max(ts), "prefill_ms": prefill_ms, "steps": len(ts)})
    cfg = models["retention"].cfg
    print(f"\nper-token decoding latency, batch 1, {cfg.n_layer} layers x {cfg.n_head} heads x {cfg.head_dim}, "
          f"bf16 autocast, retention key cache {args.switch_over} (median over {args.bench_steps} steps):")
    print("| attention | prompt | median ms/token | mean ms/token | max ms | prefill ms |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attn']} | {r['ctx']} | {r['median_ms']:.3f} | {r['mean_ms']:.3f} | {r['max_ms']:.2f} | {r['prefill_ms']:.1f} |")
    result["latency"] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
