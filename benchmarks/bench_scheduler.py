"""Scheduler efficiency on a local Ray: makespan against its lower bound, and per-unit dispatch overhead.

    python -m benchmarks.bench_scheduler --units 60 --workers 2

Units sleep in proportion to their size; sizes follow the PG-19 test books' lengths (the books in
../shared/data/pg19/books, resampled with jitter; a log-normal fit of PG-19 lengths when that is absent).
Prints makespan / max(total work / workers, longest unit), and the overhead per dispatched unit.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import tempfile
import time

from benchmarks.common import SHARED


def book_sizes(count: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    books = sorted((SHARED / "data" / "pg19" / "books").glob("*.txt"))
    lengths = [p.stat().st_size for p in books] or None
    if lengths:
        return [int(rng.choice(lengths) * rng.uniform(0.7, 1.3)) for _ in range(count)]
    return [int(rng.lognormvariate(13.0, 0.6)) for _ in range(count)]  # ~440 KB median, as PG-19


def sleeping_runner(model, units, slots, progress):
    for unit in units:
        time.sleep(unit.payload["seconds"])
        yield unit.unit_id, [{"kind": "bench", "seconds": unit.payload["seconds"]}]


def fake_loader(spec):
    return object()


def run(units, workers, output):
    from locas.config import ModelSpec
    from orchestration.scheduler import Scheduler
    from orchestration.store import RunStore
    from orchestration.worker import remote_worker_class

    store = RunStore(output).open("bench", {"bench": True}, "bench")
    actor = remote_worker_class(0)

    def make_worker():
        return actor.remote(ModelSpec(model="none", device="cpu"), {"bench": sleeping_runner}, fake_loader)

    start = time.perf_counter()
    Scheduler(make_worker, store, num_workers=workers).run(units)
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=60)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds_per_mb", type=float, default=1.0, help="simulated work per MB of book text")
    p.add_argument("--overhead_units", type=int, default=200, help="empty units for the dispatch overhead")
    args = p.parse_args(argv)

    import ray

    from orchestration.units import Unit

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    sizes = book_sizes(args.units)
    work = [s / 1e6 * args.seconds_per_mb for s in sizes]
    units = [Unit(f"bench:{i}:x", "bench", str(i), s, {"seconds": w}) for i, (s, w) in enumerate(zip(sizes, work))]
    empty = [Unit(f"bench:e{i}:x", "bench", f"e{i}", 0, {"seconds": 0.0}) for i in range(args.overhead_units)]
    with tempfile.TemporaryDirectory() as tmp:
        run(units[:2], args.workers, f"{tmp}/warm")  # actor start-up is not the scheduler's cost
        makespan = run(units, args.workers, f"{tmp}/units")
        empty_span = run(empty, args.workers, f"{tmp}/empty")
    bound = max(sum(work) / args.workers, max(work))
    figures = {"date": datetime.date.today().isoformat(), "units": args.units, "workers": args.workers,
               "total_work_s": sum(work), "longest_unit_s": max(work), "makespan_s": makespan,
               "makespan_over_bound": makespan / bound,
               "dispatch_overhead_ms_per_unit": 1000 * empty_span * args.workers / args.overhead_units}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
