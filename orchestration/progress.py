"""The run's progress bar: units done / total (named for what they are), the rate of what the task really
processes (tokens, or questions for MMLU, counted from the finished units' rows), and an ETA.

Units are sized before any tokenizer is loaded (characters for books and conversations), so the ETA
extrapolates the time per unit of size done so far over the size left; the rate shown is real tokens.
"""
from __future__ import annotations

import time
from typing import Callable


def format_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """A tqdm bar over units. `things` names the units ("books"), `counts` what the rate counts ("tokens"),
    `amount(rows)` how many of those a finished unit's rows hold."""

    def __init__(self, desc: str, things: str, counts: str, amount: Callable[[list[dict]], int],
                 enabled: bool = True, position: int | None = None):
        self.desc, self.things, self.counts, self.amount, self.enabled = desc, things, counts, amount, enabled
        self.position = position
        self.bar = None

    def start(self, units) -> None:
        self.started = time.monotonic()
        self.size_total = sum(u.size for u in units)
        self.size_done = self.done = 0
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(units), desc=self.desc, unit=self.things.rstrip("s"), dynamic_ncols=True,
                            position=self.position,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} " + self.things + " [{elapsed}{postfix}]")

    def postfix(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        eta = elapsed / self.size_done * (self.size_total - self.size_done) if self.size_done else float("inf")
        return f"{self.done / elapsed:,.0f} {self.counts}/s, ETA {format_seconds(eta)}"

    def advance(self, unit, rows: list[dict]) -> None:
        self.size_done += unit.size
        self.done += self.amount(rows)
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.update(1)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StudyProgress:
    """A study's display: one bar per run (its units, its rate, its ETA); a unit advances its run's bar."""

    def __init__(self, bars: dict[str, Progress]):
        self.bars = bars  # run_id → its bar

    def start(self, units) -> None:
        for run_id, bar in self.bars.items():
            bar.start([u for u in units if u.run_id == run_id])

    def advance(self, unit, rows: list[dict]) -> None:
        self.bars[unit.run_id].advance(unit, rows)

    def tick(self) -> None:
        for bar in self.bars.values():
            bar.tick()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
