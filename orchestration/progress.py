"""The run's progress bar: how much of the run's work is done (named units done / total), the rate of what
the task really processes (tokens, or questions for MMLU), and an ETA.

Units are sized before any tokenizer is loaded (characters for books and conversations). While a unit runs,
its worker says how far it is (windows and questions done of their totals, tokens read: see
`Worker.progress`), so the bar moves inside a unit: the size done is the finished units' sizes plus each
running unit's size times its fraction done. The ETA extrapolates the time per unit of size done so far over
the size left, and the rate counts the finished units' rows plus what the running ones said. Both count the
time from when a worker first took a unit (after loading its model: loading is not work).

Beside the bar the console shows the tables, and not what the libraries print (`quiet_console`).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable


def quiet_console(verbose: bool) -> None:
    """Unless `verbose`: no Tune banners or tables (its old, silent output engine), no progress bars of the
    Hugging Face libraries and only their errors, MLflow's warnings only, on the driver (actors' output stays
    in Ray's logs)."""
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def format_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def fraction_done(counts: dict) -> float:
    """How much of a unit is done, from its worker's counts: the (done, total) pairs (windows, questions)
    summed, so a LoCoMo unit's questions weigh as much as its windows each."""
    pairs = [value for value in counts.values() if isinstance(value, (tuple, list))]
    total = sum(t for _, t in pairs)
    return min(1.0, sum(d for d, _ in pairs) / total) if total else 0.0


class Progress:
    """A tqdm bar over the run's size. `things` names the units ("books"), `counts` what the rate counts
    ("tokens": a worker's `tokens`, or "questions": its questions done), `amount(rows)` how many of those a
    finished unit's rows hold. `clock` is injectable (tests)."""

    def __init__(self, desc: str, things: str, counts: str, amount: Callable[[list[dict]], int],
                 enabled: bool = True, position: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.desc, self.things, self.counts, self.amount, self.enabled = desc, things, counts, amount, enabled
        self.position, self.clock = position, clock
        self.bar = None

    def start(self, units) -> None:
        self.total = len(units)
        self.size_total = sum(u.size for u in units)
        self.size_done = self.done = self.finished = 0
        self.inside: dict[str, tuple[float, int]] = {}  # unit_id → (size done, amount) of units in work
        self.began: float | None = None
        self.started = self.clock()
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max(1, self.size_total), desc=self.desc, dynamic_ncols=True, position=self.position,
                            bar_format="{l_bar}{bar}| [{elapsed}{postfix}]")
            self.bar.set_postfix_str(self.postfix())

    def _begin(self) -> None:
        """A unit finished before any was heard of (units shorter than a poll): time from the run's start."""
        if self.began is None:
            self.began = self.started

    def figures(self) -> tuple[float, float, float]:
        """(count per second, seconds left, fraction of the size done) as of now."""
        size = self.size_done + sum(s for s, _ in self.inside.values())
        done = self.done + sum(a for _, a in self.inside.values())
        elapsed = self.clock() - self.began if self.began is not None else 0.0
        if elapsed <= 0 or size <= 0:
            return 0.0, float("inf"), 0.0
        return done / elapsed, elapsed / size * (self.size_total - size), size / max(1, self.size_total)

    def postfix(self) -> str:
        rate, eta, _ = self.figures()
        return f"{self.finished}/{self.total} {self.things}, {rate:,.0f} {self.counts}/s, ETA {format_seconds(eta)}"

    def heard(self, unit, counts: dict) -> None:
        """A running unit says how far it is (its worker's counts, and the `seconds` it has run): the work
        began at the latest then."""
        started = self.clock() - counts.get("seconds", 0.0)
        self.began = started if self.began is None else min(self.began, started)
        amount = counts.get(self.counts, 0)
        amount = amount[0] if isinstance(amount, (tuple, list)) else amount
        self.inside[unit.unit_id] = (fraction_done(counts) * unit.size, int(amount))
        self._show()

    def advance(self, unit, rows: list[dict]) -> None:
        """A unit finished: its rows replace what it said while it ran."""
        self._begin()
        self.inside.pop(unit.unit_id, None)
        self.size_done += unit.size
        self.done += self.amount(rows)
        self.finished += 1
        self._show()

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.n = min(self.size_total, self.size_done + sum(s for s, _ in self.inside.values()))
            self.bar.set_postfix_str(self.postfix())

    def tick(self) -> None:
        self._show()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Polls:
    """The driver asking busy actors how far their units are (`Worker.progress`), at most every `every`
    seconds each, without waiting: each scheduler step takes the answers that are in and asks again."""

    def __init__(self, progress, every: float = 1.0):
        self.progress, self.every = progress, every
        self.pending: dict = {}  # ref → the actor asked
        self.asked: dict[int, float] = {}  # id(actor) → when it was last asked

    def step(self, actors, now: float) -> None:
        import ray

        if self.progress is None:
            return
        if self.pending:
            for ref in ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)[0]:
                self.answer(ref)
        waiting = {id(actor) for actor in self.pending.values()}
        for actor in actors:
            if actor.jobs and actor.stream is not None and id(actor) not in waiting \
                    and now - self.asked.get(id(actor), float("-inf")) >= self.every:
                self.asked[id(actor)] = now
                self.pending[actor.handle.progress.remote()] = actor

    def answer(self, ref) -> None:
        """An actor's answer: the counts of the units it still holds go to the bar (a dead actor's answer is
        dropped: its stream says it died)."""
        import ray
        from ray.exceptions import RayError

        actor = self.pending.pop(ref)
        try:
            counts = ray.get(ref)
        except RayError:
            return
        for unit_id, unit_counts in counts.items():
            job = actor.jobs.get(unit_id)
            if job is not None:
                self.progress.heard(job.unit, unit_counts)


class StudyProgress:
    """A study's display: one bar per run (its units, its rate, its ETA); a unit advances its run's bar."""

    def __init__(self, bars: dict[str, Progress]):
        self.bars = bars  # run_id → its bar

    def start(self, units) -> None:
        for run_id, bar in self.bars.items():
            bar.start([u for u in units if u.run_id == run_id])

    def heard(self, unit, counts: dict) -> None:
        self.bars[unit.run_id].heard(unit, counts)

    def advance(self, unit, rows: list[dict]) -> None:
        self.bars[unit.run_id].advance(unit, rows)

    def tick(self) -> None:
        for bar in self.bars.values():
            bar.tick()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
