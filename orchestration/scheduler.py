"""The scheduler: a plain `ray.wait` loop that keeps every worker actor busy, longest units first.

    counts = Scheduler(make_worker, store, num_workers=4, slots=1).run(units)

- Units already in the store's ledger are skipped (resume).
- Each actor holds up to `slots` units. Units go out longest first (by `size`), `slots` at a time per
  actor, as one `run_units` call that the actor streams back (`num_returns="streaming"`): each unit's rows
  are appended to the store by the driver as soon as that unit finishes. An actor is refilled (with
  `slots` units again) once every unit of its call is back: the actor is single-threaded, so units sent
  earlier could not join the running batch anyway.
- A unit that raises inside the worker comes back as an error row (made by the worker); its ledger status
  is "failed" and the rest go on.
- Actors start as soon as they are made but only receive units once they are up (placed on a node, which on
  an autoscaling cluster may first have to be launched): work starts on the first actor that comes up and
  the others join as they arrive.
- An actor that dies (process crash, OOM, node loss) is killed for good and replaced via `make_worker()`.
  The units of the call it was running are charged an attempt and retried alone (so an innocent unit
  that shared the batch with the culprit gets a clean attempt), at most `max_attempts` attempts in all,
  then a failure row. Units queued behind that call had not started: they go back uncharged.
- A failure outside any unit (the model does not load, an actor that cannot be created) stops the run
  with a LocasError; nothing is written for the units it touched, so a rerun retries them.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

from locas.errors import LocasError, error_row, one_line
from orchestration.progress import Progress
from orchestration.store import RunStore
from orchestration.units import Unit, row_keys


@dataclass
class _Job:
    unit: Unit
    attempt: int = 1  # the attempt its next dispatch will be
    solo: bool = False  # retried after an actor died: runs in a call of its own


@dataclass
class _Call:
    gen: object  # ray.ObjectRefGenerator
    jobs: dict  # unit_id → _Job, not yet returned


@dataclass
class _Actor:
    handle: object
    free: int
    up: object  # the ref of its `info()` call: resolved once the actor runs (then set to True)
    calls: list = field(default_factory=list)  # in submission order = execution order


class Scheduler:
    """Runs units on up to `num_workers` actors made by `make_worker()` (a Ray actor handle whose
    `run_units(units, attempts)` streams (unit_id, rows)), writing each unit to `store` as it finishes.

    `progress` (a Progress, or None) advances per unit; `on_rows(unit, rows, status)` is called after a
    unit is in the store. `run` returns counts: total, skipped, done, failed, requeued (units retried after
    their actor died), worker_deaths (actors lost and replaced), seconds.
    """

    def __init__(self, make_worker: Callable[[], object], store: RunStore, num_workers: int, slots: int = 1,
                 max_attempts: int = 2, progress: Progress | None = None,
                 on_rows: Callable[[Unit, list, str], None] | None = None):
        if num_workers < 1 or slots < 1 or max_attempts < 1:
            raise LocasError(f"num_workers, slots and max_attempts must be >= 1 "
                             f"(got {num_workers}, {slots}, {max_attempts})")
        self.make_worker, self.store, self.num_workers, self.slots = make_worker, store, num_workers, slots
        self.max_attempts, self.progress, self.on_rows = max_attempts, progress, on_rows
        self.pending: list = []  # heap of (-size, seq, job): longest first, then input order
        self.order = itertools.count()
        self.actors: list[_Actor] = []
        self.by_gen: dict = {}  # generator → (actor, call)
        self.starting: dict = {}  # info ref → actor not up yet
        self.created: list = []  # every handle made here, killed at the end
        self.counts: dict = {}
        self.remaining = 0
        self.workers: set = set()  # (node, device) of every actor that answered a unit

    # ---- queue and dispatch ---------------------------------------------------------------------------
    def _push(self, job: _Job) -> None:
        heapq.heappush(self.pending, (-job.unit.size, next(self.order), job))

    def _submit(self, actor: _Actor) -> None:
        """Send the actor's free slots the longest waiting units, as calls of one batch each."""
        while actor.free > 0 and self.pending:
            batch: list[_Job] = []
            while len(batch) < actor.free and self.pending:
                job = self.pending[0][2]
                if job.solo and batch:
                    break
                heapq.heappop(self.pending)
                batch.append(job)
                if job.solo:
                    break
            gen = actor.handle.run_units.options(num_returns="streaming").remote(
                [j.unit for j in batch], {j.unit.unit_id: j.attempt for j in batch})
            call = _Call(gen, {j.unit.unit_id: j for j in batch})
            actor.calls.append(call)
            actor.free -= len(batch)
            self.by_gen[gen] = (actor, call)

    def _add_actors(self) -> None:
        """Fill idle actors that are up, then start actors (up to num_workers) for what is left."""
        for actor in self.actors:
            if actor.up is True and actor.free == self.slots:
                self._submit(actor)
        in_flight = sum(len(c.jobs) for a in self.actors for c in a.calls)
        while len(self.actors) < min(self.num_workers, len(self.pending) + in_flight) and self.pending:
            handle = self.make_worker()
            self.created.append(handle)
            actor = _Actor(handle, self.slots, handle.info.remote())
            self.actors.append(actor)
            self.starting[actor.up] = actor

    # ---- results ----------------------------------------------------------------------------------------
    def _record(self, unit: Unit, rows: list, status: str, attempt: int) -> None:
        try:
            self.store.append(unit.unit_id, rows, status)
        except LocasError as e:  # rows that are not JSON-able: keep the run going with an error row
            status = "failed"
            where = {"node": rows[0].get("node"), "device": rows[0].get("device")} if rows else {}
            rows = [{**error_row(e, item_id=unit.item_id), "attempts": attempt, **row_keys(unit), **where}]
            self.store.append(unit.unit_id, rows, status)
        self.counts["done" if status == "done" else "failed"] += 1
        self.remaining -= 1
        if self.progress is not None:
            self.progress.advance(unit, rows)
        if self.on_rows is not None:
            self.on_rows(unit, rows, status)

    def _result(self, actor: _Actor, call: _Call, unit_id: str, rows: list) -> None:
        job = call.jobs.pop(unit_id, None)
        if job is None:
            raise RuntimeError(f"worker returned unit {unit_id!r} it was not given")
        status = "failed" if any(r.get("kind") == "error" for r in rows) else "done"
        if rows:
            self.workers.add((rows[0].get("node"), rows[0].get("device")))
        self._record(job.unit, rows, status, job.attempt)
        actor.free += 1
        if actor.free == self.slots:  # the whole call is back: refill it with a full batch
            self._submit(actor)

    # ---- deaths -----------------------------------------------------------------------------------------
    def _drop(self, actor: _Actor) -> None:
        import ray

        for call in actor.calls:
            self.by_gen.pop(call.gen, None)
        self.starting.pop(actor.up, None)
        self.actors.remove(actor)
        try:
            ray.kill(actor.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def _death(self, actor: _Actor, err: BaseException) -> None:
        """An actor died: the units of its running call are charged an attempt and retried alone (or fail
        for good after max_attempts); units queued behind it go back uncharged."""
        running = next((c for c in actor.calls if c.jobs), None)
        for call in actor.calls:
            for job in call.jobs.values():
                if call is not running:
                    self._push(job)
                elif job.attempt >= self.max_attempts:
                    why = f"worker died on all {job.attempt} attempts; last: {one_line(err, 300)}"
                    row = {**error_row(why, item_id=job.unit.item_id), "attempts": job.attempt,
                           **row_keys(job.unit), "node": None, "device": None}
                    self._record(job.unit, [row], "failed", job.attempt)
                else:
                    self.counts["requeued"] += 1
                    self._push(dataclasses.replace(job, attempt=job.attempt + 1, solo=True))
        self._drop(actor)
        self.counts["worker_deaths"] += 1

    @staticmethod
    def _fatal(err: BaseException) -> LocasError:
        cause = getattr(err, "cause", None) or err
        return LocasError(f"a worker failed outside any unit, stopping the run: {one_line(cause, 500)}")

    # ---- the loop ---------------------------------------------------------------------------------------
    def _started(self, ref) -> None:
        """An actor came up (its `info()` answered): give it work; or it could not be created at all."""
        import ray
        from ray.exceptions import RayActorError

        actor = self.starting.pop(ref)
        try:
            ray.get(ref)
        except RayActorError as e:
            if e.actor_init_failed:
                raise self._fatal(e) from None
            self._death(actor, e)
            self._add_actors()
            return
        actor.up = True
        self._submit(actor)

    def _step(self) -> None:
        """Wait (at most a second) for an actor to come up, one unit's rows, or a death, and handle it."""
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        ready, _ = ray.wait([*self.starting, *self.by_gen], num_returns=1, timeout=1.0)
        if not ready:
            if self.progress is not None:
                self.progress.tick()
            return
        if ready[0] in self.starting:
            self._started(ready[0])
            return
        actor, call = self.by_gen[ready[0]]
        try:
            ref = next(ready[0])
        except StopIteration:
            self.by_gen.pop(ready[0], None)
            actor.calls.remove(call)
            if call.jobs:  # the worker ended a call without returning some units: a worker bug
                raise RuntimeError(f"worker returned no result for {sorted(call.jobs)}") from None
            return
        try:
            unit_id, rows = ray.get(ref)
        except RayActorError as e:
            if e.actor_init_failed:
                raise self._fatal(e) from None
            self._death(actor, e)
            self._add_actors()
            return
        except RayTaskError as e:
            raise self._fatal(e) from None
        except RayError as e:  # object or node lost: treat the actor as gone
            self._death(actor, e)
            self._add_actors()
            return
        self._result(actor, call, unit_id, rows)

    def run(self, units: list[Unit]) -> dict:
        """Run every unit not yet finished in the store; returns the counts."""
        import ray

        units = list(units)
        seen = set()
        for u in units:
            if u.unit_id in seen:
                raise LocasError(f"unit {u.unit_id} is listed twice; unit ids must be unique")
            seen.add(u.unit_id)
        finished = self.store.finished()
        todo = [u for u in units if u.unit_id not in finished]
        self.counts = {"total": len(units), "skipped": len(units) - len(todo), "done": 0, "failed": 0,
                       "requeued": 0, "worker_deaths": 0, "seconds": 0.0}
        if not todo:
            return self.counts
        for u in todo:
            self._push(_Job(u))
        self.remaining = len(todo)
        if self.progress is not None:
            self.progress.start(todo)
        started = time.monotonic()
        try:
            self._add_actors()
            while self.remaining > 0:
                if not self.by_gen and not self.starting:
                    self._add_actors()
                    if not self.by_gen and not self.starting:
                        raise RuntimeError("scheduler has units left but nothing running")  # a bug, not a user error
                    continue
                self._step()
        finally:
            if self.progress is not None:
                self.progress.close()
            for handle in self.created:
                try:
                    ray.kill(handle, no_restart=True)
                except Exception:  # noqa: BLE001 - already dead
                    pass
        self.counts["seconds"] = time.monotonic() - started
        return self.counts
