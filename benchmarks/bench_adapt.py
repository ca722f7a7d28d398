"""Adaptation speed, as ratios measured in one run on one device (issue 8).

    python -m benchmarks.bench_adapt --preset tiny --window 256               # CPU, seconds
    python -m benchmarks.bench_adapt --preset qwen3-1.7b --device cuda --dtype bfloat16 --window 2048 \
        --batch 8 [--compile]                                                   # the H100 targets

Prints: locas step / base forward; memory branch / frozen MLP (fwd + bwd); memorize / one forward;
tokens/s of adaptation at batch 1 and batch N; locas book time / TempLoRA book time; compiles over a run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import time

import torch
import torch.nn.functional as F
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

from benchmarks.common import PRESETS, build_model, device_name, sync, synthetic_tokens, timed
from locas.adapt import Adapter, Slot, WindowBatch
from locas.config import AdaptConfig
from locas.documents import Document, sliding_windows
from locas.memory import memory_branch
from locas.methods import make_method


def window_batch(tokens, batch, window, device):
    return torch.stack([tokens[i * window:(i + 1) * window] for i in range(batch)]).to(device)


def adapt_seconds(model, docs, cfg, batch) -> float:
    """Wall time to adapt to `docs` (evaluate, then update) with `batch` slots."""
    adapter = Adapter(model, make_method(model, cfg), cfg)
    sync(model.device)
    start = time.perf_counter()
    for _ in adapter.run(docs, batch_size=batch):
        pass
    sync(model.device)
    return time.perf_counter() - start


def branch_vs_mlp(mlp, batch, window, r, device, dtype) -> float:
    """Memory branch (fwd + bwd into the memory) over the frozen MLP (fwd + bwd into its input), one layer."""
    d = mlp.gate_proj.in_features
    a = torch.randn(batch, window, d, device=device, dtype=getattr(torch, dtype), requires_grad=True)
    memory = F.normalize(torch.randn(batch, r, d, 3, device=device), dim=-2).requires_grad_(True)
    scale = torch.linalg.vector_norm(mlp.down_proj.weight.float(), dim=0).mean() / r

    def frozen():
        mlp(a).sum().backward()

    def branch():
        memory_branch(a.detach(), memory, scale).float().sum().backward()

    return timed(branch, device) / timed(frozen, device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--r", type=int, default=64)
    p.add_argument("--batch", type=int, default=4, help="N of the batch-N throughput")
    p.add_argument("--book_windows", type=int, default=6, help="windows per synthetic book")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)

    model = build_model(args.preset, args.device, args.dtype)
    if args.compile:
        torch._dynamo.reset()
        model.model.compile(dynamic=False)
    vocab, W, device = model.config.vocab_size, args.window, model.device
    tokens = synthetic_tokens(W * (args.batch + 1) * args.book_windows, vocab)
    cfg = AdaptConfig(memory_width=args.r, window_size=W)
    one = window_batch(tokens, 1, W, device)
    figures = {"preset": args.preset, "device": device_name(device), "dtype": args.dtype, "window": W,
               "r": args.r, "batch": args.batch, "compile": args.compile,
               "date": datetime.date.today().isoformat()}

    compile_start = time.perf_counter()
    if args.compile:
        # a whole short run pays the compiles; counted below over a second run that must add none
        adapt_seconds(model, [Document("warm", tokens[:W * 2 + 7], sliding_windows(W * 2 + 7, W, 1))], cfg, 1)
    figures["compile_seconds"] = time.perf_counter() - compile_start if args.compile else 0.0

    with torch.no_grad():
        base_forward = timed(lambda: model(one), device)
    method = make_method(model, cfg)
    adapter = Adapter(model, method, cfg)
    method.start(1)
    method.reset(0, one)
    doc = Document("d", tokens[:W], [sliding_windows(W, W, 1)[0]])
    batch = WindowBatch([Slot(0, doc, None, 0, device)], W, device)
    locas_step = timed(lambda: adapter.step_window(batch), device)
    memorize = timed(lambda: model.memorize(one, keep_top=args.r), device)
    figures["locas_step_over_base_forward"] = locas_step / base_forward
    figures["memorize_over_forward"] = memorize / base_forward
    figures["memory_branch_over_frozen_mlp"] = branch_vs_mlp(model.mlps[0], 1, W, args.r, device, args.dtype)
    hidden, inter = PRESETS["qwen3-1.7b"][:2]
    layer = Qwen3MLP(Qwen3Config(hidden_size=hidden, intermediate_size=inter)).to(device, getattr(torch, args.dtype))
    figures["memory_branch_over_frozen_mlp_1.7b_layer"] = branch_vs_mlp(layer.requires_grad_(False), 1, W, args.r,
                                                                         device, args.dtype)

    book_tokens = W * args.book_windows
    books = [Document(f"b{i}", tokens[i * book_tokens:(i + 1) * book_tokens] if (i + 1) * book_tokens <= len(tokens)
                      else tokens[:book_tokens], sliding_windows(book_tokens, W, 1)) for i in range(args.batch)]
    counters = torch._dynamo.utils.counters
    graphs_before = counters["stats"]["unique_graphs"]
    t1 = adapt_seconds(model, books, cfg, 1)
    tn = adapt_seconds(model, books, cfg, args.batch)
    figures["recompiles_during_runs"] = counters["stats"]["unique_graphs"] - graphs_before if args.compile else None
    scored = sum(len(b.tokens) - 1 for b in books)
    figures["tokens_per_s_batch1"] = scored / t1
    figures[f"tokens_per_s_batch{args.batch}"] = scored / tn
    figures["batchN_over_batch1_throughput"] = t1 / tn
    lora_cfg = AdaptConfig(method="lora", window_size=W)
    lora = adapt_seconds(model, books[:1], lora_cfg, 1)
    locas = adapt_seconds(model, books[:1], cfg, 1)
    figures["locas_book_over_lora_book"] = locas / lora
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
