"""A study on one pool against its runs one after another, on local CPU actors.

    python -m benchmarks.bench_study                  # studies/demo.yaml, 2 actors

The same runs (the demo study: every task, a tiny model, built-in text) go once through `run_study`, all
units on one pool of actors that load the model once, and once run by run as the entry scripts do, each run
starting its own actors and loading the model again. Prints both makespans, their ratio (target <= 0.8 with
2 actors) and the model loads per actor.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import tempfile
import time
from pathlib import Path

STUDY = Path(__file__).resolve().parents[1] / "studies" / "demo.yaml"


def one_by_one(study: Path, output: Path, workers: int) -> tuple[float, list]:
    """Every ordinary run of the study on actors of its own, as `run_pg19.py` etc. would run them."""
    from orchestration.run import Part, run
    from orchestration.study import plan_study

    loads = []
    start = time.perf_counter()
    for study_run in plan_study(study, output, demo=True):
        for _, plan in study_run.plans:
            plan = dataclasses.replace(plan, run=plan.run.replace(num_workers=workers, no_progress=True))
            loads += run([Part.of(plan)], plan.run).loads
    return time.perf_counter() - start, loads


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default=str(STUDY))
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    import ray

    from orchestration.cli import RunOptions
    from orchestration.study import run_study

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        pool = RunOptions(output=f"{tmp}/study", num_workers=args.workers, demo=True, no_progress=True)
        start = time.perf_counter()
        run_study(args.study, pool, report=False)
        study = time.perf_counter() - start
        sequential, loads = one_by_one(Path(args.study), Path(tmp) / "sequential", args.workers)
    figures = {"date": datetime.date.today().isoformat(), "study": Path(args.study).name, "actors": args.workers,
               "study_makespan_s": round(study, 1), "sequential_makespan_s": round(sequential, 1),
               "study_over_sequential": round(study / sequential, 3),
               "sequential_model_loads_per_actor": loads}
    print(json.dumps(figures, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
