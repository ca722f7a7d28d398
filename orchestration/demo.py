"""`--demo`: a tiny random Qwen3 and the task's own small inputs (its folder's `demo.py`) under the output folder,
CPU, float32, small windows, so every task's whole path runs on a laptop in seconds."""
from __future__ import annotations

from pathlib import Path


def prepare_demo(task, args, parser, root: Path | None = None, name: str | None = None) -> None:
    """Point a parsed command line of `task` (a `locas.tasks.Task`; `name` the run's, default the task's) at the
    demo model and the task's demo inputs (made under `root`, default the run's folder, once), CPU and
    float32; small windows and memory unless the command line set its own."""
    from locas.tiny import build_tiny_checkpoint

    args.output = args.output or f"runs/demo-{name or task.name}"
    root = root or Path(args.output) / "demo-inputs"
    model = root / "model"
    if not (model / "config.json").is_file():
        build_tiny_checkpoint(model)
    args.model, args.dtype, args.num_gpus = str(model), "float32", 0
    for flag, small in (("window_size", 256), ("memory_width", 32)):
        if getattr(args, flag) == parser.get_default(flag):
            setattr(args, flag, small)
    for flag, value in task.demo(root).items():
        setattr(args, flag, value)
