"""A sweep as parsed from its command line: run_pg19.py's flags on the dev books plus the sweep's own, its space
expanded into trials. Used by `run_sweep.py` (Tune's loop) and by studies (a sweep's trials as ordinary runs)."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from locas.config import Settings, option
from locas.errors import LocasError
from locas.tasks import task
from locas.tasks.pg19.data import refuse_test_books
from orchestration.cli import Plan, build_parser, check_model, parse
from orchestration.flags import add_flags, from_flags
from orchestration.sweep.frontier import cost_levels
from orchestration.sweep.space import expand_space, parse_space

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
    test_data: str | None = option(None, "--data of the printed test command (default: this sweep's --data, "
                                   "whose test split it names)")
    best_per: str | None = option(None, "settings that set a cost level, e.g. steps_per_window: the best trial of "
                                  "each level goes into OUT/best_per_cost.yaml, a study of test runs beside Locas")
    frontier_output: str | None = option(None, "with --best_per, run that study right after the sweep into this "
                                         "folder (run_sweep.py: the tuned LoRA against Locas in one command)")


def sweep_parser(parser_class=argparse.ArgumentParser, description: str | None = None) -> argparse.ArgumentParser:
    """run_pg19.py's flags (the dev split by default), and the sweep's."""
    parser = build_parser(task("pg19"), description, parser_class)
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
    plan = parse(task("pg19"), argv, parser=parser or sweep_parser(), demo_name="sweep", demo_inputs=demo_inputs)
    sweep = from_flags(plan.args, SweepOptions)
    if plan.run.demo and not (sweep.grid or sweep.sample or sweep.space):
        sweep = sweep.replace(grid=DEMO_GRID)
    space = parse_space(sweep.grid, sweep.sample, sweep.space, sweep.num_samples,
                        sweep.sample_seed if sweep.sample_seed is not None else plan.cfg.seed)
    configs = expand_space(space, plan.cfg)
    cost_levels(sweep.best_per)
    if sweep.frontier_output and not sweep.best_per:
        raise LocasError("--frontier_output runs the study of --best_per: name its cost levels, e.g. "
                         "--best_per steps_per_window")
    refuse_test_books(plan.options.data, plan.options.split, allow_test=sweep.allow_test)
    if check_models:
        check_model(plan.spec, *configs)
    return SweepPlan(plan, sweep, space, configs)
