"""The worker: one long-lived process per GPU (or CPU slot) that keeps its model loaded and runs units.

`Worker` is a plain class: tests, notebooks and Tune trials use it without Ray (`run_units`). The scheduler
wraps it with `remote_worker_class(num_gpus)`: it starts `run_stream` once, as a Ray streaming generator,
and `give`s units as slots free; each unit's rows reach the driver as soon as that unit finishes:

    Actor = remote_worker_class(num_gpus=1)
    actor = Actor.remote(ModelSpec(model="Qwen/Qwen3-1.7B-Base"))
    stream = actor.run_stream.options(num_returns="streaming").remote()
    actor.give.remote(units)                      # any time, from the driver's thread
    for ref in stream:
        unit_id, rows = ray.get(ref)

Every runner takes a source of units and yields (unit_id, rows) as each finishes (each task's `task.py`);
consecutive units of one model, task and config go to it together: documents batched along the memory's
batch axis, a freed slot taking the next unit at once. A unit that raises becomes one error row and the
worker goes on. A failure outside any unit (the model does not load, no CUDA where a GPU was asked for)
raises out of the stream, which the scheduler treats as fatal for the run.
"""
from __future__ import annotations

import gc
import os
import socket
import sys
import threading
import time
import traceback
from typing import Callable, Iterator

from locas.config import ModelSpec
from locas.contract import Unit, row_keys, unit_error_rows
from locas.documents import Source
from locas.errors import LocasError
from orchestration.inbox import Inbox


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


