"""How many documents each actor adapts at once, and which: deadline admission over a step-latency model.

A window step of `b` documents batched takes `L(b)` seconds: longer than one document's step, but far less
than `b` of them, so a full batch has the best cost per window while a lone document finishes soonest. With
documents of very unequal length (PG-19's longest book is ~290 windows of 2,048, most are under 50), a batch
of 8 around the longest book makes it the last to finish. The policy (found by simulating the test books'
lengths, in benchmarks/RESULTS.md) keeps a deadline and admits a document to an actor only if every
document there still ends by it:

    P(t) = max(L(1) · longest unit,  t + windows left · best cost per window / actors)   projected end
    D    = P(t) + eps · P(0)                                                              the deadline
    u may join actor a (n = its documents + 1, never more than the batch with the best cost per window)
        iff  t + need(v) · L(n) <= D  for u and every document v already on a

`need` is a document's estimated windows left, inflated by `margin` since sizes are estimated from
characters. Pending units go longest first, each to the fitting actor with the fewest documents (an idle
actor takes a unit that fits nowhere); so the longest books run alone or in small batches while short ones
fill large batches, the tail shrinks by itself, and an actor that joins late is one with free slots.
"""
from __future__ import annotations

from dataclasses import dataclass

from locas.errors import LocasError


class StepLatency:
    """Seconds of one window step by batch size, linear between (and beyond) the sizes measured."""

    def __init__(self, seconds: dict[int, float]):
        if not seconds or any(b < 1 or not s > 0 for b, s in seconds.items()):
            raise LocasError(f"a step latency needs positive seconds for batch sizes >= 1, got {seconds!r}")
        self.points = sorted(seconds.items())

    @classmethod
    def parse(cls, text: str) -> "StepLatency":
        """From `1:0.163,4:0.279,8:0.533` (batch size: seconds)."""
        try:
            pairs = [part.split(":") for part in text.split(",") if part.strip()]
            return cls({int(b): float(s) for b, s in pairs})
        except ValueError:
            raise LocasError(f"step latency {text!r}: write batch:seconds pairs, e.g. 1:0.163,4:0.279,8:0.533") from None

    def __call__(self, b: int) -> float:
        points = self.points if len(self.points) > 1 else [(0, 0.0), *self.points]
        (b0, s0), (b1, s1) = next(((p, q) for p, q in zip(points, points[1:]) if b <= q[0]), points[-2:])
        return s0 + (s1 - s0) * (b - b0) / (b1 - b0)

    def best(self, largest: int) -> tuple[int, float]:
        """(the batch size up to `largest` with the least seconds per window, those seconds)."""
        return min(((b, self(b) / b) for b in range(1, largest + 1)), key=lambda p: (p[1], p[0]))


@dataclass
class Placed:
    """A unit on an actor: its estimated windows, and when it was given (seconds since the run started)."""

    steps: int
    given: float


class DeadlineAdmission:
    """Chooses which pending units go to which actors (see the module's docstring); times are seconds since
    the run started."""

    def __init__(self, planned_actors: int, eps: float = 0.05, margin: float = 0.10):
        self.planned, self.eps, self.margin = planned_actors, eps, margin
        self.slack: float | None = None

    def need(self, placed: Placed, latency: StepLatency, batch: int, now: float) -> float:
        done = (now - placed.given) / latency(max(1, batch))
        return max(placed.steps * (1 + self.margin) - done, 1.0)

    def deadline(self, now: float, pending_steps: list[int], actors: list, latency: StepLatency, batch: int) -> float:
        """P(t) + eps · P(0), for the actors that are up (each with `.placed` and `.latency`) batching at most
        `batch` units."""
        _, per_window = latency.best(batch)
        left = sum(pending_steps) + sum(self.need(p, a.latency, len(a.placed), now)
                                        for a in actors for p in a.placed.values())
        longest = max([*pending_steps, *(p.steps for a in actors for p in a.placed.values())], default=0)
        projected = max(latency(1) * longest / (1 + self.margin),
                        now + left * per_window / max(self.planned, len(actors), 1))
        if self.slack is None:
            self.slack = self.eps * projected
        return projected + self.slack

    def fits(self, actor, steps: int, batch: int, deadline: float, now: float) -> bool:
        n = len(actor.placed) + 1
        if n > actor.latency.best(batch)[0]:
            return False
        step = actor.latency(n)
        newcomer = Placed(steps, now)
        return all(now + self.need(p, actor.latency, n, now) * step <= deadline
                   for p in [*actor.placed.values(), newcomer])
