"""Ray Tune sweep of adaptation settings on PG-19's dev (validation) books; prints the best setting's test command.

    python orchestration/run_sweep.py --model Qwen/Qwen3-1.7B-Base --num_gpus 8 --max_books 10 \
        --max_tokens 50000 --window_size 2048 --grid memory_width=16,64 --grid memory_init=highest,random \
        --sample lr=loguniform:1e-4:1e-2 --num_samples 4 --asha --output runs/sweep-width-init-lr
    python orchestration/run_sweep.py --space orchestration/sweeps/example.yaml --data emozilla/pg19 \
        --split validation --num_gpus 8 --output runs/sweep-example
    python orchestration/run_sweep.py --demo   # tiny model, built-in books, local Ray, CPU
    ray job submit --working-dir . -- python orchestration/run_sweep.py --space orchestration/sweeps/example.yaml \
        --num_gpus 8 --tune_storage s3://YOUR_BUCKET/sweeps --output runs/sweep-example   # on a cluster

Sweepable: method, loss (--loss_function), memory_width, memory_init, lr, steps_per_window, window_size,
lora_rank, lora_alpha (`--grid NAME=a,b`, `--sample NAME=uniform:LO:HI|loguniform:LO:HI|randint:LO:HI|
lograndint:LO:HI|choice:A,B`, Tune's distributions: HI excluded for the integer ones); every other setting is
a fixed flag as in run_pg19.py. Rerunning the same command resumes: finished trials are skipped. The
per-trial table is OUT/trials.csv.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from locas.config import Settings, option
from locas.data.pg19 import load_books, refuse_test_books, test_source
from locas.errors import LocasError
from orchestration.cli import Plan, build_parser, check_model, cli_main, parse, resolve_output
from orchestration.flags import add_flags, from_flags
from orchestration.sweep.frontier import cost_levels, write_frontier
from orchestration.sweep.space import expand_space, parse_space
from orchestration.tasks import TASKS, split_list

SHOWN = ["trial", "method", "loss", "memory_width", "memory_init", "lr", "steps_per_window", "window_size",
         "lora_rank", "ppl", "books_done", "seconds", "status", "worker_pid", "loads"]
DEMO_GRID = ("memory_width=8,32", "memory_init=highest,random")


@dataclass(frozen=True)
class SweepOptions(Settings):
    grid: tuple[str, ...] = option((), "grid values of one setting, NAME=a,b (repeat the flag per setting)")
    sample: tuple[str, ...] = option((), "a sampled setting, NAME=DIST:ARGS (repeat the flag per setting)")
    space: str | None = option(None, "a YAML space file with grid:, sample:, num_samples:, seed:")
    num_samples: int | None = option(None, "draws of the sampled settings per grid point (default 1, or the YAML's)")
    sample_seed: int | None = option(None, "seed of the sampler (default: --seed)")
    gpus_per_trial: float | None = option(None, "GPUs per trial (default 1 when --num_gpus > 0)")
    asha: bool = option(False, "stop bad settings early (ASHA on the running PPL)")
    max_trials: int | None = option(None, "run at most this many unfinished trials now (rerun for the rest)")
    tune_storage: str | None = option(None, "where Tune keeps trial checkpoints (a lost node's trial resumes from "
                                      "them): on a cluster a URI or folder every node reaches (s3://bucket/path, "
                                      "an NFS mount); default OUT/tune on a local Ray")
    allow_test: bool = option(False, "allow sweeping on PG-19's test books (not advised)")
    test_data: str | None = option(None, "--data of the printed test command (default: the dev source when it "
                                   "holds the test split, else emozilla/pg19)")
    best_per: str | None = option(None, "settings that set a cost level, e.g. steps_per_window: the best trial of "
                                  "each level goes into OUT/best_per_cost.yaml, a study of test runs beside Locas")


def sweep_parser(parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    """run_pg19.py's flags (the dev split by default), and the sweep's."""
    parser = build_parser(TASKS["pg19"], __doc__.splitlines()[0], parser_class)
    add_flags(parser, SweepOptions, "sweep")
    parser.set_defaults(split="validation")
    return parser


@dataclass
class SweepPlan:
    """A sweep as parsed: the run's plan (its flags), the sweep's options, its space and its trials' configs;
    `trials` are the same plans with each trial's config, for a study (one run folder per trial)."""

    plan: Plan
    sweep: SweepOptions
    space: object
    configs: list

    @property
    def trials(self) -> list[Plan]:
        output = Path(self.plan.run.output)
        return [dataclasses.replace(self.plan, cfg=cfg, run=self.plan.run.replace(output=str(output / cfg.config_id)))
                for cfg in self.configs]