class Meter:
    """How far the units this worker runs are, as the runners say (`meter(unit_id, windows=..., tokens=...)`),
    and for how many seconds each has run (from when its runner took it); the driver reads it
    (`Worker.progress`) from another thread while the stream runs."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, dict] = {}
        self.taken: dict[str, float] = {}

    def begin(self, unit_id: str) -> None:
        with self.lock:
            self.taken[unit_id] = time.monotonic()

    def __call__(self, unit_id: str, **counts) -> None:
        with self.lock:
            self.counts.setdefault(unit_id, {}).update(counts)

    def drop(self, unit_id: str) -> None:
        with self.lock:
            self.counts.pop(unit_id, None)
            self.taken.pop(unit_id, None)

    def read(self) -> dict[str, dict]:
        with self.lock:
            now = time.monotonic()
            return {unit_id: {**counts, "seconds": now - self.taken.get(unit_id, now)}
                    for unit_id, counts in self.counts.items()}


class Worker:
    """Loads a model (lazily, on the first unit that needs it; again only when a unit needs another) and runs
    units through the task runners.

    `spec`: the model of units that name none. `loader(spec) -> model` and `runners` (task → runner) are
    injectable (tests pass fakes); by default the model loads through locas and the runners are the
    registered tasks' (`locas.tasks`; the run path passes those of its run). `require_cuda`: the actor was
    given a GPU, so running on the CPU (a broken CUDA) is refused. How many documents of one group it adapts
    at once is its units' `batch`.
    """

    def __init__(self, spec: ModelSpec, runners: dict | None = None, loader: Callable | None = None,
                 require_cuda: bool = False):
        if runners is None:
            from orchestration.tasks import runners as task_runners

            runners = task_runners()
        self.spec, self.runners, self.require_cuda = spec, dict(runners), require_cuda
        self.loader = loader or _load
        self.model, self.loaded = None, None  # the model in memory and the spec it was loaded from
        self.load_count = 0
        self.node = node_name()
        self.device = None  # set on load: "cpu" or e.g. "cuda:0 NVIDIA H100 80GB HBM3"
        self.inbox = Inbox()
        self.attempts: dict[str, int] = {}
        self.meter = Meter()

    # ------------------------------------------------------------------ loading
    def _resolve_device(self, spec: ModelSpec) -> str:
        if spec.device != "auto":
            return spec.device
        try:
            import torch
        except ImportError:
            return "cpu"
        return "cuda" if torch.cuda.is_available() else "cpu"

    def load(self, spec: ModelSpec | None = None):
        """The model of `spec` (default: the worker's), loaded unless it is the one in memory, on exactly one
        visible GPU when on CUDA."""
        spec = spec or self.spec
        if self.loaded == spec:
            return self.model
        device = self._resolve_device(spec)
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
        self.model = self.loaded = None
        gc.collect()
        _release_device_memory()  # one model on a GPU at a time
        self.model = self.loader(spec.replace(device=device))
        self.loaded = spec
        self.load_count += 1
        return self.model

    def latency(self, unit: Unit, batch_sizes) -> dict:
        """{"latency": seconds of one window step by batch size} for units like `unit`, measured here (their
        model loaded), or None where its task does not batch."""
        probe = getattr(self.runners.get(unit.task), "latency", None)
        if probe is None:
            return {"latency": None}
        return {"latency": probe(self.load(unit.spec), unit, batch_sizes)}

    def progress(self) -> dict[str, dict]:
        """unit_id → how far it is (its runner's counts: windows, tokens, questions), for the units in work."""
        return self.meter.read()

    def info(self) -> dict:
        """Where this worker runs: node, device (None before a model is loaded), pid, load_count."""
        return {"node": self.node, "device": self.device, "pid": os.getpid(), "load_count": self.load_count}

    # ------------------------------------------------------------------ running
    def _stamp(self, unit: Unit, rows, error: BaseException | None = None, trace: str | None = None) -> list[dict]:
        """The unit's rows with the keys that name it and where it ran. A failure is one error row, which
        carries its full `traceback` to the driver (the store keeps it in a file, the row one line)."""
        if error is None:
            try:
                rows = [dict(r) for r in rows]
            except Exception as e:  # noqa: BLE001 - a runner that returned something else than dicts
                error, trace = e, "".join(traceback.format_exception(e))
        where = {"node": self.node, "device": self.device}
        if error is not None:
            return unit_error_rows(unit, error, self.attempts.get(unit.unit_id, 1), where, trace)
        keys = {**row_keys(unit), **where}
        return [{**row, **keys} for row in rows]

    def _run_group(self, units: Source) -> Iterator[tuple[str, list[dict]]]:
        """Units of one model, task and config, taken from `units` as the runner frees slots. If the runner
        fails, the units it had taken and not answered run again one at a time, so the unit at fault ends
        as the only error row; the units not taken yet stay in the inbox."""
        head = units.take(wait=True)
        if head is None:
            return
        runner = self.runners.get(head.task)
        if runner is None:
            known = ", ".join(sorted(self.runners)) or "none"
            error = LocasError(f"no runner for task {head.task!r}; known tasks: {known}")
            for unit in [head, *units]:
                yield unit.unit_id, self._stamp(unit, None, error)
            return
        model = self.load(head.spec)
        taken = Taken(head, units, self.meter)
        failure = None
        try:
            for unit_id, rows in runner(model, taken, head.batch, self.meter):
                unit = taken.left.pop(unit_id, None)
                if unit is None:
                    raise LocasError(f"runner answered unit {unit_id!r}, which it was not given or gave twice")
                self.meter.drop(unit_id)
                self.inbox.finished_one()
                yield unit_id, self._stamp(unit, rows)
        except Exception as e:  # noqa: BLE001 - one unit's failure must not stop the others
            # keep the text, not the frames: they hold the failed step's activations (GPU memory)
            trace = "".join(traceback.format_exception(e))
            failure = e.with_traceback(None)
            failure.__context__ = failure.__cause__ = None
        if failure is None:
            return
        for unit_id in taken.left:  # their counts start again with their retry
            self.meter.drop(unit_id)
        _release_device_memory()
        if len(taken.left) == 1:
            (unit,) = taken.left.values()
            yield unit.unit_id, self._stamp(unit, None, failure, trace)
            return
        for unit in taken.left.values():  # which of them failed: each alone
            yield from self._run_group(Source.of([unit]))

    def give(self, units: list[Unit], attempts: dict[str, int] | None = None, answer: bool = False) -> None:
        """More units for the stream; `attempts` (unit_id → attempt) goes into their error rows. `answer`:
        the driver's answer to a unit this worker finished (a runner filling a freed slot waits for it)."""
        self.attempts.update(attempts or {})
        self.inbox.put(list(units), answer)

    def close(self) -> None:
        """No more units: the stream ends once it has answered every unit given."""
        self.inbox.close()

    def run_stream(self) -> Iterator[tuple[str, list[dict]]]:
        """Yield (unit_id, rows) per unit as each finishes, the units given so far and those still to come,
        until `close`. A failure to load a model raises (no unit of it is answered)."""
        while (head := self.inbox.head()) is not None:
            yield from self._run_group(self.inbox.group(head.batch_key))

    def run_units(self, units: list[Unit], attempts: dict[str, int] | None = None) -> Iterator[tuple[str, list[dict]]]:
        """`units` alone, as a stream that is closed from the start: (unit_id, rows) per unit as each finishes."""
        self.inbox = Inbox()
        self.give(units, attempts)
        self.close()
        yield from self.run_stream()


class Taken(Source):
    """The units a runner takes, starting with `head` (whose model, task and config are the whole group's),
    each remembered in `left` until answered, and its start told to `meter`."""

    def __init__(self, head: Unit, rest: Source, meter: Meter | None = None):
        self.head, self.rest, self.left, self.meter = head, rest, {head.unit_id: head}, meter
        self._next: Unit | None = head

    def take(self, wait: bool) -> Unit | None:
        unit = self._next if self._next is not None else self.rest.take(wait)
        self._next = None
        if unit is not None:
            self.left[unit.unit_id] = unit
            if self.meter is not None:
                self.meter.begin(unit.unit_id)
        return unit


def _load(spec: ModelSpec):
    """Load the served model through locas (imported here so this module imports without torch)."""
    from locas.loading import load_for_worker

    return load_for_worker(spec)


def remote_worker_class(num_gpus: float = 0):
    """`Worker` as a Ray actor class: one GPU per actor (or one CPU when num_gpus == 0), never restarted.

    A dead actor is not restarted by Ray (max_restarts=0): the scheduler replaces it and re-queues its units.
    `give`, `close` and `progress` run on a thread of their own, so units arrive (and the driver hears how far
    they are) while the stream runs.
    """
    import ray

    class RemoteWorker(Worker):
        @ray.method(concurrency_group="inbox")
        def give(self, units, attempts=None, answer=False):
            super().give(units, attempts, answer)

        @ray.method(concurrency_group="inbox")
        def close(self):
            super().close()

        @ray.method(concurrency_group="inbox")
        def progress(self):
            return super().progress()

    options = {"num_gpus": num_gpus, "max_restarts": 0, "max_task_retries": 0, "concurrency_groups": {"inbox": 1}}
    if not num_gpus:
        options["num_cpus"] = 1
    return ray.remote(**options)(RemoteWorker)
