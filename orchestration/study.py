"""A study: named runs (any task, with the flags of its script) that share one pool of actors.

    description: what the study reproduces
    defaults:                      # flags every run takes unless it sets its own (where its script knows them)
      model: Qwen/Qwen3-1.7B-Base
    runs:
      pg19-none:  {task: pg19, method: none, data: emozilla/pg19}
      pg19-locas: {task: pg19, method: locas, memory_width: 64, data: emozilla/pg19}
      width:      {task: sweep, grid: ["memory_width=16,64"], data: emozilla/pg19, split: validation}

Each run is parsed by its own script's parser (a typo fails before anything starts, naming the run) and is
an ordinary run folder `OUT/<name>/` (same rows, ledger, resume, `--retry_failed`). A sweep is its grid of
PG-19 runs on the dev books, one folder per trial (`OUT/<name>/<config_id>/`), and the sweep's `trials.csv`
(ASHA's early stopping needs Tune's own loop: run_sweep.py has it).

All runs' units go to one pool of actors (one per GPU), longest first across the study, so one run's tail is
filled by another's work; an actor keeps its model loaded while units for it remain, and batches books only
with books of the same config. `OUT/study.json` says where every run stands.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from locas.errors import LocasError
from locas.tasks import TASKS
from locas.tasks import task as registered
from locas.yaml_file import read_yaml
from orchestration.cli import Plan, RunOptions, build_parser, check_model, parse, resolve_output

TASK_NAMES = (*TASKS, "sweep")
STUDY_JSON = "study.json"


class StrictParser(argparse.ArgumentParser):
    """A script's parser whose mistakes raise instead of exiting, so a study names the run at fault."""

    def error(self, message):
        raise LocasError(message)


@dataclass
class StudyRun:
    """One run of a study: its name, its task, and the plans of the ordinary runs it is made of (one; a
    sweep: one per trial) with their folders inside the study."""

    name: str
    task: str
    plans: list[tuple[str, Plan]] = field(default_factory=list)


def _argv(values: dict, where: str) -> list[str]:
    argv = []
    for key, value in values.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(f"--{key}")
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [f"--{key}", str(item)]
        elif isinstance(value, dict):
            raise LocasError(f"{where}: {key} must be a value or a list, not a mapping")
        else:
            argv += [f"--{key}", str(value)]
    return argv


def _parser(task: str) -> argparse.ArgumentParser:
    if task == "sweep":
        from orchestration.sweep.plan import sweep_parser

        return sweep_parser(StrictParser)
    return build_parser(registered(task), parser_class=StrictParser)


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option.lstrip("-") for action in parser._actions for option in action.option_strings}


def read_study(path) -> dict:
    """The study file as a mapping with `runs` (and optional `defaults`, `description`), or one LocasError."""
    data = read_yaml(path, f"study {path}")
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict) or not data["runs"]:
        raise LocasError(f"{path}: expected a mapping with `runs:` (name: flags) and optional `defaults:`")
    unknown = sorted(set(data) - {"runs", "defaults", "description"})
    if unknown:
        raise LocasError(f"{path}: unknown key(s) {', '.join(unknown)}; known: runs, defaults, description")
    if not isinstance(data.get("defaults") or {}, dict):
        raise LocasError(f"{path}: defaults must be a mapping of flags")
    return data


def plan_study(path, output, demo: bool = False, check_models: bool = True) -> list[StudyRun]:
    """Every run of the study file, parsed (and, with `check_models`, checked against its model's config);
    nothing is written."""
    data = read_study(path)
    defaults = data.get("defaults") or {}
    parsers = {task: _parser(task) for task in TASK_NAMES}
    typos = sorted(set(defaults) - set().union(*(_flags(p) for p in parsers.values())))
    if typos:
        raise LocasError(f"{path}: defaults: unknown flag(s) {', '.join(typos)}")
    runs = []
    for name, values in data["runs"].items():
        where = f"{path}: run {name}"
        if not isinstance(values, dict) or values.get("task") not in TASK_NAMES:
            raise LocasError(f"{where}: needs `task:` one of {', '.join(TASK_NAMES)}")
        if not str(name).replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise LocasError(f"{where}: a run's name is its folder's: letters, digits, '-', '_' and '.'")
        task, known = values["task"], _flags(parsers[values["task"]])
        flags = {**{k: v for k, v in defaults.items() if k in known},
                 **{k: v for k, v in values.items() if k != "task"},
                 "output": str(Path(output) / str(name)), **({"demo": True} if demo else {})}
        try:
            runs.append(_study_run(str(name), task, _argv(flags, where), Path(output) / "demo-inputs", check_models))
        except LocasError as e:
            raise LocasError(f"{where}: {e}") from None
    return runs


