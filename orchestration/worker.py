"""The worker: one long-lived process per GPU (or CPU slot) that loads the model once and runs units.

`Worker` is a plain class: tests and notebooks use it without Ray. The scheduler wraps it with
`remote_worker_class(num_gpus)` and calls `run_units` as a Ray streaming generator, so each unit's rows
reach the driver as soon as that unit finishes:

    Actor = remote_worker_class(num_gpus=1)
    actor = Actor.remote(ModelSpec(model="Qwen/Qwen3-1.7B-Base"))
    for ref in actor.run_units.options(num_returns="streaming").remote(units):
        unit_id, rows = ray.get(ref)

Every runner takes a list of units and yields (unit_id, rows) as each finishes (`orchestration.tasks`);
consecutive units of one task and config go to it together (documents batched along the memory's batch
axis). A unit that raises becomes one error row and the worker goes on. A failure outside any unit (the
model does not load, no CUDA where a GPU was asked for) raises out of `run_units`, which the scheduler
treats as fatal for the run.
"""
from __future__ import annotations

import os
import socket
import sys
import traceback
from typing import Callable, Iterator

from locas.config import ModelSpec
from locas.errors import LocasError, error_row
from orchestration.units import Unit, row_keys


def _release_device_memory() -> None:
    """Return cached blocks to the GPU after a failed batch, so the retries start from a clean device."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def node_name() -> str:
    """Inside Ray, the node's IP and its whole node id (nodes of one machine share an IP; Ray's fake nodes differ
    only at the end of their ids); else the hostname."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()}"
    return socket.gethostname()


