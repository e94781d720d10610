#!/usr/bin/env python3
"""Anchors of scripts/bench/train.ts (run by it, one process each; not a dependency of ppc-gpt).

  python3 train_torch.py loop --model m.gguf --windows w.json --seqs 4 --steps 5 --threads 2
      A plain PyTorch LoRA loop on the same GGUF model (F32 weights, llama architecture) and the same
      token windows: frozen base, LoRA (r, alpha, dropout) on the 7 projections as PEFT does, mean
      cross-entropy over every position, AdamW on A/B. One JSON line per step ({"step", "loss"}), so
      the caller times the steps as they arrive.
  python3 train_torch.py gemm --m 1024 --k 1024 --n 2816 --threads 2
      The machine's fp32 GEMM rate (numpy and torch.matmul, best of several runs): the compute-bound
      limit of training is this rate divided by the FLOPs of a token.
"""
import argparse
import json
import math
import struct
import sys
import time
import warnings

import numpy as np

GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf(path):
    """Metadata and F32 tensors (numpy views of a memory map) of a GGUF file."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    off = 0

    def take(fmt):
        nonlocal off
        v = struct.unpack_from("<" + fmt, data, off)
        off += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal off
        n = take("Q")
        s = bytes(data[off:off + n]).decode("utf-8")
        off += n
        return s

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(GGUF_SCALARS[t])

    if bytes(data[0:4]) != b"GGUF":
        raise SystemExit(f"{path}: not a GGUF file")
    off = 4
    take("I")  # version
    n_tensors, n_kv = take("Q"), take("Q")
    meta = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        ttype, toff = take("I"), take("Q")
        infos.append((name, dims, ttype, toff))
    align = meta.get("general.alignment", 32)
    base = (off + align - 1) // align * align
    tensors = {}
    for name, dims, ttype, toff in infos:
        if ttype != 0:
            raise SystemExit(f"{path}: tensor {name} is not F32 (ggml type {ttype}); the PyTorch loop reads F32 models")
        n = int(np.prod(dims))
        tensors[name] = np.frombuffer(data, dtype=np.float32, count=n, offset=base + toff).reshape(list(reversed(dims)))
    return meta, tensors


def loop(args):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    meta, w = read_gguf(args.model)
    arch = meta["general.architecture"]
    n_layer = meta[f"{arch}.block_count"]
    n_head = meta[f"{arch}.attention.head_count"]
    n_head_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    eps = meta[f"{arch}.attention.layer_norm_rms_epsilon"]
    base = meta.get(f"{arch}.rope.freq_base", 10000.0)
    # the frozen base is read in place from the memory map (as llama.cpp maps it): counted once in the peak RSS
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    t = lambda name: torch.from_numpy(w[name])
    tok_embd = t("token_embd.weight")
    output = t("output.weight") if "output.weight" in w else tok_embd
    scale = args.alpha / args.r
    modules = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]

    layers, params = [], []
    for il in range(n_layer):
        layer = {"attn_norm": t(f"blk.{il}.attn_norm.weight"), "ffn_norm": t(f"blk.{il}.ffn_norm.weight")}
        for m in modules:
            weight = t(f"blk.{il}.{m}.weight")  # [out, in], torch.nn.Linear's layout
            a = torch.empty(args.r, weight.shape[1])
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # PEFT's init of lora_A
            b = torch.zeros(weight.shape[0], args.r)
            a.requires_grad_(True)
            b.requires_grad_(True)
            params += [a, b]
            layer[m] = (weight, a, b)
        layers.append(layer)
    norm_out = t("output_norm.weight")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    def lora(x, p):
        weight, a, b = p
        return F.linear(x, weight) + F.linear(F.linear(F.dropout(x, args.dropout, True), a), b) * scale

    n_rot = output.shape[1] // n_head
    inv_freq = base ** (-torch.arange(0, n_rot, 2, dtype=torch.float32) / n_rot)

    def rope(x, cos, sin):  # llama.cpp's NORM rope: adjacent pairs
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)

    windows = json.load(open(args.windows))["windows"]
    ctx = len(windows[0]) - 1
    pos = torch.arange(ctx, dtype=torch.float32)
    ang = pos[:, None] * inv_freq[None, :]
    cos, sin = torch.cos(ang), torch.sin(ang)
    causal = torch.full((ctx, ctx), float("-inf")).triu(1)
    d = n_rot

    for step in range(args.steps):
        rows = torch.tensor([windows[(step * args.seqs + s) % len(windows)] for s in range(args.seqs)], dtype=torch.long)
        x = F.embedding(rows[:, :-1], tok_embd)
        bsz = rows.shape[0]
        for layer in layers:
            h = rms(x, layer["attn_norm"])
            q = lora(h, layer["attn_q"]).view(bsz, ctx, n_head, d)
            k = lora(h, layer["attn_k"]).view(bsz, ctx, n_head_kv, d)
            v = lora(h, layer["attn_v"]).view(bsz, ctx, n_head_kv, d)
            q, k = rope(q, cos[:, None, :], sin[:, None, :]), rope(k, cos[:, None, :], sin[:, None, :])
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if n_head_kv != n_head:
                k = k.repeat_interleave(n_head // n_head_kv, dim=1)
                v = v.repeat_interleave(n_head // n_head_kv, dim=1)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + causal, dim=-1)
            o = (att @ v).transpose(1, 2).reshape(bsz, ctx, n_head * d)
            x = x + lora(o, layer["attn_output"])
            h = rms(x, layer["ffn_norm"])
            x = x + lora(F.silu(lora(h, layer["ffn_gate"])) * lora(h, layer["ffn_up"]), layer["ffn_down"])
        logits = F.linear(rms(x, norm_out), output)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        print(json.dumps({"step": step + 1, "loss": loss.item()}), flush=True)


def gemm(args):
    """Best GFLOPS of an [m, k] x [k, n] fp32 product over several runs, numpy and torch."""
    out = {}
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.m, args.k), dtype=np.float32)
    b = rng.standard_normal((args.k, args.n), dtype=np.float32)
    flop = 2.0 * args.m * args.k * args.n

    def best(fn):
        fn()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return flop / min(times) / 1e9

    out["numpy"] = best(lambda: a @ b)
    try:
        import torch
        torch.set_num_threads(args.threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out["torch"] = best(lambda: torch.matmul(ta, tb))
    except ImportError:
        pass
    print(json.dumps({"gflops": out, "m": args.m, "k": args.k, "n": args.n}), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("loop")
    pl.add_argument("--model", required=True)
    pl.add_argument("--windows", required=True)
    pl.add_argument("--seqs", type=int, default=1)
    pl.add_argument("--steps", type=int, default=5)
    pl.add_argument("--threads", type=int, default=2)
    pl.add_argument("--r", type=int, default=8)
    pl.add_argument("--alpha", type=float, default=32)
    pl.add_argument("--dropout", type=float, default=0.1)
    pl.add_argument("--lr", type=float, default=1e-4)
    pg = sub.add_parser("gemm")
    pg.add_argument("--m", type=int, default=1024)
    pg.add_argument("--k", type=int, default=1024)
    pg.add_argument("--n", type=int, default=2816)
    pg.add_argument("--reps", type=int, default=8)
    pg.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    (loop if args.cmd == "loop" else gemm)(args)


if __name__ == "__main__":
    sys.exit(main())
