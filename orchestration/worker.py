"""The worker: one long-lived process per GPU (or CPU slot) that loads the model once and runs units.

`Worker` is a plain class: tests and notebooks use it without Ray. The scheduler wraps it with
`remote_worker_class(num_gpus)` and calls `run_units` as a Ray streaming generator, so each unit's rows
reach the driver as soon as that unit finishes:

    Actor = remote_worker_class(num_gpus=1)
    actor = Actor.remote({"model": "Qwen/Qwen3-1.7B-Base", "dtype": "bfloat16"})
    for ref in actor.run_units.options(num_returns="streaming").remote(units):
        unit_id, rows = ray.get(ref)

A runner is `runner(model, unit) -> list[dict]` (the locas task function for `unit.task`); a batch runner
`batch_runner(model, units)` yields (unit_id, rows) for several units run together (documents batched along
the memory's batch axis). One unit that raises becomes one error row and the worker goes on; a failure
outside any unit (the model does not load, more than one visible GPU) raises out of `run_units`, which the
scheduler treats as fatal for the run.
"""
from __future__ import annotations

import importlib
import os
import socket
import sys
import time
from typing import Callable, Iterable, Iterator

from locas.errors import LocasError

Runner = Callable[[object, object], list]  # (model, unit) -> rows
BatchRunner = Callable[[object, list], Iterable]  # (model, units) -> iterator of (unit_id, rows) as each finishes
MODEL_SPEC_DEFAULTS = {"dtype": "float32", "device": "auto", "trust_remote_code": False}


def default_loader(model_spec: dict):
    """Load the served model through locas (imported here so this module imports without it)."""
    from locas.model import load_for_worker

    return load_for_worker(model_spec)


def default_runners() -> tuple[dict[str, Runner], dict[str, BatchRunner]]:
    """The task registries of `orchestration.units` (RUNNERS, BATCH_RUNNERS), looked up when first needed."""
    try:
        units = importlib.import_module("orchestration.units")
        return dict(units.RUNNERS), dict(getattr(units, "BATCH_RUNNERS", {}))
    except (ImportError, AttributeError) as e:
        raise LocasError(f"no task runners: pass runners={{task: fn}} to Worker ({one_line(e)})") from None