def _progress_bars():
    """Progress bars for work inside a unit: Ray's, which the driver shows, inside a Ray actor; else none."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from ray.experimental.tqdm_ray import tqdm

        return tqdm
    return None


class Worker:
    """Loads the model once (lazily, on the first unit) and runs units through the task runners.

    `loader(spec) -> model` is injectable (tests pass a fake one), and so is `runners` (task → runner);
    by default the model is loaded through locas and the runners are `orchestration.tasks`'.
    `require_cuda`: the actor was given a GPU, so running on the CPU (a broken CUDA) is refused. `slots`:
    how many documents of one config it adapts at once.
    """

    def __init__(self, spec: ModelSpec, runners: dict | None = None, loader: Callable | None = None,
                 require_cuda: bool = False, slots: int = 1):
        if runners is None:
            from orchestration.tasks import runners as task_runners

            runners = task_runners()
        self.spec, self.runners, self.require_cuda, self.slots = spec, dict(runners), require_cuda, slots
        self.loader = loader or _load
        self.model = None
        self.load_count = 0
        self.node = node_name()
        self.device = None  # set on load: "cpu" or e.g. "cuda:0 NVIDIA H100 80GB HBM3"

    # ------------------------------------------------------------------ loading
    def _resolve_device(self) -> str:
        device = self.spec.device
        if device != "auto":
            return device
        try:
            import torch
        except ImportError:
            return "cpu"
        return "cuda" if torch.cuda.is_available() else "cpu"

    def load(self):
        """Load the model if not loaded yet, on exactly one visible GPU when on CUDA. Returns the model."""
        if self.load_count:
            return self.model
        device = self._resolve_device()
        if self.require_cuda and device != "cuda":
            raise LocasError(f"this actor has a GPU but runs on {device} on {self.node}: CUDA is broken or "
                             "hidden there (check nvidia-smi and the torch build); --device cpu runs on CPUs")
        if device == "cuda":
            import torch

            count = torch.cuda.device_count()
            if count != 1:
                raise LocasError(f"this worker sees {count} CUDA devices, expected exactly 1: give each actor "
                                 "num_gpus=1 (or set CUDA_VISIBLE_DEVICES to one device)")
            index = torch.cuda.current_device()
            self.device = f"cuda:{index} {torch.cuda.get_device_name(index)}"
        else:
            self.device = device
        self.model = self.loader(self.spec.replace(device=device))
        self.load_count += 1
        return self.model

    def info(self) -> dict:
        """Where this worker runs: node, device (None before the model is loaded), pid, load_count."""
        return {"node": self.node, "device": self.device, "pid": os.getpid(), "load_count": self.load_count}

    # ------------------------------------------------------------------ running
    def _stamp(self, unit: Unit, rows, attempts: dict, error: BaseException | None = None,
               trace: str | None = None) -> list[dict]:
        """The unit's rows with the keys that name it and where it ran. A failure is one error row, which
        carries its full `traceback` to the driver (the store keeps it in a file, the row one line)."""
        if error is None:
            try:
                rows = [dict(r) for r in rows]
            except Exception as e:  # noqa: BLE001 - a runner that returned something else than dicts
                error, trace = e, "".join(traceback.format_exception(e))
        if error is not None:
            rows = [{**error_row(error, item_id=unit.item_id), "attempts": attempts.get(unit.unit_id, 1),
                     "traceback": trace}]
        keys = {**row_keys(unit), "node": self.node, "device": self.device}
        return [{**row, **keys} for row in rows]

    def _run_group(self, model, units: list[Unit], attempts: dict) -> Iterator[tuple[str, list[dict]]]:
        """Units of one task and config together; if the runner fails, the units it left run one at a time,
        so the unit at fault ends as the only error row."""
        left = {u.unit_id: u for u in units}
        runner = self.runners.get(units[0].task)
        if runner is None:
            known = ", ".join(sorted(self.runners)) or "none"
            error = LocasError(f"no runner for task {units[0].task!r}; known tasks: {known}")
            for unit in units:
                yield unit.unit_id, self._stamp(unit, None, attempts, error)
            return
        failure = None
        try:
            for unit_id, rows in runner(model, units, self.slots, _progress_bars()):
                unit = left.pop(unit_id, None)
                if unit is None:
                    raise LocasError(f"runner answered unit {unit_id!r}, which it was not given or gave twice")
                yield unit_id, self._stamp(unit, rows, attempts)
        except Exception as e:  # noqa: BLE001 - one unit's failure must not stop the others
            # keep the text, not the frames: they hold the failed step's activations (GPU memory)
            trace = "".join(traceback.format_exception(e))
            failure = e.with_traceback(None)
            failure.__context__ = failure.__cause__ = None
        if failure is None:
            return
        _release_device_memory()
        if len(left) == 1:
            (unit,) = left.values()
            yield unit.unit_id, self._stamp(unit, None, attempts, failure, trace)
            return
        for unit in left.values():  # which of them failed: each alone
            yield from self._run_group(model, [unit], attempts)

    def run_units(self, units: list[Unit], attempts: dict[str, int] | None = None) -> Iterator[tuple[str, list[dict]]]:
        """Yield (unit_id, rows) per unit as each finishes. `attempts` (unit_id → attempt) goes into error rows.

        Consecutive units of one task and config run together; a failure to load the model raises (no unit
        is answered); a failing unit gives one error row.
        """
        attempts = attempts or {}
        units = list(units)
        model = self.load()
        i = 0
        while i < len(units):
            j = i + 1
            while j < len(units) and units[j].batch_key == units[i].batch_key:
                j += 1
            yield from self._run_group(model, units[i:j], attempts)
            i = j


def _load(spec: ModelSpec):
    """Load the served model through locas (imported here so this module imports without torch)."""
    from locas.model import load_for_worker

    return load_for_worker(spec)


def remote_worker_class(num_gpus: float = 0):
    """`Worker` as a Ray actor class: one GPU per actor (or one CPU when num_gpus == 0), never restarted.

    A dead actor is not restarted by Ray (max_restarts=0): the scheduler replaces it and re-queues its units.
    """
    import ray

    options = {"num_gpus": num_gpus, "max_restarts": 0, "max_task_retries": 0}
    if not num_gpus:
        options["num_cpus"] = 1
    return ray.remote(**options)(Worker)
