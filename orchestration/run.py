"""The one run path: ordinary run folders (one from an entry script, many from a study) on one pool of actors.

    result = run([Part.of(plan)], plan.run)        # what run_pg19.py does after parsing
    result = run(parts, pool, on_update=...)       # a study: every run's units on the same actors

`run` starts or joins Ray, asks for the pool's GPUs (`cluster`, which a Tune sweep uses too), opens every
part's store, hands their unfinished units to one `Scheduler` over `Worker` actors, records where the units
ran, and writes each part's summary. A Tune sweep keeps Tune's own loop (search, ASHA, `FailureConfig`,
checkpoints) and uses the pieces: `cluster` here, `Worker` in its trials, the store and `sweep.trials`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestration.tasks import documents_at_once, run_config


@dataclass
class Part:
    """One ordinary run folder of a run: its plan (an `orchestration.cli.Plan`), its config and run id, its
    store once open, and how its units stand."""

    folder: Path
    label: str  # its progress bar's name
    plan: object
    config: dict
    run_id: str
    store: object = None
    units: list = field(default_factory=list)
    done: int = 0
    failed: int = 0
    workers: set = field(default_factory=set)  # (node, device) of the actors that answered its units
    tracker: object = None  # its MLflow run (orchestration.tracking.Tracker), when tracked
    results: object = None  # its folder as read once every unit ran (analysis.load.Runs), for its summary

    @classmethod
    def of(cls, plan, folder: Path | None = None, label: str | None = None) -> "Part":
        """The run folder of `plan` (default its --output) with its units, planned from its data."""
        config, run_id = run_config(plan.task, plan.spec, plan.cfg, plan.options)
        units = plan.task.units(plan.options, plan.cfg, run_id)
        return cls(Path(folder or plan.run.output), label or plan.task.name, plan, config, run_id, units=units)


@dataclass
class Result:
    counts: dict  # the scheduler's: total, skipped, done, failed, requeued, worker_deaths, seconds
    loads: list[int]  # models each actor loaded


@contextlib.contextmanager
def cluster(pool, started: Callable[[bool], None] = lambda local: None):
    """Ray started (a local one for --demo or when there is no cluster) or joined, then `started(local)` (a
    check that refuses before any GPU is asked for), and the pool's GPUs asked for (the first one up); yields
    whether this process started Ray. The GPU request ends with the block."""
    from orchestration.cluster import gpus, start_ray

    local = start_ray(pool.demo, pool.verbose)
    started(local)
    with gpus(pool.num_gpus, pool.gpu_timeout, pool.cluster_config, local):
        yield local


def run(parts: list[Part], pool, on_update: Callable | None = None, parent: str | None = None) -> Result:
    """Run every unit of `parts` not yet finished on one pool of actors (`pool`: an `orchestration.cli.RunOptions`),
    then write each part's summary. `on_update(part)` is called once every store is open (part None) and after
    each unit of a part is in its folder. A folder that holds another run is refused before Ray starts. With a
    tracking URI (`orchestration.tracking`) each part is an MLflow run, nested under the run id `parent`."""
    from orchestration.store import RunStore
    from orchestration.tracking import tracking_uri

    for part in parts:
        RunStore(part.folder).refuse_other(part.plan.task.name, part.config, part.run_id)
    uri = tracking_uri(pool.tracking, pool.output)
    with cluster(pool):
        return _run(parts, pool, on_update or (lambda part: None), uri, parent)


def _run(parts: list[Part], pool, on_update, uri: str | None, parent: str | None) -> Result:
    import ray

    from analysis.load import load_run
    from locas.contract import DONE
    from orchestration.policy import StepLatency
    from orchestration.progress import Progress, StudyProgress
    from orchestration.scheduler import Scheduler
    from orchestration.store import RunStore
    from orchestration.tracking import Tracker, killed_on_error
    from orchestration.worker import remote_worker_class

    resources = ray.cluster_resources()
    on_gpu = bool(pool.num_gpus)
    units, bars = [], {}
    for position, part in enumerate(parts):
        task, plan = part.plan.task, part.plan
        part.store = RunStore(part.folder).open(task.name, part.config, part.run_id, resources, pool.retry_failed)
        batch = documents_at_once(task, plan.cfg, on_gpu, plan.run.batch_size)
        part.units = [dataclasses.replace(u, spec=plan.spec, batch=batch) for u in part.units]
        part.done = len(part.store.finished() & {u.unit_id for u in part.units})
        units += part.units
        bars[part.run_id] = Progress(part.label, task.things, task.counts, task.amount, not pool.no_progress,
                                     position if len(parts) > 1 else None)
        part.tracker = Tracker.start(uri, part.store, task.amount, task.counts, parent, part.label)
    by_run = {p.run_id: p for p in parts}
    on_update(None)

    def recorded(unit, rows, status):
        part = by_run[unit.run_id]
        part.done, part.failed = part.done + (status == DONE), part.failed + (status != DONE)
        part.workers |= {(r.get("node"), r.get("device")) for r in rows[:1] if r.get("node") is not None}
        on_update(part)
        if part.tracker is not None:
            part.tracker.unit_done(unit, rows, status)

    actor_class = remote_worker_class(num_gpus=1 if on_gpu else 0)
    spec = parts[0].plan.spec  # the model of an actor that has not taken a unit yet
    require_cuda = on_gpu and all(p.plan.spec.device != "cpu" for p in parts)
    latency = StepLatency.parse(pool.step_latency) if pool.step_latency else None
    runners = {p.plan.task.name: p.plan.task.run for p in parts}  # the workers run what the driver registered
    scheduler = Scheduler(lambda: actor_class.remote(spec, runners, require_cuda=require_cuda),
                          {p.run_id: p.store for p in parts}, num_workers=pool.num_gpus or pool.num_workers,
                          progress=None if pool.no_progress else StudyProgress(bars), on_rows=recorded,
                          latency=latency)
    with killed_on_error([p.tracker for p in parts]):
        counts = scheduler.run(units)
    for part in parts:
        known = {(w["node"], w["device"]) for w in part.store.manifest.get("workers", [])}  # earlier runs
        workers = sorted(known | part.workers, key=str)
        part.store.update_manifest(workers=[{"node": n, "device": d} for n, d in workers])
        part.results = load_run(part.store.path)
        summary = part.plan.task.summary(part.results)
        part.store.write_summary(summary)
        if part.tracker is not None:
            part.tracker.finish(summary)
    return Result(counts, scheduler.loads)


def units_line(counts: dict) -> str:
    """What a run (or a study) did with its units, for the user."""
    lost = (f"; {counts['worker_deaths']} worker(s) lost, {counts['requeued']} unit(s) retried"
            if counts["worker_deaths"] else "")
    return f"units: {counts['done']} done, {counts['failed']} failed, {counts['skipped']} already finished{lost}"