def one_line(exc: BaseException, limit: int = 1000) -> str:
    """`TypeName: message` on a single line, at most `limit` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_row(unit, error: str, attempts: int = 1) -> dict:
    """The one row a failed unit leaves (design.md): kind "error", a one-line `error`, `attempts`."""
    payload = getattr(unit, "payload", None) or {}
    parts = unit.unit_id.split(":")
    return {
        "kind": "error",
        "task": unit.task,
        "unit_id": unit.unit_id,
        "config_id": payload.get("config_id", parts[-1] if len(parts) >= 3 else None),
        "method": payload.get("method"),
        "item_id": unit.item_id,
        "error": error,
        "attempts": attempts,
    }


def _release_device_memory() -> None:
    """Return cached blocks to the GPU after a failed batch, so the retries start from a clean device."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _node_name() -> str:
    """The Ray node IP inside a Ray worker, else the hostname."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            return ray.util.get_node_ip_address()
        except Exception:  # noqa: BLE001 - the name is informational
            pass
    return socket.gethostname()


class Worker:
    """Loads the model once (lazily, on the first unit) and runs units through task runners.

    model_spec: {"model": path or hub id, "dtype": "float32"|"bfloat16"|..., "device": "auto"|"cpu"|"cuda",
    "trust_remote_code": False, ...}; keys beyond these go to the loader untouched. `loader(spec) -> model`
    is injectable (tests pass a fake one). `runners` maps a task to `runner(model, unit) -> rows`;
    `batch_runners` (optional) maps a task to `batch_runner(model, units)`, a generator of (unit_id, rows)
    as each unit finishes, used when a call brings several consecutive units of that task (a worker with
    several slots adapting documents together). With neither given, both come from `orchestration.units`.
    """

    def __init__(self, model_spec: dict, runners: dict[str, Runner] | None = None,
                 loader: Callable[[dict], object] | None = None,
                 batch_runners: dict[str, BatchRunner] | None = None):
        if not isinstance(model_spec, dict) or not model_spec.get("model"):
            raise LocasError("model_spec needs a 'model' (a local path or a hub id)")
        self.model_spec = {**MODEL_SPEC_DEFAULTS, **model_spec}
        self.runners = dict(runners) if runners is not None else None
        self.batch_runners = dict(batch_runners or {})
        self.loader = loader or default_loader
        self.model = None
        self.load_count = 0
        self.node = _node_name()
        self.device = None  # set on load: "cpu" or e.g. "cuda:0 NVIDIA H100 80GB HBM3"

    # ------------------------------------------------------------------ loading
    def _resolve_device(self) -> str:
        device = self.model_spec["device"]
        if device == "auto":
            try:
                import torch
            except ImportError:
                return "cpu"
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device

    def load(self):
        """Load the model if not loaded yet; assert one visible GPU when on CUDA. Returns the model."""
        if self.load_count:
            return self.model
        device = self._resolve_device()
        if device.startswith("cuda"):
            import torch

            count = torch.cuda.device_count()
            if count != 1:
                raise LocasError(f"this worker sees {count} CUDA devices, expected exactly 1: give each actor "
                                 "num_gpus=1 (or set CUDA_VISIBLE_DEVICES to one device)")
            index = torch.cuda.current_device()
            self.device = f"cuda:{index} {torch.cuda.get_device_name(index)}"
        else:
            self.device = device
        self.model = self.loader({**self.model_spec, "device": device})
        self.load_count += 1
        return self.model

    def info(self) -> dict:
        """Where this worker runs: node, device (None before the model is loaded), pid, load_count."""
        return {"node": self.node, "device": self.device, "pid": os.getpid(), "load_count": self.load_count}

    # ------------------------------------------------------------------ running
    def _registries(self) -> None:
        if self.runners is None:
            self.runners, found = default_runners()
            self.batch_runners = {**found, **self.batch_runners}

    def _finish(self, unit, rows, attempts: dict, start: float) -> list[dict]:
        """Copy and tag a unit's rows; rows that are not dicts, or an exception, become one error row."""
        if not isinstance(rows, BaseException):
            try:
                rows = [dict(r) for r in rows]
            except Exception as e:  # noqa: BLE001
                rows = e
        if isinstance(rows, BaseException):
            rows = [{**error_row(unit, one_line(rows), attempts.get(unit.unit_id, 1)),
                     "seconds": time.perf_counter() - start}]
        for row in rows:
            row.update(node=self.node, device=self.device, unit_id=unit.unit_id, task=unit.task)
        return rows

    def _run_one(self, model, unit, attempts: dict) -> tuple[str, list[dict]]:
        start = time.perf_counter()
        try:
            if unit.task in self.runners:
                rows = self.runners[unit.task](model, unit)
            elif unit.task in self.batch_runners:
                ((uid, rows),) = list(self.batch_runners[unit.task](model, [unit]))
                if uid != unit.unit_id:
                    raise LocasError(f"batch runner answered {uid!r} for unit {unit.unit_id!r}")
            else:
                known = sorted({*self.runners, *self.batch_runners})
                raise LocasError(f"no runner for task {unit.task!r}; known tasks: {', '.join(known) or 'none'}")
        except Exception as e:  # noqa: BLE001 - one unit's failure must not stop the others
            rows = e
        return unit.unit_id, self._finish(unit, rows, attempts, start)

    def _run_batch(self, model, units: list, attempts: dict) -> Iterator[tuple[str, list[dict]]]:
        """Units of one task together; if the batch runner fails, the units it left run one at a time,
        so the unit at fault ends as the only error row."""
        start = time.perf_counter()
        left = {u.unit_id: u for u in units}
        failure = None
        try:
            for unit_id, rows in self.batch_runners[units[0].task](model, units):
                unit = left.pop(unit_id, None)
                if unit is None:
                    raise LocasError(f"batch runner answered unit {unit_id!r}, which it was not given or gave twice")
                yield unit_id, self._finish(unit, rows, attempts, start)
        except Exception as e:  # noqa: BLE001
            # keep the message, not the traceback: its frames hold the failed step's activations (GPU memory)
            failure = e.with_traceback(None)
            failure.__context__ = failure.__cause__ = None
            _release_device_memory()
        for unit in left.values():
            if unit.task in self.runners or failure is None:
                yield self._run_one(model, unit, attempts)
            else:
                yield unit.unit_id, self._finish(unit, failure, attempts, start)

    def run_units(self, units: Iterable, attempts: dict[str, int] | None = None) -> Iterator[tuple[str, list[dict]]]:
        """Yield (unit_id, rows) per unit as each finishes. `attempts` (unit_id → attempt) goes into error rows.

        Consecutive units of a task with a batch runner run together; every other unit runs alone, in order.
        A failure to load the model raises (no unit is answered); a failing unit gives one error row.
        """
        attempts = attempts or {}
        units = list(units)
        model = self.load()
        self._registries()
        i = 0
        while i < len(units):
            j = i + 1
            while j < len(units) and units[j].task == units[i].task:
                j += 1
            group, i = units[i:j], j
            if len(group) > 1 and group[0].task in self.batch_runners:
                yield from self._run_batch(model, group, attempts)
            else:
                for unit in group:
                    yield self._run_one(model, unit, attempts)


def remote_worker_class(num_gpus: float = 0):
    """`Worker` as a Ray actor class: one GPU per actor (or one CPU when num_gpus == 0), never restarted.

    A dead actor is not restarted by Ray (max_restarts=0): the scheduler replaces it and re-queues its units.
    """
    import ray

    options = {"num_gpus": num_gpus, "max_restarts": 0, "max_task_retries": 0}
    if not num_gpus:
        options["num_cpus"] = 1
    return ray.remote(**options)(Worker)
