"""The project's adaptation loop against the obvious loop anyone would write, on a real model and real books.

    python -m benchmarks.bench_step          # tinylm-pg19: one 16K-token book, then 4 books of 4K batched

The minimal loop (`minimal_adapt`) is the few lines a reader of the method would write for one document:
memory in forward hooks on the MLPs, the HF forward, cross-entropy, backward, `torch.optim.AdamW`. The
project runs the same documents through `adapt_documents` (locas, NTP, one step per window, shared scoring
forward), for one book alone and for a batch of books in one call. The two run alternately in one process;
the script prints the median of the paired time ratios project / minimal (target <= 0.9 for one book on
CPU), both perplexities (same to 1e-3 relative) and each run's minor page faults. First it measures which
share of the project's window step is the memory's: the median step (as the scheduler measures it,
`step_latency`) at the memory width asked against one at width 1, whose branch costs next to nothing; the
rest is the backbone, as in the minimal loop.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.common import SHARED, device_name
from locas.contract import ppl as pooled_ppl


def minimal_adapt(model, tokens: torch.Tensor, cfg) -> tuple[float, int]:
    """Online NTP adaptation of one document by the plainest loop: (NLL sum, scored tokens).

    Only `model.model`, `model.mlps`, `model.down_col_norm` and `model.memorize` (the memory's seed) are
    used; the memory branch, the windows and the optimizer are written out here."""
    W, r = cfg.window_size, cfg.memory_width
    tau = model.down_col_norm / r  # per layer: mean column norm of W_down / r
    memory = model.memorize(tokens[None, :W], keep_top=r, memory_init=cfg.memory_init)[:, 0].clone()
    memory.requires_grad_(True)  # (L, r, d, 3): key, gate, value rows
    optimizer = torch.optim.AdamW([memory], lr=cfg.lr or 4e-3, weight_decay=0.0)

    def hook(layer):
        def add_memory(module, args, output):
            rows = memory[layer]
            clipped = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min(1.0)
            a = args[0]
            key, gate, value = clipped.unbind(-1)
            return output + tau[layer] * ((F.silu(a @ gate.T) * (a @ key.T)) @ value)
        return add_memory

    handles = [mlp.register_forward_hook(hook(layer)) for layer, mlp in enumerate(model.mlps)]
    nll_sum, scored = torch.zeros(()), 0
    try:
        for start in range(0, len(tokens) - 1, W - cfg.overlap):
            ids = tokens[None, start:start + W]
            loss = F.cross_entropy(model.model(input_ids=ids).logits[0, :-1], ids[0, 1:])  # evaluate, then update
            nll_sum += loss.detach() * (ids.shape[1] - 1)
            scored += ids.shape[1] - 1
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        for handle in handles:
            handle.remove()
    return float(nll_sum), scored


def project_adapt(model, books: list[torch.Tensor], cfg) -> list[tuple[float, int]]:
    """The same documents through `adapt_documents`, all of them batched in one call."""
    from locas.adapt import adapt_documents
    from locas.documents import Document, sliding_windows

    documents = [Document(str(i), t, sliding_windows(len(t), cfg.window_size, cfg.overlap)) for i, t in enumerate(books)]
    results = {r.doc.doc_id: r for r in adapt_documents(model, documents, cfg, batch_size=len(books))}
    for result in results.values():
        if result.error:
            raise SystemExit(f"project run failed on book {result.doc.doc_id}: {result.error}")
    return [(results[str(i)].nll_sum, results[str(i)].scored_tokens) for i in range(len(books))]


def paired(model, books, cfg, repeats: int) -> dict:
    """Project and minimal loop alternately (one warm-up each), `repeats` times: times and perplexities."""
    runs = {"minimal": lambda: [minimal_adapt(model, t, cfg) for t in books],
            "project": lambda: project_adapt(model, books, cfg)}
    seconds, ppl, faults = {name: [] for name in runs}, {}, {name: [] for name in runs}
    for turn in range(repeats + 1):
        for name in (list(runs) if turn % 2 == 0 else list(runs)[::-1]):
            start, faulted = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            sums = runs[name]()
            if turn:
                seconds[name].append(time.perf_counter() - start)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted)
                print(f"{len(books)} book(s), turn {turn}: {name} {seconds[name][-1]:.2f} s", file=sys.stderr, flush=True)
            ppl[name] = [pooled_ppl(nll, n) for nll, n in sums]
    ratios = [p / m for p, m in zip(seconds["project"], seconds["minimal"])]
    return {"books": len(books), "tokens": sum(len(t) for t in books),
            "minimal_s": [round(s, 2) for s in seconds["minimal"]], "project_s": [round(s, 2) for s in seconds["project"]],
            "project_over_minimal": round(statistics.median(ratios), 3),
            "page_faults_minimal": faults["minimal"], "page_faults_project": faults["project"],
            "ppl_minimal": [round(p, 4) for p in ppl["minimal"]], "ppl_project": [round(p, 4) for p in ppl["project"]],
            "ppl_max_rel_diff": max(abs(p - m) / m for p, m in zip(ppl["project"], ppl["minimal"]))}


def memory_share(model, cfg, rounds: int = 3, steps: int = 20) -> dict:
    """Median window step at the configured memory width and at width 1, alternately `rounds` times."""
    from locas.adapt import step_latency

    narrow = dataclasses.replace(cfg, memory_width=1)
    full, floor = [], []
    for _ in range(rounds):
        full.append(step_latency(model, cfg, [1], steps)[1])
        floor.append(step_latency(model, narrow, [1], steps)[1])
    step, base = statistics.median(full), statistics.median(floor)
    return {"step_s": round(step, 4), "width_1_step_s": round(base, 4), "memory_share": round(1 - base / step, 3)}


def main(argv=None):
    from transformers import AutoTokenizer

    from locas import CausalLMWithMemory
    from locas.config import AdaptConfig
    from locas.tasks.pg19.data import load_books

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHARED / "models" / "tinylm-pg19"))
    p.add_argument("--books", default=str(SHARED / "data" / "pg19" / "books"), help="a folder of PG-19 .txt books")
    p.add_argument("--book_ids", default="26618,4128,10146,2544", help="the first is the one-book case")
    p.add_argument("--tokens", type=int, default=16384, help="tokens of the one book; a batch shares as many")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--r", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = CausalLMWithMemory.from_pretrained(args.model, dtype=torch.float32, device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ids = args.book_ids.split(",")
    books = [torch.tensor(tokenizer(b.text, add_special_tokens=False).input_ids) for b in load_books(args.books, ids=ids)]
    cfg = AdaptConfig(method="locas", loss="NTP", memory_width=args.r, window_size=args.window)
    report = {"date": datetime.date.today().isoformat(), "device": device_name("cpu"), "model": args.model,
              "window": args.window, "r": args.r, "step": memory_share(model, cfg),
              "one_book": paired(model, [books[0][:args.tokens]], cfg, args.repeats),
              "batch_of_books": paired(model, [b[:args.tokens // len(books)] for b in books], cfg, args.repeats)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
