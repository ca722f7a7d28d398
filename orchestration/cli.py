"""The command line every entry script shares: flags derived from the configs (`orchestration/flags.py`),
checks before anything is written, the run on Ray, the summary.

    python orchestration/run_pg19.py --help      # every flag, with its default

A user mistake is one line `error: ...` and exit code 2; a run in which any unit failed exits with 1 (its
error rows say why; `--retry_failed` runs them again).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from locas import checks
from locas.config import AdaptConfig, ModelSpec, Settings, option
from locas.contract import FAILED
from locas.errors import LocasError
from locas.run_folder import SUMMARY, StoreError, read_json, read_ledger
from locas.tasks import Task, task
from orchestration.flags import HelpFormatter, add_flags, from_flags
from orchestration.tasks import resolved

EXIT_FAILED_UNITS, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


@dataclass(frozen=True)
class RunOptions(Settings):
    """How a run is carried out (never what it computes: none of these is in the run id)."""

    output: str | None = option(None, "the run folder (required); rerunning the same command resumes it. A "
                                "relative path is taken from the current folder, or in a Ray job from the home "
                                "folder of the head (the job's own folder is a temporary copy)")
    num_gpus: int = option(0, "GPU actors, one GPU each; 0 runs on CPU actors")
    num_workers: int = option(1, "CPU actors when --num_gpus is 0")
    batch_size: int | None = option(None, "units adapted at once per actor; unset: for PG-19 books on GPUs what "
                                    "the method and loss allow (e.g. 8 for NTP, 4 for SD/MIX, 1 for LoRA), else 1")
    gpu_timeout: float = option(1200.0, "seconds to wait for the first GPU the autoscaler starts (--num_gpus > 0)")
    cluster_config: str | None = option(None, "the cluster yaml whose node types bound --num_gpus (default: "
                                        "~/ray_bootstrap_config.yaml, which `ray up` leaves on the head)")
    retry_failed: bool = option(False, "run again the units this run folder ledgered as failed")
    step_latency: str | None = option(None, "seconds of one window step by batch size, e.g. 1:0.163,4:0.279,8:0.533; "
                                      "unset: measured on each GPU actor when it starts (batches are sized with it)")
    demo: bool = option(False, "a tiny model and built-in text on a local Ray: the whole path in under 2 minutes")
    no_progress: bool = option(False, "no progress bar")
    tracking: str | None = option(None, "log to MLflow at this tracking URI (default: MLFLOW_TRACKING_URI when set, "
                                  "else no tracking); the flag alone: a sqlite file next to the run folder, "
                                  "mlflow.db", const="embedded")
    verbose: bool = option(False, "also show what stays in Ray's logs otherwise: the actors' output (model loading, "
                           "library warnings), Ray's and Tune's banners and per-trial lines")

    def checked(self) -> "RunOptions":
        """Itself, once its numbers are in range and its latency table parses (before anything starts)."""
        if self.num_gpus < 0 or self.num_workers < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise LocasError("--num_gpus must be >= 0, --num_workers >= 1 and --batch_size >= 1")
        if self.gpu_timeout <= 0:
            raise LocasError("--gpu_timeout must be > 0 seconds")
        if self.step_latency:
            from orchestration.policy import StepLatency

            StepLatency.parse(self.step_latency)
        if self.output:
            from orchestration.tracking import tracking_uri

            tracking_uri(self.tracking, self.output)
        return self


@dataclass
class Plan:
    """A run as parsed: what loads, what it computes, which data, how it is carried out."""

    task: Task
    spec: ModelSpec
    cfg: AdaptConfig
    options: Settings
    run: RunOptions
    args: argparse.Namespace  # every flag, the script's own too


def build_parser(task: Task, description: str | None = None,
                 parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The task script's parser: every config's flags, whole names only (`--max_book` is refused, not taken
    for `--max_books`)."""
    parser = parser_class(description=description, formatter_class=HelpFormatter, allow_abbrev=False)
    add_flags(parser, ModelSpec, "model")
    add_flags(parser, AdaptConfig, "method, memory and optimizer")
    add_flags(parser, task.options, f"{task.name} data")
    one_at_a_time = f"{task.things} at once per actor: {task.name} runs them one at a time, so only 1 is useful"
    add_flags(parser, RunOptions, "run", helps={"batch_size": None if task.batches else one_at_a_time})
    return parser


