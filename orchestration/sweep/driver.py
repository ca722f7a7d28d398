"""The sweep's driver: runs the trials with Ray Tune and keeps their results in an ordinary run folder.

    space = parse_space(grid=["memory_width=16,64", "memory_init=highest,random"],
                        sample=["lr=loguniform:1e-4:1e-2"], num_samples=4)
    configs = expand_space(space, AdaptConfig(window_size=2048))
    result = run_sweep(configs, spec, books, "runs/sweep", data="emozilla/pg19", split="validation")

A trial is one unit of the run folder (`sweep:pg19:<config_id>`): when it ends, the driver (a Tune callback)
appends its book rows and one `trial` row, then its ledger line, and rewrites `trials.csv`. A rerun of the
same command (or of a wider space on the same folder) runs only the settings not yet in the ledger. Tune
receives each trial's hyperparameters as its config, so its own records (and TensorBoard or MLflow
callbacks) show them; a trial whose node is lost is restarted from its last book (`FailureConfig`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locas.config import AdaptConfig, ModelSpec
from locas.contract import DONE, FAILED, content_id, trial_unit_id
from locas.errors import LocasError, one_line
from locas.tasks.pg19.data import Book
from orchestration.flags import to_flags
from orchestration.sweep.space import SWEEPABLE
from orchestration.sweep.trial import run_trial
from orchestration.sweep.trials import STATUSES, config_columns, trial_table, write_trials_csv

TASK = "pg19-sweep"
TUNE_DIR = "tune"


@dataclass
class SweepResult:
    table: Any  # pandas.DataFrame, one row per trial in the store, best first
    best: dict | None
    best_command: str | None
    trials_csv: Path
    ran: int  # trials finished by this call
    skipped: int  # trials of `configs` already finished before this call
    remaining: list = field(default_factory=list)  # config ids of `configs` still unfinished: rerun for them


def store_config(spec: ModelSpec, data: str, split: str, books: list[Book]) -> tuple[dict, str]:
    """What every trial of this run folder shares (model, data, books), and its run id. The space is not
    part of it, so a wider space on the same --output reuses the finished trials."""
    from locas.tasks.pg19.data import TEXT_NORMALIZATION

    config = {"task": TASK, "model": spec.to_dict(), "data": str(data), "split": split,
              "books": [b.book_id for b in books], "text": TEXT_NORMALIZATION}
    return config, content_id(config)


def trial_rows(store) -> list[dict]:
    return [r for r in store.rows() if r.get("kind") == "trial"]


def best_command(cfg: AdaptConfig, spec: ModelSpec, test_data: str, num_gpus: int = 0) -> str:
    """The `run_pg19.py` command that runs `cfg` on the test books, built from the configs' own flags
    (whole books: the dev set's truncation is not carried over)."""
    import shlex

    parts = ["python", "orchestration/run_pg19.py", *to_flags(spec, skip=("device",)),
             *to_flags(cfg, skip=("max_tokens",)), "--data", test_data, "--split", "test"]
    if num_gpus:
        parts += ["--num_gpus", str(num_gpus)]
    parts += ["--output", f"runs/pg19-test-{cfg.config_id}"]
    return " ".join(shlex.quote(p) for p in parts)


def trial_resources(num_gpus: float, gpus_per_trial: float | None, cluster: dict,
                    num_workers: int = 1) -> tuple[dict, int]:
    """(resources per trial, trials at once): GPU trials take `gpus_per_trial` (default 1) of `num_gpus` (which
    the autoscaler may still be starting: `orchestration.cluster.gpus` asks for them and refuses what the cluster
    can never have); CPU trials take 1 CPU each, `num_workers` at once, never more than the cluster has."""
    if num_gpus < 0 or num_workers < 1:
        raise LocasError("--num_gpus must be >= 0 and --num_workers >= 1")
    if num_gpus:
        gpt = 1 if gpus_per_trial is None else gpus_per_trial
        if not 0 < gpt <= num_gpus:
            raise LocasError(f"--gpus_per_trial {gpt:g} must be > 0 and at most --num_gpus {num_gpus:g}")
        return {"cpu": 1, "gpu": gpt}, max(1, int(num_gpus // gpt + 1e-9))
    if gpus_per_trial:
        raise LocasError("--gpus_per_trial needs --num_gpus > 0")
    return {"cpu": 1}, max(1, min(num_workers, int(cluster.get("CPU", 1))))


def _store_writer(store, configs: dict, books_total: int, stopped_by_asha: set, progress):
    """The driver's only writer: collects each trial's book rows and, when it ends, appends them and a
    `trial` row to the store with a ledger line, then rewrites trials.csv (`sweep.trials`)."""
    from ray.tune import Callback

    class StoreWriter(Callback):
        def __init__(self):
            self.books: dict[str, dict] = {}  # config id → book id → its row (a restarted trial's rerun of a
            # book whose checkpoint Tune had not registered replaces the first: every book once)
            self.last: dict[str, dict] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            cid = result["config_id"]
            self.last[cid] = dict(result)
            if result.get("book_json"):
                book = json.loads(result["book_json"])
                self.books.setdefault(cid, {})[book.get("book_id", book.get("item_id"))] = book
                if progress is not None:
                    progress.update(1)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finish(trial, error=_trial_error(trial))

        def _finish(self, trial, error: str | None = None):
            last = self.last.get(trial.last_result.get("config_id"), {}) if trial.last_result else {}
            cid = last.get("config_id")
            if cid is None or cid not in configs:
                return
            error = error or last.get("trial_error") or None
            if error:
                status = "error"
            elif last.get("books_done") == books_total:
                status = "completed"
            elif trial.trial_id in stopped_by_asha:
                status = "stopped"
            else:  # ended without finishing (an interrupted sweep): not ledgered, a rerun runs it again
                return
            cfg = configs[cid]
            row = {"kind": "trial", "task": "pg19", "config_id": cid, "method": cfg.method, "trial": cid,
                   **config_columns(cfg), "adapt": cfg.to_dict(), "ppl": last.get("ppl"),
                   "books_done": last.get("books_done", 0), "books_total": books_total,
                   "nll_sum": last.get("nll_sum"), "scored_tokens": last.get("scored_tokens"),
                   "seconds": last.get("seconds"), "status": status, "worker_pid": last.get("worker_pid"),
                   "loads": last.get("loads"), "node": last.get("node"), "error": error}
            books = [{**book, "unit_id": trial_unit_id(cfg.config_id)} for book in self.books.get(cid, {}).values()]
            store.append(trial_unit_id(cfg.config_id), books + [row], status=FAILED if status == "error" else DONE)
            write_trials_csv(store.path, trial_rows(store))
            if progress is not None and status != "completed":
                progress.update(max(0, books_total - row["books_done"]))

    return StoreWriter()


def _trial_error(trial) -> str:
    error = trial.get_error() if hasattr(trial, "get_error") else None
    return one_line(error) if error is not None else "its worker process failed"


def _asha(max_t: int):
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        """ASHA that remembers which trials it stopped (to tell them from interrupted ones)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.stopped_ids: set[str] = set()

        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP:
                self.stopped_ids.add(trial.trial_id)
            return decision

    return RecordingASHA(time_attr="books_done", max_t=max(1, max_t), grace_period=1, reduction_factor=2)


def run_sweep(configs: list[AdaptConfig], spec: ModelSpec, books: list[Book], output, *, data: str,
              split: str = "validation", varied: tuple[str, ...] = SWEEPABLE, num_gpus: float = 0,
              gpus_per_trial: float | None = None, num_workers: int = 1, asha: bool = False,
              batch_size: int | None = None, test_data: str | None = None, progress: bool = True,
              max_trials: int | None = None, max_failures: int = 2, storage_path: str | None = None,
              verbose: bool = False, tracking: str | None = None) -> SweepResult:
    """Run every trial of `configs` not yet finished in the run folder `output`; Ray must be initialized.

    `varied` names the settings the space varies (each trial's Tune config). `max_trials` runs at most that
    many of the unfinished trials (the rest wait for a rerun). A trial that did not end (interrupted sweep)
    is not in the ledger and is listed in `remaining`. `storage_path` is where Tune keeps the trials'
    checkpoints (default OUT/tune): on a cluster, a folder or URI that every node reaches, or a trial on a
    worker node cannot save its books done (Ray refuses a head-local folder there). `verbose`: Tune's own
    tables of trials. `tracking`: the MLflow URI (orchestration.tracking) of the sweep's run, under which Tune's
    MLflow logger nests one run per trial."""
    import ray
    from ray import tune

    from orchestration.store import RunStore
    from orchestration.tracking import Tracker, killed_on_error, tune_callback

    if not configs:
        raise LocasError("nothing to sweep: the space has no trials")
    if not books:
        raise LocasError("nothing to sweep on: the data selection is empty")
    if (batch_size is not None and batch_size < 1) or (max_trials is not None and max_trials < 1):
        raise LocasError("--batch_size and --max_trials must be >= 1")
    if not ray.is_initialized():
        raise LocasError("call ray.init() before run_sweep")
    cluster = ray.cluster_resources()
    resources, at_once = trial_resources(num_gpus, gpus_per_trial, cluster, num_workers)
    config, run_id = store_config(spec, data, split, books)
    store = RunStore(output).open(TASK, config, run_id, cluster)
    tracker = Tracker.start(tracking, store)
    finished = store.finished()
    by_id = {c.config_id: c for c in configs}
    todo = [c for c in configs if trial_unit_id(c.config_id) not in finished]
    skipped = len(configs) - len(todo)
    todo = todo[:max_trials]
    if todo:
        scheduler = _asha(len(books)) if asha else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo) * len(books), desc=f"sweep: {len(todo)} trials", unit="book")
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, configs={c.config_id: c.to_dict() for c in todo}, books=books, spec=spec,
                                 gpu=bool(num_gpus), batch_size=batch_size), resources)
        values = {c.config_id: {name: getattr(c, name) for name in varied} for c in todo}
        space = {"config_id": tune.grid_search(list(values)),  # each trial's values, as its Tune config
                 **{name: tune.sample_from(lambda config, name=name: values[config["config_id"]][name])
                    for name in varied}}
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="ppl", mode="min", scheduler=scheduler, max_concurrent_trials=min(at_once, len(todo)),
                reuse_actors=True, trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=tune.RunConfig(
                storage_path=storage_path or str((Path(output) / TUNE_DIR).resolve()),
                name=time.strftime("trials-%Y%m%d-%H%M%S"),
                verbose=2 if verbose else 0, failure_config=tune.FailureConfig(max_failures=max_failures),
                callbacks=[_store_writer(store, by_id, len(books), scheduler.stopped_ids if scheduler else set(),
                                         bar), *filter(None, [tune_callback(tracking, tracker and tracker.run_id)])]),
        )
        try:
            with killed_on_error([tracker]):
                tuner.fit()
        finally:
            if bar is not None:
                bar.close()
    finished = store.finished()
    ran = sum(trial_unit_id(c.config_id) in finished for c in todo)
    remaining = [c.config_id for c in configs if trial_unit_id(c.config_id) not in finished]
    csv_path = write_trials_csv(store.path, trial_rows(store))
    table = trial_table(trial_rows(store))
    from analysis.tables import best_trial

    best = best_trial(table)
    command = None
    if best is not None:
        cfg = AdaptConfig.from_dict(next(r["adapt"] for r in store.rows()
                                         if r.get("kind") == "trial" and r.get("config_id") == best["trial"]))
        command = best_command(cfg, spec, test_data or data, num_gpus)
    summary = {"task": TASK, "trials": len(table), "ran": ran, "skipped": skipped, "remaining": remaining,
               "statuses": {s: int((table["status"] == s).sum()) for s in STATUSES},
               "best": best, "best_command": command, "trials_csv": str(csv_path)}
    store.write_summary(summary)
    if tracker is not None:
        tracker.finish(summary)
    return SweepResult(table, best, command, csv_path, ran, skipped, remaining)
