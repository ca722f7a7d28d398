"""`--demo`: a tiny random Qwen3 and built-in text under the output folder, CPU, float32, small windows, so
every task's whole path runs on a laptop in seconds."""
from __future__ import annotations

import csv
import json
from pathlib import Path

DEMO_BOOKS = 3


def demo_inputs(root: Path) -> dict[str, Path]:
    """The tiny checkpoint and one small dataset per task under `root` (made once, then reused)."""
    from locas.tiny import (
        build_tiny_checkpoint,
        sample_conversation,
        sample_questions,
        sample_text,
    )

    model, books = root / "model", root / "books"
    if not (model / "config.json").is_file():
        build_tiny_checkpoint(model)
    books.mkdir(parents=True, exist_ok=True)
    for i in range(DEMO_BOOKS):
        (books / f"demo{i}.txt").write_text(sample_text(1500 + 700 * i, seed=i))
    conversations = root / "locomo.json"
    conversations.write_text(json.dumps([sample_conversation(f"demo-{i}", seed=i) for i in range(2)]))
    mmlu = root / "mmlu"
    mmlu.mkdir(exist_ok=True)
    with open(mmlu / "sailing_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
        writer.writerows(sample_questions("sailing", count=16))
    return {"model": model, "books": books, "locomo": conversations, "mmlu": mmlu}


def prepare_demo(task: str, args, parser, root: Path | None = None) -> None:
    """Point a parsed command line at the demo inputs (made under `root`, default the run's folder), CPU and
    float32; small windows and memory unless the command line set its own."""
    args.output = args.output or f"runs/demo-{task}"
    inputs = demo_inputs(root or Path(args.output) / "demo-inputs")
    args.model, args.dtype, args.num_gpus = str(inputs["model"]), "float32", 0
    for name, small in (("window_size", 256), ("memory_width", 32)):
        if getattr(args, name) == parser.get_default(name):
            setattr(args, name, small)
    if task in ("pg19", "sweep"):
        args.data = str(inputs["books"])
    elif task == "locomo":
        args.data = str(inputs["locomo"])
    elif task == "mmlu":
        args.data, args.books = str(inputs["mmlu"]), str(inputs["books"])
        args.max_books = 2