def _study_run(name: str, task: str, argv: list[str], demo_inputs: Path, check_models: bool) -> StudyRun:
    if task == "sweep":
        from orchestration.sweep.plan import plan_sweep

        sweep = plan_sweep(argv, parser=_parser("sweep"), demo_inputs=demo_inputs, check_models=check_models)
        return StudyRun(name, task, [(f"{name}/{p.cfg.config_id}", p) for p in sweep.trials])
    plan = parse(registered(task), argv, parser=_parser(task), demo_inputs=demo_inputs)
    if check_models:
        check_model(plan.spec, plan.cfg)
    return StudyRun(name, task, [(name, plan)])


def _status(output: Path, path, parts: list, state: str) -> None:
    """Write OUT/study.json: where every run stands."""
    status = {"study": str(Path(path).resolve()), "state": state,
              "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "runs": {p.label: {"task": p.plan.task.name, "run_id": p.run_id, "units": len(p.units), "done": p.done,
                                 "failed": p.failed,
                                 "status": "finished" if p.done + p.failed >= len(p.units) else "running"}
                       for p in parts}}
    tmp = output / (STUDY_JSON + ".tmp")
    tmp.write_text(json.dumps(status, indent=1) + "\n")
    os.replace(tmp, output / STUDY_JSON)


def run_study(path, pool: RunOptions, report: bool = True) -> int:
    """Run every unit of the study not yet finished on one pool of actors (`orchestration.run`), then write each
    sweep's trials.csv, study.json and (`report`) the report. Returns the exit code (1 when any unit failed)."""
    from orchestration.run import Part, run, units_line
    from orchestration.tracking import Tracker, killed_on_error, tracking_uri

    output = resolve_output(pool.output)
    pool = pool.replace(output=str(output))  # one folder for the parent run's tracking and its runs'
    runs = plan_study(path, output, pool.demo)
    on_gpu = bool(pool.num_gpus)  # the pool's device decides an unset dtype
    members = {run.name: [Part.of(dataclasses.replace(plan, spec=plan.spec.on(gpu=on_gpu)), output / folder, folder)
                          for folder, plan in run.plans] for run in runs}
    parts = [part for run in runs for part in members[run.name]]
    seen = {}
    for part in parts:
        if part.run_id in seen:
            raise LocasError(f"{path}: runs {seen[part.run_id]} and {part.label} are the same run (same task, "
                             "model, settings and data): keep one")
        seen[part.run_id] = part.label
    parent = Tracker.for_study(tracking_uri(pool.tracking, output), output, path)  # its runs nest under it
    with killed_on_error([parent]):
        result = run(parts, pool, on_update=lambda part: _status(output, path, parts, "running"),
                     parent=parent and parent.run_id)
    print(f"{units_line(result.counts)}; model loads per actor: {result.loads}")
    for run_ in runs:
        if run_.task == "sweep":
            _write_trials(output / run_.name, members[run_.name])
    _status(output, path, parts, "finished")
    print(f"study: {output / STUDY_JSON}")
    if report:
        from analysis.report import write_report

        markdown, book = write_report(output)
        print(f"report: {markdown}\nnotebook: {book}")
    if parent is not None:
        parent.finish({})
    return 1 if any(p.failed for p in parts) else 0


def _write_trials(folder: Path, trials: list) -> None:
    """A sweep's trials.csv (the run_sweep.py columns) from its trials' run folders."""
    from orchestration.sweep.trials import config_columns, write_trials_csv

    rows = []
    for part in trials:
        summary = json.loads((part.store.path / "summary.json").read_text())
        books = part.results.books
        failed = summary.get("errors") or summary.get("stopped")
        rows.append({"trial": part.plan.cfg.config_id, **config_columns(part.plan.cfg), "ppl": summary.get("ppl"),
                     "books_done": summary.get("books"), "books_total": len(part.units),
                     "seconds": float(books["seconds"].sum()) if len(books) else None,
                     "status": "error" if failed else "completed", "worker_pid": None, "loads": None,
                     "node": ", ".join(sorted(set(books["node"].dropna()))) if len(books) else None,
                     "error": f"{failed} book(s) failed or stopped" if failed else None})
    write_trials_csv(folder, rows)