def plan_sweep(argv, parser=None, demo_inputs: Path | None = None, check_models: bool = True) -> SweepPlan:
    """Flags → the sweep's plan: its space expanded into trials, the test split refused (unless allowed), the
    trial configs checked against the model. Nothing is written."""
    plan = parse(TASKS["pg19"], argv, parser=parser or sweep_parser(), demo_task="sweep", demo_inputs=demo_inputs)
    sweep = from_flags(plan.args, SweepOptions)
    if plan.run.demo and not (sweep.grid or sweep.sample or sweep.space):
        sweep = sweep.replace(grid=DEMO_GRID)
    space = parse_space(sweep.grid, sweep.sample, sweep.space, sweep.num_samples,
                        sweep.sample_seed if sweep.sample_seed is not None else plan.cfg.seed)
    configs = expand_space(space, plan.cfg)
    cost_levels(sweep.best_per)
    refuse_test_books(plan.options.data, plan.options.split, allow_test=sweep.allow_test)
    if check_models:
        check_model(plan.spec, *configs)
    return SweepPlan(plan, sweep, space, configs)


@cli_main
def main(argv=None):
    from orchestration.cluster import gpus, start_ray
    from orchestration.sweep.driver import run_sweep

    planned = plan_sweep(argv)
    plan, sweep, space, configs = planned.plan, planned.sweep, planned.space, planned.configs
    books = load_books(plan.options.data, split=plan.options.split, ids=split_list(plan.options.book_ids),
                       max_books=plan.options.max_books)
    refuse_test_books(plan.options.data, plan.options.split, [b.book_id for b in books], allow_test=sweep.allow_test)
    print(f"sweep: {len(configs)} trials x {len(books)} books ({plan.options.data}, split {plan.options.split})")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C: "rerun the same command", not Tuner.restore
    local = start_ray(plan.run.demo)
    if not local and not sweep.tune_storage:
        raise LocasError("on a cluster, --tune_storage is required: a URI or folder every node reaches "
                         "(s3://bucket/sweeps, an NFS mount) for the trials' checkpoints; the run folder stays "
                         f"{plan.run.output}")
    storage = sweep.tune_storage
    if storage and "://" not in storage:
        storage = str(resolve_output(storage))
    with gpus(plan.run.num_gpus, plan.run.gpu_timeout, plan.run.cluster_config, local):
        result = run_sweep(configs, plan.spec, books, plan.run.output, data=plan.options.data,
                           split=plan.options.split, varied=tuple(space.params), num_gpus=plan.run.num_gpus,
                           gpus_per_trial=sweep.gpus_per_trial, num_workers=plan.run.num_workers, asha=sweep.asha,
                           batch_size=plan.run.batch_size, test_data=sweep.test_data,
                           progress=not plan.run.no_progress, max_trials=sweep.max_trials,
                           storage_path=storage)
    print(f"trials: {result.ran} ran now, {result.skipped} already finished"
          + (f", {len(result.remaining)} not finished yet: rerun the same command" if result.remaining else ""))
    if len(result.table):
        print(result.table[SHOWN].to_string(index=False))
    if result.best_command:
        print(f"best: trial {result.best['trial']} ppl {result.best['ppl']:.4f}; on the test set run:\n"
              f"{result.best_command}")
    else:
        print("best: no trial completed every book")
    if sweep.best_per and result.best_command:
        path, command = write_frontier(result.trials_csv.parent, result.table, cost_levels(sweep.best_per),
                                       {c.config_id: c for c in configs}, plan.spec,
                                       sweep.test_data or test_source(plan.options.data), plan.run.num_gpus)
        print(f"best per {sweep.best_per}: {path}; on the test set, beside Locas, run:\n{command}")
    print(f"trials: {result.trials_csv}\nsummary: {result.trials_csv.parent / 'summary.json'}")


if __name__ == "__main__":
    raise SystemExit(main())
