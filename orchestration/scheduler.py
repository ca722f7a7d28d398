"""The scheduler: a plain `ray.wait` loop that keeps every worker actor busy, longest units first.

    counts = run_units(units, make_worker, store, num_workers=4, slots=1)

- Units already in the store's ledger are skipped (resume).
- Each actor holds up to `slots` units. Units go out longest first (by `size`), `slots` at a time per
  actor, as one `run_units` call that the actor streams back (`num_returns="streaming"`): each unit's rows
  are appended to the store by the driver as soon as that unit finishes. An actor is refilled (with
  `slots` units again) once every unit of its call is back: the actor is single-threaded, so units sent
  earlier could not join the running batch anyway, and a full call keeps batches whole. Longest-first
  order puts units of similar size in one batch, which keeps the slots freed early in a batch few.
- A unit that raises inside the worker comes back as an error row (made by the worker); its ledger status
  is "failed" and the rest go on.
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
from typing import Callable, Iterable

from locas.errors import LocasError
from orchestration.store import RunStore
from orchestration.worker import error_row, one_line


@dataclass(frozen=True)
class Unit:
    """One item of work under one config; `payload` is what the worker's runner needs (JSON-able)."""

    unit_id: str
    task: str
    item_id: str
    size: int
    payload: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.unit_id, str) or not self.unit_id:
            raise LocasError(f"a unit needs a non-empty string unit_id, got {self.unit_id!r}")
        if not isinstance(self.size, int) or self.size < 0:
            raise LocasError(f"unit {self.unit_id}: size must be a non-negative int (tokens), got {self.size!r}")


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
    calls: list = field(default_factory=list)  # in submission order = execution order


