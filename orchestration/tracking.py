"""MLflow tracking: each run folder is one MLflow run, logged by the driver alone (actors never log).

    tracker = Tracker.start(uri, store, amount)       # None without a URI: nothing imported, nothing slower
    scheduler = Scheduler(..., on_rows=tracker.unit_done)
    with killed_on_error([tracker]):                  # KILLED when the run stops early
        scheduler.run(units)
    tracker.finish(summary)                           # the summary as metrics, summary/report/plots as artifacts

- The URI is `--tracking URI`, else MLFLOW_TRACKING_URI; `--tracking` alone is the embedded store, a sqlite
  file next to the run folder (`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows it).
- The run's config is its params (nested keys joined by dots, as the manifest has them); the MLflow run's id
  is in the manifest (`mlflow`: URI → run id), so a resumed run (killed, interrupted, extended) logs into the
  same MLflow run. A unit's figures are logged at step = its ledger line's number, so no step is logged twice.
- A study is a parent run (`Tracker.for_study`, tagged with its folder, where a rerun finds it) with its runs
  nested (their `parent`); a sweep's trials are nested under the sweep's run by Tune's own
  `MLflowLoggerCallback` (`tune_callback`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from locas.contract import ppl
from locas.errors import LocasError

ENV = "MLFLOW_TRACKING_URI"
EMBEDDED = "embedded"  # `--tracking` with no URI
EXPERIMENT = "locas"  # unless MLFLOW_EXPERIMENT_NAME names another
FOLDER_TAG = "locas.folder"
ARTIFACTS = ("summary.json", "trials.csv", "report.md", "report.ipynb")
PLOTS = (".png", ".svg", ".pdf")


def tracking_uri(flag: str | None, output) -> str | None:
    """The tracking URI of a run whose folder is `output`: the flag's, else the environment's, else None; a
    URI without mlflow installed is refused (before anything starts, from RunOptions.checked)."""
    uri = flag or os.environ.get(ENV) or None
    if uri and importlib.util.find_spec("mlflow") is None:
        raise LocasError(f"tracking to {uri} needs MLflow: pip install 'locas[tracking]' (or unset {ENV})")
    if uri == EMBEDDED:
        return f"sqlite:///{Path(output).resolve().parent / 'mlflow.db'}"
    return uri


def flatten(values: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} → {"a.b": 1}: a config as MLflow params, or a summary as metrics."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def metric_name(key: str) -> str:
    """A summary key as an MLflow metric name (`ppl@50000` → `ppl_at_50000`)."""
    return re.sub(r"[^\w\-. :/]", "_", key.replace("@", "_at_"))


def numbers(values: dict) -> dict[str, float]:
    """The finite numbers of a (nested) summary, under their metric names."""
    return {metric_name(k): float(v) for k, v in flatten(values).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(client) -> str:
    """The experiment's id, made if new; a sqlite store's artifacts go beside its file (MLflow's default is
    ./mlruns of whatever folder the driver runs in)."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    uri = client.tracking_uri
    beside = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" if uri.startswith("sqlite:///") else None
    return client.create_experiment(name, artifact_location=beside and beside.resolve().as_uri())


def _open_run(client, run_id: str | None, name: str, tags: dict) -> str:
    """The MLflow run `run_id`, running again, or a new one when there is none (or it was deleted)."""
    if run_id is not None:
        from mlflow.exceptions import MlflowException

        try:
            if client.get_run(run_id).info.lifecycle_stage == "active":
                client.update_run(run_id, status="RUNNING")
                return run_id
        except MlflowException:
            pass
    return client.create_run(_experiment(client), run_name=name, tags=tags).info.run_id


