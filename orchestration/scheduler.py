"""The scheduler: a `ray.wait` loop that keeps every worker actor busy, longest units first.

    counts = Scheduler(make_worker, stores, num_workers=4).run(units)

- Units already in their run folder's ledger are skipped (resume). `stores` maps each unit's `run_id` to its
  run folder (a study's runs share the pool), or is one folder for every unit.
- Actors only receive units once they are up (placed on a node, which an autoscaler may first launch): work
  starts on the first actor up and the others join as they arrive.
- Each actor runs one long stream (`Worker.run_stream`) and is given units while it runs: a freed slot takes
  its next unit at once. Which units an actor holds follows `orchestration.policy` (with a step-latency
  model, given or measured on each actor, deadline admission runs the longest units alone or in small
  batches and fills large batches with short ones; else up to a unit's `batch`), only units of one model,
  task and config at once, preferring units of the model it has loaded.
- A unit that raises comes back as an error row (made by the worker); a unit with a failed row is ledgered
  "failed" (`locas.contract.unit_status`) and the rest go on.
- An actor that dies (process crash, OOM, node loss) is killed for good and replaced via `make_worker()`. The
  units it held are charged an attempt and retried alone (so an innocent unit that shared the batch with the
  culprit gets a clean attempt), at most `max_attempts` attempts in all, then a failure row.
- A failure outside any unit (a model does not load, an actor cannot be created) stops the run (LocasError);
  nothing is written for the units it touched, so a rerun retries them.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from locas.contract import FAILED, Unit, unit_error_rows, unit_status
from locas.errors import LocasError, one_line
from orchestration.policy import DeadlineAdmission, Placed, StepLatency
from orchestration.progress import Polls, Progress
from orchestration.store import RunStore

BATCHES_MEASURED = (1, 2, 4, 8)


@dataclass
class _Job:
    unit: Unit
    attempt: int = 1  # the attempt its next dispatch will be
    solo: bool = False  # retried after an actor died: runs alone


@dataclass
class _Actor:
    handle: object
    pending_ref: object  # the ref the actor is waiting on to start: its `info()`, then its `latency()`
    latency: StepLatency | None = None
    stream: object = None  # its run_stream generator, once started
    jobs: dict = field(default_factory=dict)  # unit_id → _Job it holds
    placed: dict = field(default_factory=dict)  # unit_id → Placed, for the policy
    loaded: object = None  # the model spec of the units it last took

    @property
    def key(self):
        return next(iter(self.jobs.values())).unit.batch_key if self.jobs else None


class Scheduler:
    """Runs units on up to `num_workers` actors made by `make_worker()` (a Ray actor handle of
    `remote_worker_class`), writing each unit to its run folder as it finishes.

    `progress` (a Progress, or None) hears running units (`Polls`), advances per unit; `on_rows(unit, rows,
    status)` is called after a unit is in its folder; `latency` fixes the step-latency model (else measured
    per actor). `run` returns counts: total, skipped, done, failed, requeued, worker_deaths, seconds."""

    def __init__(self, make_worker: Callable[[], object], stores: RunStore | dict, num_workers: int,
                 max_attempts: int = 2, progress: Progress | None = None,
                 on_rows: Callable[[Unit, list, str], None] | None = None, latency: StepLatency | None = None):
        if num_workers < 1 or max_attempts < 1:
            raise LocasError(f"num_workers and max_attempts must be >= 1 (got {num_workers}, {max_attempts})")
        self.make_worker, self.stores, self.num_workers = make_worker, stores, num_workers
        self.max_attempts, self.progress, self.on_rows, self.latency = max_attempts, progress, on_rows, latency
        self.policy = DeadlineAdmission(num_workers)
        self.loads: list[int] = []  # models each actor loaded, collected when the run ends
        self.pending: list[_Job] = []  # longest first, then input order
        self.actors: list[_Actor] = []
        self.starting: dict = {}  # pending ref → actor not started yet
        self.by_stream, self.polls = {}, Polls(progress)  # stream → actor; the questions about progress
        self.created: list = []  # every handle made here, killed at the end
        self.counts: dict = {}
        self.remaining = 0
        self.started = time.monotonic()

    def _now(self) -> float:
        """Seconds since the run started: the policy's clock."""
        return time.monotonic() - self.started

    def store(self, unit: Unit) -> RunStore:
        return self.stores if isinstance(self.stores, RunStore) else self.stores[unit.run_id]

    # ---- actors ---------------------------------------------------------------------------------------
    def _add_actors(self) -> None:
        """Start actors, up to num_workers, for the units that are waiting or held."""
        held = sum(len(a.jobs) for a in self.actors)
        while len(self.actors) < min(self.num_workers, len(self.pending) + held) and self.pending:
            handle = self.make_worker()
            self.created.append(handle)
            actor = _Actor(handle, handle.info.remote())
            self.actors.append(actor)
            self.starting[actor.pending_ref] = actor

    def _started(self, ref) -> None:
        """An actor answered `info()` (it is up) or `latency()`: measure its step latency where batches need
        it, else start its stream and give it work. An actor that cannot be created stops the run."""
        import ray
        from ray.exceptions import RayActorError

        actor = self.starting.pop(ref)
        try:
            answer = ray.get(ref)
        except RayActorError as e:
            self._actor_error(actor, e)
            return
        if isinstance(answer, dict) and "latency" in answer:  # its measured step latency
            actor.latency = StepLatency(answer["latency"]) if answer["latency"] else None
        elif self.latency is None and self.pending and self.pending[0].unit.batch > 1:
            actor.pending_ref = actor.handle.latency.remote(self.pending[0].unit, BATCHES_MEASURED)
            self.starting[actor.pending_ref] = actor
            return
        actor.latency = actor.latency or self.latency
        actor.stream = actor.handle.run_stream.options(num_returns="streaming").remote()
        self.by_stream[actor.stream] = actor
        self._admit()

    # ---- admission ------------------------------------------------------------------------------------
    def _fits(self, actor: _Actor, job: _Job, deadline: float | None, now: float) -> bool:
        if actor.jobs and (job.solo or any(j.solo for j in actor.jobs.values()) or actor.key != job.unit.batch_key):
            return False  # a retried unit runs alone; an actor batches one model, task and config
        if deadline is None or actor.latency is None or job.unit.batch == 1:
            return len(actor.jobs) < job.unit.batch
        return self.policy.fits(actor, job.unit.steps, job.unit.batch, deadline, now)

    def _admit(self, answering: _Actor | None = None) -> None:
        """Give waiting units to the actors they fit (see orchestration.policy), longest first. `answering`:
        the actor that just finished a unit, which gets an answer even if no unit (its worker waits for it)."""
        up = [a for a in self.actors if a.stream is not None]
        given: dict = {id(answering): (answering, [])} if answering is not None else {}
        now = self._now()
        models = [a.latency for a in up if a.latency is not None]
        batch = max((j.unit.batch for j in self.pending), default=1)
        deadline = (self.policy.deadline(now, [j.unit.steps for j in self.pending], up, models[0], batch)
                    if models and self.pending else None)
        for job in list(self.pending):
            fitting = [a for a in up if self._fits(a, job, deadline, now)] or [a for a in up if not a.jobs]
            if not fitting:
                continue
            actor = min(fitting, key=lambda a: (a.loaded != job.unit.spec, len(a.jobs), self.actors.index(a)))
            self.pending.remove(job)
            actor.jobs[job.unit.unit_id] = job
            actor.placed[job.unit.unit_id] = Placed(job.unit.steps, now)
            actor.loaded = job.unit.spec
            given.setdefault(id(actor), (actor, []))[1].append(job)
        for actor, jobs in given.values():
            actor.handle.give.remote([j.unit for j in jobs], {j.unit.unit_id: j.attempt for j in jobs},
                                     answer=actor is answering)

    def _push(self, job: _Job) -> None:
        self.pending.append(job)
        self.pending.sort(key=lambda j: -j.unit.size)  # stable: input order among equal sizes

    # ---- results ----------------------------------------------------------------------------------------
    def _record(self, unit: Unit, rows: list, status: str, attempt: int) -> None:
        store = self.store(unit)
        try:
            store.append(unit.unit_id, rows, status)
        except LocasError as e:  # rows that are not JSON-able: keep the run going with an error row
            status = FAILED
            rows = unit_error_rows(unit, e, attempt, rows[0] if rows else {})
            store.append(unit.unit_id, rows, status)
        self.counts["done" if status == "done" else "failed"] += 1
        self.remaining -= 1
        if self.progress is not None:
            self.progress.advance(unit, rows)
        if self.on_rows is not None:
            self.on_rows(unit, rows, status)

    def _result(self, actor: _Actor, unit_id: str, rows: list) -> None:
        job = actor.jobs.pop(unit_id, None)
        actor.placed.pop(unit_id, None)
        if job is None:
            raise RuntimeError(f"worker returned unit {unit_id!r} it was not given")
        self._record(job.unit, rows, unit_status(rows), job.attempt)
        self._admit(answering=actor)

    # ---- deaths -----------------------------------------------------------------------------------------
    def _death(self, actor: _Actor, err: BaseException) -> None:
        """An actor died: its units are charged an attempt and retried alone (or fail for good after
        max_attempts); a replacement actor is started."""
        for job in actor.jobs.values():
            if job.attempt >= self.max_attempts:
                why = f"worker died on all {job.attempt} attempts; last: {one_line(err, 300)}"
                self._record(job.unit, unit_error_rows(job.unit, why, job.attempt, {}), FAILED, job.attempt)
            else:
                self.counts["requeued"] += 1
                self._push(dataclasses.replace(job, attempt=job.attempt + 1, solo=True))
        self.by_stream.pop(actor.stream, None)
        self.starting.pop(actor.pending_ref, None)
        self.actors.remove(actor)
        _kill(actor.handle)
        self.counts["worker_deaths"] += 1
        self._add_actors()
        self._admit()

    def _actor_error(self, actor: _Actor, err: BaseException) -> None:
        """An actor that could not be created stops the run (its replacement would fail alike); one that
        died after starting is a death."""
        if err.actor_init_failed:
            raise self._fatal(err) from None
        self._death(actor, err)

    @staticmethod
    def _fatal(err: BaseException) -> LocasError:
        cause = getattr(err, "cause", None) or err
        return LocasError(f"a worker failed outside any unit, stopping the run: {one_line(cause, 500)}")

    def _close(self) -> list[int]:
        """Every unit is in: end the actors' streams and ask each how many models it loaded."""
        import ray

        for actor in self.actors:
            actor.handle.close.remote()
        try:
            return [info["load_count"] for info in ray.get([a.handle.info.remote() for a in self.actors], timeout=60)]
        except Exception:  # noqa: BLE001 - informational: the run's results are all in already
            return []

    # ---- the loop ---------------------------------------------------------------------------------------
    def _step(self) -> None:
        """Wait (at most a second) for an actor to start, one unit's rows, or a death, and handle it."""
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        self.polls.step(self.actors, self._now())  # how far running units are, for the bar
        ready, _ = ray.wait([*self.starting, *self.by_stream], num_returns=1, timeout=1.0)
        if not ready:
            if self.progress is not None:
                self.progress.tick()
            return
        if ready[0] in self.starting:
            self._started(ready[0])
            return
        actor = self.by_stream[ready[0]]
        try:
            unit_id, rows = ray.get(next(ready[0]))
        except StopIteration:  # the stream ended without a close: a worker bug
            raise RuntimeError(f"worker stream ended holding {sorted(actor.jobs)}") from None
        except RayActorError as e:
            self._actor_error(actor, e)
            return
        except RayTaskError as e:
            raise self._fatal(e) from None
        except RayError as e:  # object or node lost: treat the actor as gone
            self._death(actor, e)
            return
        self._result(actor, unit_id, rows)

    def run(self, units: list[Unit]) -> dict:
        """Run every unit not yet finished in its run folder; returns the counts."""
        units = list(units)
        twice = [uid for uid, n in Counter(u.unit_id for u in units).items() if n > 1]
        if twice:
            raise LocasError(f"unit {twice[0]} is listed twice; unit ids must be unique")
        todo = [u for u in units if u.unit_id not in self.store(u).finished()]
        self.counts = {"total": len(units), "skipped": len(units) - len(todo), "done": 0, "failed": 0,
                       "requeued": 0, "worker_deaths": 0, "seconds": 0.0}
        if not todo:
            return self.counts
        for u in todo:
            self._push(_Job(u))
        self.remaining = len(todo)
        if self.progress is not None:
            self.progress.start(todo)
        self.started = time.monotonic()
        try:
            self._add_actors()
            while self.remaining > 0:
                if not self.by_stream and not self.starting:
                    raise RuntimeError("scheduler has units left but no actor")  # a bug, not a user error
                self._step()
            self.loads = self._close()
        finally:
            if self.progress is not None:
                self.progress.close()
            for handle in self.created:
                _kill(handle)
        self.counts["seconds"] = self._now()
        return self.counts


def _kill(handle) -> None:
    """Kill an actor for good (one already gone is fine)."""
    import ray
    try:
        ray.kill(handle, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass
