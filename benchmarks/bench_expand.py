"""An expanding memory's cost as it grows: the memory's size and the window step's time per width, and the
ratio per doubling of the width (issue 23).

    python -m benchmarks.bench_expand                          # the tinylm-pg19 shape, CPU, widths 64..2048
    python -m benchmarks.bench_expand --preset qwen3-1.7b --dtype bfloat16 --window 2048 --batch 4   # a GPU: ~45 GiB

The memory is grown as in a run: memorized on the window (`memory_width`), then blocks appended by
`ExpandingMemory.append` up to each width (blocks memorized on the same window: the step's cost does not
depend on what the rows hold). At each width the figure is the median time of one window step (NTP, one
step: the scoring and training forward, backward and AdamW) and the bytes the memory holds with its two
AdamW moments and its gradient (4 fp32 tensors of L·B·r·d·3), and on a GPU the memory the step takes beyond
what is allocated before it (activations). The widths take turns, one step each per round, and the ratio
per doubling is the median over rounds of the paired ratios, so the figures hold on a busy machine.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics

import torch

from benchmarks.common import PRESETS, build_model, device_name, synthetic_tokens, timed
from locas.adapt import Adapter
from locas.config import AdaptConfig
from locas.documents import Document, sliding_windows
from locas.expanding_memory import ExpandingMemory
from locas.slots import Slot, WindowBatch


def grown_to(method: ExpandingMemory, window: torch.Tensor, width: int) -> None:
    """Append blocks memorized on `window` to every slot until each is `width` rows wide."""
    block = method.cfg.expand_width
    for slot in range(method.memory.shape[1]):
        while method.widths[slot] < width:
            rows = min(block, width - method.widths[slot])
            method.append(slot, method.model.memorize(window, keep_top=rows)[:, 0])


def state_bytes(method: ExpandingMemory) -> int:
    """The memory, its gradient and AdamW's two moments."""
    return 4 * method.memory.numel() * method.memory.element_size()


def grown_step(model, cfg: AdaptConfig, docs: list[Document], width: int):
    """A window step of `docs` (one per slot) under an expanding memory grown to `width` rows."""
    device = model.device
    method = ExpandingMemory(model, cfg)
    adapter = Adapter(model, method, cfg)
    method.start(len(docs))
    for i, doc in enumerate(docs):
        method.reset(i, doc.tokens[None].to(device))
    grown_to(method, docs[0].tokens[None].to(device), width)
    batch = WindowBatch([Slot(i, doc, None, 0, device) for i, doc in enumerate(docs)], cfg.window_size, device)
    return method, lambda: adapter.step_window(batch)


def measure(model, cfg: AdaptConfig, widths: list[int], batch: int, repeats: int) -> list[dict]:
    """Per width: the median step and its state; per doubling, the median of the ratios of the steps timed in
    the same round (the widths take turns, so a slow spell of the machine falls on all of them)."""
    W, device = cfg.window_size, model.device
    docs = [Document(f"b{i}", synthetic_tokens(W, model.config.vocab_size, seed=i), sliding_windows(W, W, 1))
            for i in range(batch)]
    steps = {width: grown_step(model, cfg, docs, width) for width in widths}
    extra = {}
    for width, (_, step) in steps.items():  # warm-up, and the step's peak memory beyond what is allocated
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        step()
        extra[width] = (torch.cuda.max_memory_allocated() - resident) / 2**20 if device.type == "cuda" else None
    rounds = [{width: timed(step, device, repeats=1, warmup=0) for width, (_, step) in steps.items()}
              for _ in range(repeats)]
    figures = []
    for width, (method, _) in steps.items():
        figures.append({"width": width, "step_seconds": statistics.median(r[width] for r in rounds),
                        "state_mib": state_bytes(method) / 2**20, "step_extra_mib": extra[width],
                        "trainable_params": model.parameter_count(method.memory)})
    for before, after in itertools.pairwise(figures):
        after["step_ratio"] = statistics.median(r[after["width"]] / r[before["width"]] for r in rounds)
        after["state_ratio"] = after["state_mib"] / before["state_mib"]
    return figures


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--batch", type=int, default=1, help="documents in the window step")
    p.add_argument("--widths", default="64,128,256,512,1024,2048", help="widths, each double the one before")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)

    widths = [int(w) for w in args.widths.split(",")]
    model = build_model(args.preset, args.device, args.dtype)
    block = min(widths[0], model.intermediate_size)
    cfg = AdaptConfig(memory_width=block, window_size=args.window, expand_every=str(args.window),
                      expand_width=block)
    rows = measure(model, cfg, widths, args.batch, args.repeats)
    print(f"{args.preset} on {device_name(model.device)}, {args.dtype}, window {args.window}, batch {args.batch}, "
          f"{datetime.date.today().isoformat()}")
    print("width  step ms  x per doubling  state MiB  x per doubling  step's extra MiB")
    for row in rows:
        peak = "-" if row["step_extra_mib"] is None else f"{row['step_extra_mib']:.0f}"
        print(f"{row['width']:>5}  {1000 * row['step_seconds']:7.1f}  {row.get('step_ratio', float('nan')):14.2f}  "
              f"{row['state_mib']:9.2f}  {row.get('state_ratio', float('nan')):14.2f}  {peak:>16}")
    if args.json:
        figures = {"preset": args.preset, "device": device_name(model.device), "dtype": args.dtype,
                   "window": args.window, "batch": args.batch, "date": datetime.date.today().isoformat(), "rows": rows}
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