class Tracker:
    """One run folder's MLflow run. `amount(rows)`: what a finished unit counts for the rate (its task's)."""

    def __init__(self, client, uri: str, run_id: str, folder: Path, step: int, amount: Callable | None,
                 counts: str):
        self.client, self.uri, self.run_id, self.folder = client, uri, run_id, folder
        self.step, self.amount, self.counts = step, amount, counts
        self.started, self.counted = time.monotonic(), 0
        self.nll, self.scored = 0.0, 0  # the books' pooled NLL so far: the running PPL

    @classmethod
    def start(cls, uri: str | None, store, amount: Callable | None = None, counts: str = "units",
              parent: str | None = None, name: str | None = None) -> Tracker | None:
        """The MLflow run of the open RunStore `store` (the manifest's, else a new one with the config as params,
        its id then written to the manifest), nested under `parent`'s run id; None without a URI. `amount(rows)`
        is how many `counts` (tokens, questions) a finished unit holds: the running rate."""
        if not uri:
            return None
        client = _client(uri)
        known = dict(store.manifest.get("mlflow") or {})
        tags = {FOLDER_TAG: str(store.path.resolve()), "locas.task": str(store.manifest.get("task"))}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run_id = _open_run(client, known.get(uri), name or store.path.name, tags)
        if known.get(uri) != run_id:
            from mlflow.entities import Param

            params = flatten(store.manifest["config"])
            params = [Param(k, str(v)) for k, v in params.items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                client.log_batch(run_id, params=params[i:i + 100])
            store.update_manifest(mlflow={**known, uri: run_id})
        tracker = cls(client, uri, run_id, store.path, _ledger_lines(store), amount, counts)
        for row in store.rows():
            tracker._pool(row)
        return tracker

    @classmethod
    def for_study(cls, uri: str | None, folder: Path, study_file) -> Tracker | None:
        """The parent run of the study in `folder`: found by its folder tag (a rerun continues it), else new,
        with the study file as a param and artifact. None without a URI."""
        if not uri:
            return None
        client = _client(uri)
        experiment = _experiment(client)
        found = client.search_runs([experiment], f"tags.`{FOLDER_TAG}` = '{folder.resolve()}'", max_results=1)
        run_id = _open_run(client, found[0].info.run_id if found else None, folder.name,
                           {FOLDER_TAG: str(folder.resolve()), "locas.task": "study"})
        if not found:
            client.log_param(run_id, "study", str(Path(study_file).resolve()))
            client.log_artifact(run_id, str(study_file))
        return cls(client, uri, run_id, folder, 0, None, "units")

    def _pool(self, row: dict) -> None:
        if row.get("kind") == "book" and row.get("scored_tokens") and row.get("nll_sum") is not None:
            self.nll += row["nll_sum"]
            self.scored += row["scored_tokens"]

    def unit_done(self, unit, rows: list[dict], status: str) -> None:
        """A unit is in its folder (its ledger line written): the running figures at the next step."""
        from mlflow.entities import Metric

        self.step += 1
        for row in rows:
            self._pool(row)
        self.counted += self.amount(rows) if self.amount else 0
        figures = {"running/units": float(self.step)}
        if self.amount is not None:
            figures[f"running/{self.counts}_per_second"] = self.counted / max(1e-9, time.monotonic() - self.started)
        if self.scored:
            figures["running/ppl"] = ppl(self.nll, self.scored)
        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, self.step) for k, v in figures.items()])

    def finish(self, summary: dict) -> None:
        """The summary's numbers as metrics (once per step: a rerun with nothing new logs none), the folder's
        summary, tables, report and plots as artifacts, and the run FINISHED."""
        from mlflow.entities import Metric

        metrics = numbers(summary)
        if metrics:
            first = next(iter(metrics))
            if all(m.step != self.step for m in self.client.get_metric_history(self.run_id, first)):
                stamp = int(time.time() * 1000)
                batch = [Metric(k, v, stamp, self.step) for k, v in metrics.items()]
                for i in range(0, len(batch), 1000):
                    self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
        log_artifacts(self.client, self.run_id, self.folder)
        self.client.set_terminated(self.run_id, "FINISHED")

    def killed(self) -> None:
        self.client.set_terminated(self.run_id, "KILLED")


@contextlib.contextmanager
def killed_on_error(trackers):
    """Runs that stop early (an error, Ctrl-C) end KILLED in MLflow; a rerun continues them."""
    try:
        yield
    except BaseException:
        for tracker in trackers:
            if tracker is not None:
                tracker.killed()
        raise


def _ledger_lines(store) -> int:
    return store.ledger_path.read_text().count("\n") if store.ledger_path.exists() else 0


def log_artifacts(client, run_id: str, folder: Path) -> None:
    """What of a finished run (or study) folder goes to MLflow: its summary, tables, report and plots."""
    found = [folder / name for name in ARTIFACTS if (folder / name).is_file()]
    for path in found + sorted(p for p in folder.iterdir() if p.suffix in PLOTS):
        client.log_artifact(run_id, str(path))
    if (folder / "plots").is_dir():
        client.log_artifacts(run_id, str(folder / "plots"), "plots")


def tune_callback(uri: str | None, parent: str | None):
    """Tune's own MLflow logger (one nested run per trial, under the sweep's run `parent`), or None."""
    if not uri:
        return None
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment, save_artifact=False,
                                tags={"mlflow.parentRunId": parent} if parent else None)