def _fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class _Progress:
    """units done/total, tokens/s (sizes of units finished in this run / elapsed) and a token-based ETA."""

    def __init__(self, total_units: int, total_tokens: int, enabled: bool, desc: str):
        self.start = time.monotonic()
        self.tokens_total = total_tokens
        self.tokens_done = 0
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_units, desc=desc, unit="unit", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} units [{elapsed}{postfix}]")

    def postfix(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.tokens_done / elapsed
        eta = (self.tokens_total - self.tokens_done) / rate if rate > 0 else float("inf")
        return f"{rate:,.0f} tok/s, ETA {_fmt_seconds(eta)}"

    def advance(self, tokens: int) -> None:
        self.tokens_done += tokens
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.update(1)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_units(units: Iterable[Unit], make_worker: Callable[[], object], store: RunStore, num_workers: int,
              slots: int = 1, max_attempts: int = 2, progress: bool = True,
              on_rows: Callable[[Unit, list, str], None] | None = None) -> dict:
    """Run every unit not yet in `store` on up to `num_workers` actors made by `make_worker()`.

    `make_worker()` returns a Ray actor handle whose `run_units(units, attempts)` is a generator of
    (unit_id, rows) (e.g. `remote_worker_class(n).remote(spec, runners)`). `on_rows(unit, rows, status)`
    is called by the driver after each unit is in the store. Returns counts: total, skipped, done, failed,
    requeued (units retried after their actor died), worker_deaths (actors lost and replaced), tokens (sizes
    of the units run now), seconds.
    """
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    units = list(units)
    if num_workers < 1 or slots < 1 or max_attempts < 1:
        raise LocasError(f"num_workers, slots and max_attempts must be >= 1 "
                         f"(got {num_workers}, {slots}, {max_attempts})")
    seen = set()
    for u in units:
        if u.unit_id in seen:
            raise LocasError(f"unit {u.unit_id} is listed twice; unit ids must be unique")
        seen.add(u.unit_id)
    finished = store.finished()
    todo = [u for u in units if u.unit_id not in finished]
    counts = {"total": len(units), "skipped": len(units) - len(todo), "done": 0, "failed": 0,
              "requeued": 0, "worker_deaths": 0, "tokens": 0, "seconds": 0.0}
    if not todo:
        return counts

    order = itertools.count()
    pending: list = []  # heap of (-size, seq, job): longest first, then input order

    def push(job: _Job) -> None:
        heapq.heappush(pending, (-job.unit.size, next(order), job))

    for u in todo:
        push(_Job(u))
    remaining = len(todo)
    progress_bar = _Progress(len(todo), sum(u.size for u in todo), progress, desc=todo[0].task)
    actors: list[_Actor] = []
    by_gen: dict = {}  # generator → (actor, call)
    created: list = []  # every handle made here, killed at the end
    started = time.monotonic()

    def record(unit: Unit, rows: list, status: str, attempt: int) -> None:
        nonlocal remaining
        try:
            store.append(unit.unit_id, rows, status)
        except LocasError as e:  # rows that are not JSON-able: keep the run going with an error row
            status = "failed"
            rows = [{**error_row(unit, one_line(e), attempt), "node": rows[0].get("node") if rows else None,
                     "device": rows[0].get("device") if rows else None}]
            store.append(unit.unit_id, rows, status)
        counts["done" if status == "done" else "failed"] += 1
        counts["tokens"] += unit.size
        remaining -= 1
        progress_bar.advance(unit.size)
        if on_rows is not None:
            on_rows(unit, rows, status)

    def submit(actor: _Actor) -> None:
        while actor.free > 0 and pending:
            batch: list[_Job] = []
            while len(batch) < actor.free and pending:
                job = pending[0][2]
                if job.solo and batch:
                    break
                heapq.heappop(pending)
                batch.append(job)
                if job.solo:
                    break
            gen = actor.handle.run_units.options(num_returns="streaming").remote(
                [j.unit for j in batch], {j.unit.unit_id: j.attempt for j in batch})
            call = _Call(gen, {j.unit.unit_id: j for j in batch})
            actor.calls.append(call)
            actor.free -= len(batch)
            by_gen[gen] = (actor, call)

    def add_actors() -> None:
        """Fill idle live actors, then start actors (up to num_workers) for what is left."""
        for actor in actors:
            if actor.free == slots:
                submit(actor)
        in_flight = sum(len(c.jobs) for a in actors for c in a.calls)
        while len(actors) < min(num_workers, len(pending) + in_flight) and pending:
            handle = make_worker()
            created.append(handle)
            actors.append(_Actor(handle, slots))
            submit(actors[-1])

    def drop(actor: _Actor) -> None:
        for call in actor.calls:
            by_gen.pop(call.gen, None)
        actors.remove(actor)
        try:
            ray.kill(actor.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def on_death(actor: _Actor, err: BaseException) -> None:
        running = next((c for c in actor.calls if c.jobs), None)
        for call in actor.calls:
            for job in call.jobs.values():
                if call is not running:
                    push(job)  # had not started: back uncharged
                elif job.attempt >= max_attempts:
                    why = f"worker died on all {job.attempt} attempts; last: {one_line(err, 300)}"
                    record(job.unit, [{**error_row(job.unit, why, job.attempt), "node": None, "device": None}],
                           "failed", job.attempt)
                else:
                    counts["requeued"] += 1
                    push(dataclasses.replace(job, attempt=job.attempt + 1, solo=True))
        drop(actor)
        counts["worker_deaths"] += 1

    def fatal(err: BaseException) -> LocasError:
        cause = getattr(err, "cause", None) or err
        return LocasError(f"a worker failed outside any unit, stopping the run: {one_line(cause, 500)}")

    try:
        add_actors()
        while remaining > 0:
            gens = list(by_gen)
            if not gens:
                add_actors()
                if not by_gen:
                    raise RuntimeError("scheduler has units left but nothing running")  # a bug, not a user error
                continue
            ready, _ = ray.wait(gens, num_returns=1, timeout=1.0)
            if not ready:
                progress_bar.tick()
                continue
            gen = ready[0]
            actor, call = by_gen[gen]
            try:
                ref = next(gen)
            except StopIteration:
                by_gen.pop(gen, None)
                actor.calls.remove(call)
                if call.jobs:  # the worker ended a call without returning some units: a worker bug
                    raise RuntimeError(f"worker returned no result for {sorted(call.jobs)}")
                continue
            try:
                unit_id, rows = ray.get(ref)
            except RayActorError as e:
                if e.actor_init_failed:
                    raise fatal(e) from None
                on_death(actor, e)
                add_actors()
                continue
            except RayTaskError as e:
                raise fatal(e) from None
            except RayError as e:  # object or node lost: treat the actor as gone
                on_death(actor, e)
                add_actors()
                continue
            job = call.jobs.pop(unit_id, None)
            if job is None:
                raise RuntimeError(f"worker returned unit {unit_id!r} it was not given")
            status = "failed" if any(r.get("kind") == "error" for r in rows) else "done"
            record(job.unit, rows, status, job.attempt)
            actor.free += 1
            if actor.free == slots:  # the whole call is back: refill it with a full batch
                submit(actor)
    finally:
        progress_bar.close()
        for handle in created:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass
    counts["seconds"] = time.monotonic() - started
    return counts