def parse(task: Task, argv, description: str | None = None, parser: argparse.ArgumentParser | None = None,
          demo_name: str | None = None, demo_inputs: Path | None = None) -> Plan:
    """Flags → configs (`parser`: a script's own, with flags of its own beside the task's). `--demo` fills in
    the task's demo inputs (`demo_name` names the run, default the task; made under `demo_inputs`, default the
    run's own folder) first; `--output` is required (a relative one resolved by `resolve_output`)."""
    parser = parser or build_parser(task, description)
    args = parser.parse_args(argv)
    if args.output:  # first, so that --demo puts its inputs under the folder the run will use
        args.output = str(resolve_output(args.output))
    if args.demo:
        from orchestration.demo import prepare_demo

        prepare_demo(task, args, parser, demo_inputs, demo_name)
    if not args.output:
        raise LocasError("--output is required: the run folder where the results go")
    args.output = str(resolve_output(args.output))  # the --demo default too
    run = from_flags(args, RunOptions).checked()
    local = Path(args.model).expanduser()
    spec = from_flags(args, ModelSpec).replace(model=str(local.resolve()) if local.exists() else args.model)
    return Plan(task, spec, task.configure(from_flags(args, AdaptConfig)), resolved(from_flags(args, task.options)),
                run, args)


def resolve_output(output: str) -> Path:
    """The run folder as an absolute path. A relative one is taken from the current folder; in a Ray job, whose
    current folder is a temporary copy of the submitted working dir that Ray deletes, from the home folder of
    the machine that runs the driver (a cluster's head): `--output runs/x` lands in ~/runs/x there, which is
    where `ray rsync-down` finds it and where a resubmitted job resumes it."""
    from orchestration.cluster import in_ray_job

    path = Path(output).expanduser()
    if not path.is_absolute() and in_ray_job():
        path = Path.home() / path
    return path.resolve()


def check_model(spec: ModelSpec, *cfgs: AdaptConfig) -> None:
    """Fail before anything is written when the checkpoint cannot be found or cannot take a config: the
    library's checks (`locas.checks`), naming settings by their flags."""
    checks.check_model(spec, *cfgs, as_flags=True)


def run_task(task_name: str, argv=None, description: str | None = None) -> int:
    """An entry script's whole run: parse, check, plan the units, run them (`orchestration.run`), summarize."""
    from orchestration.run import Part, run, units_line

    from orchestration.progress import quiet_console

    plan = parse(task(task_name), argv, description)
    quiet_console(plan.run.verbose)  # at the entry: a study's runs are parsed too, under the study's --verbose
    plan.spec = plan.spec.on(gpu=bool(plan.run.num_gpus))
    check_model(plan.spec, plan.cfg)
    part = Part.of(plan)
    if not part.units:
        raise LocasError("nothing to run: the data selection is empty")
    print(f"output: {plan.run.output}", flush=True)
    print(units_line(run([part], plan.run).counts))
    store = part.store
    table = plan.task.table(part.results)
    if len(table):
        print(table.to_string(index=False))
    print(json.dumps(read_json(store.path / SUMMARY), indent=1))
    print(f"rows: {store.rows_path}\nsummary: {store.path / SUMMARY}")
    failed = sorted(uid for uid, e in read_ledger(store.path).items() if e["status"] == FAILED)
    if failed:
        print(f"{len(failed)} unit(s) failed (error rows in {store.rows_path.name}, tracebacks in "
              f"{store.path / 'tracebacks'}); rerun with --retry_failed to run them again", file=sys.stderr)
        return EXIT_FAILED_UNITS
    return 0


def cli_main(main):
    """Wrap an entry script's main: a user mistake is one line on stderr and exit code 2."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        restore = stop_on_sigterm()
        try:
            return main(argv) or 0
        except (LocasError, StoreError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("interrupted: rerun the same command to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            restore()
    return wrapped


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def stop_on_sigterm():
    """`ray job stop` (SIGTERM) ends a run as Ctrl-C does: actors released, the GPU request withdrawn, exit
    code 130. Returns what puts the previous handler back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def entry_point(task_name: str, description: str):
    """`main(argv=None) -> exit code` of a task's entry script."""
    return cli_main(lambda argv=None: run_task(task_name, argv, description))
