"""Scheduler efficiency on local Ray actors: the PG-19 test books replayed with a measured step-latency table.

    python -m benchmarks.bench_scheduler                       # 1, 2 and 8 actors, eager H100 latencies
    python -m benchmarks.bench_scheduler --latency 1:0.046,8:0.330 --actors 8   # the compiled table

The books are the 99 of ../shared/data/pg19/test_lengths.csv (characters, ~4.3 per Qwen3 token; 2,048-token
windows). Each is a unit whose runner adapts no model: a step of `b` books batched sleeps the table's
latency L(b), scaled down by --scale, and advances each book one window. Everything else is the real path:
the Scheduler (with its deadline admission), Worker streams, inboxes and continuous refill on Ray actors.
Prints, per number of actors, the makespan over the bound max(total windows · best cost per window /
actors, longest book · L(1)), both in unscaled seconds.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import sys
import tempfile
import time

from benchmarks.common import SHARED
from orchestration.policy import StepLatency

EAGER_H100 = "1:0.163,4:0.279,8:0.533"  # Qwen3-1.7B shape, window 2,048 (issue 13)


def book_windows(window: int = 2048, chars_per_token: float = 4.3) -> list[int]:
    with open(SHARED / "data" / "pg19" / "test_lengths.csv") as handle:
        return [math.ceil(int(row["chars_lf"]) / chars_per_token / (window - 1)) for row in csv.DictReader(handle)]


TOKENS_PER_WINDOW = 100


def simulated_runner(latency: StepLatency, scale: float):
    """A task runner that sleeps instead of adapting: a step of b units (at most `slots`) takes
    latency(b)·scale and moves each of them one window (TOKENS_PER_WINDOW tokens) on, which it tells
    `progress`; a freed slot takes the next unit at once. Its `latency` is the table."""
    def run(model, units, slots, progress):
        active: dict[str, list] = {}  # unit_id → [unit, windows left, batch it joined, step it joined]
        step = 0
        while True:
            while len(active) < slots and (unit := units.take(wait=not active)) is not None:
                active[unit.unit_id] = [unit, unit.payload["windows"], len(active) + 1, step]
            if not active:
                return
            time.sleep(latency(len(active)) * scale)
            step += 1
            for unit_id, entry in list(active.items()):
                entry[1] -= 1
                if progress is not None:
                    done = entry[0].payload["windows"] - entry[1]
                    progress(unit_id, windows=(done, entry[0].payload["windows"]), tokens=done * TOKENS_PER_WINDOW)
                if entry[1] == 0:
                    unit, _, joined, at = active.pop(unit_id)
                    yield unit_id, [{"kind": "bench", "windows": unit.payload["windows"], "joined_batch": joined,
                                     "joined_step": at, "ended_step": step, "pid": os.getpid()}]

    run.latency = lambda model, unit, batch_sizes: {b: latency(b) * scale for b in batch_sizes}
    return run


def fake_loader(spec):
    return object()


def bench_units(windows: list[int], batch: int = 8):
    from locas.contract import Unit

    return [Unit(f"bench:{i}:r", "bench", str(i), size=w, payload={"windows": w}, run_id="r", steps=w, batch=batch)
            for i, w in enumerate(windows)]


def makespan(units, actors: int, latency: StepLatency, scale: float, output: str) -> float:
    """Seconds (unscaled) to run `units` on `actors` local actors through the Scheduler, with the latency
    table given (as a measured one would be). The actors are started first: starting processes is not
    scheduling, and scaled-down time would magnify it."""
    import ray

    from locas.config import ModelSpec
    from orchestration.scheduler import Scheduler
    from orchestration.store import RunStore
    from orchestration.worker import remote_worker_class

    store = RunStore(output).open("bench", {"bench": True}, "r")
    runner = simulated_runner(latency, scale)
    started = [remote_worker_class(0).remote(ModelSpec(model="none", device="cpu"), {"bench": runner}, fake_loader)
               for _ in range(actors)]
    ray.get([actor.info.remote() for actor in started])
    scaled = StepLatency({b: s * scale for b, s in latency.points})
    start = time.perf_counter()
    Scheduler(started.pop, store, num_workers=actors, latency=scaled).run(units)
    return (time.perf_counter() - start) / scale


def bound(windows: list[int], actors: int, slots: int, latency: StepLatency) -> float:
    _, per_window = latency.best(slots)
    return max(sum(windows) * per_window / actors, max(windows) * latency(1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", default=EAGER_H100, help="batch:seconds,... of one window step")
    p.add_argument("--actors", default="1,2,8", help="numbers of actors to run with")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--scale", type=float, default=0.2, help="time scale of the replay")
    args = p.parse_args(argv)

    import ray

    latency = StepLatency.parse(args.latency)
    windows = book_windows()
    counts = [int(a) for a in args.actors.split(",")]
    ray.init(num_cpus=max(counts), include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    figures = {"date": datetime.date.today().isoformat(), "books": len(windows), "windows": sum(windows),
               "longest_book_windows": max(windows), "latency": args.latency, "scale": args.scale}
    with tempfile.TemporaryDirectory() as tmp:
        for actors in counts:
            span = makespan(bench_units(windows, args.slots), actors, latency, args.scale, f"{tmp}/a{actors}")
            limit = bound(windows, actors, args.slots, latency)
            figures[f"{actors}_actors"] = {"makespan_s": round(span, 1), "bound_s": round(limit, 1),
                                           "makespan_over_bound": round(span / limit, 3)}
    print(json.dumps(figures, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
