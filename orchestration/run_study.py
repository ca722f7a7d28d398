"""A study: the runs of a study file (any task, with its script's flags) on one pool of actors, then its report.

    python orchestration/run_study.py studies/paper.yaml --num_gpus 8 --output ~/runs/paper
    python orchestration/run_study.py studies/ablations.yaml --num_gpus 8 --output ~/runs/ablations
    python orchestration/run_study.py --demo          # studies/demo.yaml: every task, tiny model, CPU, < 2 minutes
    python orchestration/run_study.py studies/paper.yaml --check   # parse and list the runs, run nothing

Every run is an ordinary run folder OUT/<name>/; OUT/study.json says where each stands; OUT/report.md and
OUT/report.ipynb hold the paper's tables. Rerunning the same command resumes the whole study, and a run added
to the file is the only one that runs. `python -m analysis.report OUT` rewrites the report.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestration.cli import RunOptions, cli_main, resolve_output
from orchestration.flags import HelpFormatter, add_flags, from_flags

DEMO_STUDY = Path(__file__).resolve().parents[1] / "studies" / "demo.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("study", nargs="?", help="the study file (YAML: defaults, runs)")
    parser.add_argument("--check", action="store_true", help="parse the study and list its runs; run nothing")
    add_flags(parser, RunOptions, "the pool")
    return parser


@cli_main
def main(argv=None):
    from locas.errors import LocasError
    from orchestration.progress import quiet_console
    from orchestration.study import plan_study, run_study

    args = _parser().parse_args(argv)
    quiet_console(args.verbose)
    if args.demo:
        args.study = args.study or str(DEMO_STUDY)
        args.output = args.output or "runs/demo-study"
    if not args.study:
        raise LocasError("name a study file (e.g. studies/paper.yaml), or --demo")
    if not args.output:
        raise LocasError("--output is required: the study's folder")
    pool = from_flags(args, RunOptions).checked()
    if args.check:
        for run in plan_study(args.study, resolve_output(args.output), pool.demo, check_models=False):
            for folder, plan in run.plans:
                print(f"{folder}: {plan.task.name}, {plan.cfg.method}, config {plan.cfg.config_id}, model {plan.spec.model}")
        return 0
    return run_study(args.study, pool)


if __name__ == "__main__":
    raise SystemExit(main())
