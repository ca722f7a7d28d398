"""The registry of tasks. A task is one folder (a package) registered by one line in `TASKS`:

    locas/tasks/<name>/rows.py     KINDS: its row kinds → (the `Runs` frame they fill, their fields); imports nothing
    locas/tasks/<name>/data.py     loading its items (a folder or a hub id; errors as one LocasError line)
    locas/tasks/<name>/run.py      running an item on a model (torch and locas), usable from a notebook
    locas/tasks/<name>/tables.py   its summary and tables (pandas and analysis.frames only)
    locas/tasks/<name>/task.py     TASK: a `Task` (its flags, units, runner, demo inputs, progress, batching)

Everything is imported lazily by dotted path: analysis reads `rows` and `tables` without torch, workers read
`task` and `run` without pandas. Entry scripts, studies, the demo, the worker and `analysis.load` read this
registry; nothing outside a task's folder names the task (docs/design.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import import_module
from typing import Callable

from locas.contract import Unit, unit_id
from locas.errors import LocasError

TASKS = {  # name → the package of its folder
    "pg19": "locas.tasks.pg19",
    "locomo": "locas.tasks.locomo",
    "mmlu": "locas.tasks.mmlu",
}

Rows = list[dict]


@dataclass(frozen=True)
class Task:
    """What the driver, the workers and the analysis need of a task (its `task.py` builds it)."""

    name: str
    options: type  # a locas.config.Settings dataclass: its fields are the flags of its script
    units: Callable  # (options, cfg, run_id) -> list[Unit], on the driver
    run: Callable  # (model, units, slots, progress) on a worker: yields (unit_id, rows) as each unit finishes
    summary: Callable  # the run's summary.json, from its `Runs`
    table: Callable  # the table printed at the end of a run, from its `Runs`
    things: str  # what its units are, for the progress bar
    counts: str  # what the progress bar's rate counts
    amount: Callable[[Rows], int]  # how many of those a finished unit's rows hold
    demo: Callable  # (root) -> {flag: value}: small inputs made under `root` for --demo
    configure: Callable = lambda cfg: cfg  # the task's own defaults of the adaptation config
    batches: bool = False  # its documents adapt batched on a GPU (the method's batch), else one at a time
    text: str | None = None  # the text normalization its rows depend on (part of the run id)


def task(name: str) -> Task:
    """The registered task `name`."""
    if name not in TASKS:
        raise LocasError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return import_module(f"{TASKS[name]}.task").TASK


def tasks() -> dict[str, Task]:
    return {name: task(name) for name in TASKS}


def row_kinds() -> dict[str, tuple[str, list[str]]]:
    """Every task's row kinds: kind → (the frame of `analysis.load.Runs` they fill, their fields)."""
    return {kind: frame for name in TASKS for kind, frame in import_module(f"{TASKS[name]}.rows").KINDS.items()}


def lazy(module: str, name: str) -> Callable:
    """`module.name`, imported when called (workers never import a task's tables, nor the driver its runner)."""
    def call(*args, **kwargs):
        return getattr(import_module(module), name)(*args, **kwargs)

    return call


def sum_of(kind: str, column: str) -> Callable[[Rows], int]:
    """How much of `column` the `kind` rows of a unit hold (its progress)."""
    return lambda rows: sum(int(r.get(column) or 0) for r in rows if r.get("kind") == kind)


def split_list(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


CHARS_PER_TOKEN = 4.3
"""English text per Qwen3-style token, to size units in windows before any tokenizer is loaded."""


def make_unit(task: str, item_id: str, size: int, cfg, run_id: str, item, **options) -> Unit:
    """A unit of `item` under the adaptation config `cfg`; `size` in characters, from which its estimated
    window steps follow."""
    steps = math.ceil(size / CHARS_PER_TOKEN / (cfg.window_size - cfg.overlap))
    return Unit(unit_id=unit_id(task, item_id, run_id), task=task, item_id=str(item_id), size=int(size),
                payload={"item": item, "adapt": cfg.to_dict(), "options": options}, config_id=cfg.config_id,
                method=cfg.method, run_id=run_id, steps=max(1, steps))


def unit_progress(unit: Unit, progress):
    """The `locas.documents.Progress` of a runner that runs one unit at a time: every count is `unit`'s
    (`progress(unit_id, **counts)`: the worker's meter), or None."""
    return None if progress is None else lambda _doc_id, **counts: progress(unit.unit_id, **counts)


def adapt_config(unit: Unit):
    """The adaptation config a unit carries."""
    from locas.config import AdaptConfig

    return AdaptConfig.from_dict(unit.payload["adapt"])
