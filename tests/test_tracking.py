"""MLflow tracking against a real `mlflow server` (127.0.0.1, sqlite store), read back with MlflowClient: a
run's params are its manifest's config and its last metrics its summary.json; a killed and resumed run is one
MLflow run with no step logged twice; a study's runs and a sweep's trials are nested under theirs."""
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import ledger_lines, wait_for

from locas.run_folder import read_manifest
from locas.tiny import sample_text
from orchestration.tracking import flatten, numbers, tracking_uri

ROOT = Path(__file__).resolve().parents[1]


def test_the_uri_is_the_flags_else_the_environments_else_none(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None, tmp_path / "run") is None  # no URI: no tracking
    assert tracking_uri("embedded", tmp_path / "run") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://host:5000")
    assert tracking_uri(None, tmp_path / "run") == "http://host:5000"
    assert tracking_uri("http://other:1", tmp_path / "run") == "http://other:1"
    assert numbers({"ppl@50000": 2.5, "n": 3, "bad": None, "nan": float("nan"), "ok": True,
                    "best": {"ppl": 1.5}}) == {"ppl_at_50000": 2.5, "n": 3.0, "best.ppl": 1.5}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real MLflow server for the session, on a free loopback port, stopped (its process group) at the end."""
    folder = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "art")]
    log = open(folder / "server.log", "w")  # noqa: SIM115 - the server writes it until the session ends
    server = subprocess.Popen(command, cwd=folder, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
    uri = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
        except OSError:
            return server.poll() is not None  # ended: fail below, not after the timeout

    try:
        wait_for(healthy, 180, "the MLflow server", every=0.5)
        assert server.poll() is None, (folder / "server.log").read_text()[-2000:]
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture
def experiment(mlflow_server, monkeypatch, request):
    """A client, and an experiment of the test's own (runs of other tests are not in it)."""
    from mlflow import MlflowClient

    name = request.node.name
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(mlflow_server)
    yield client, name
    found = client.get_experiment_by_name(name)
    if found is not None:
        client.delete_experiment(found.experiment_id)


def runs_of(client, name):
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    folder = tmp_path_factory.mktemp("books")
    for i, words in enumerate([300, 500, 700]):
        (folder / f"b{i}.txt").write_text(sample_text(words, seed=i))
    return folder


def flags(tiny_path, books, output, uri):
    return ["--model", str(tiny_path), "--data", str(books), "--output", str(output), "--window_size", "64",
            "--memory_width", "8", "--max_tokens", "400", "--no_progress", "--tracking", uri]


@pytest.mark.slow
def test_a_killed_and_resumed_run_is_one_mlflow_run_with_its_config_and_summary(ray_local, tiny_path, books,
                                                                                tmp_path, experiment, mlflow_server):
    client, name = experiment
    out = tmp_path / "run"
    script = str(ROOT / "orchestration" / "run_pg19.py")
    command = [sys.executable, script, *flags(tiny_path, books, out, mlflow_server)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    driver = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ledger_lines(out) >= 1, 120, "the driver's first finished unit", every=0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    resumed = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    manifest = read_manifest(out)
    (run,) = runs_of(client, name)  # one MLflow run for the killed run and its resumption
    assert manifest["mlflow"] == {mlflow_server: run.info.run_id} and run.info.status == "FINISHED"
    assert manifest["config"]["model"]["dtype"] == "float32"  # no --dtype on a CPU run
    assert run.data.params == {k: str(v) for k, v in flatten(manifest["config"]).items()}
    summary = json.loads((out / "summary.json").read_text())
    assert numbers(summary) and all(run.data.metrics[k] == pytest.approx(v) for k, v in numbers(summary).items())
    for key in ("running/units", "running/ppl", "running/tokens_per_second", "ppl"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)  # no step logged twice
    units = client.get_metric_history(run.info.run_id, "running/units")
    assert [m.value for m in units] == [float(m.step) for m in units] and max(m.step for m in units) == 3
    assert "summary.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


STUDY = """\
defaults: {{model: {model}, data: {books}, window_size: 64, memory_width: 8, max_tokens: 300}}
runs:
  none: {{task: pg19, method: none}}
  locas: {{task: pg19, method: locas}}
"""


@pytest.mark.slow
def test_a_studys_runs_are_nested_under_it(ray_local, tiny_path, books, tmp_path, experiment, mlflow_server):
    from orchestration.cli import RunOptions
    from orchestration.study import run_study

    client, name = experiment
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(model=tiny_path, books=books))
    pool = RunOptions(output=str(tmp_path / "study"), no_progress=True, tracking=mlflow_server)
    assert run_study(study, pool, report=False) == 0
    runs = runs_of(client, name)
    (parent,) = [r for r in runs if r.data.tags.get("locas.task") == "study"]
    children = {r.info.run_name: r for r in runs if r is not parent}
    assert set(children) == {"none", "locas"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children.values())
    for folder, run in children.items():
        manifest = read_manifest(tmp_path / "study" / folder)
        assert manifest["mlflow"] == {mlflow_server: run.info.run_id}
        assert run.data.params == {k: str(v) for k, v in flatten(manifest["config"]).items()}
    assert parent.data.params == {"study": str(study.resolve())}


@pytest.mark.slow
def test_a_sweeps_trials_are_nested_under_the_sweep_by_tunes_logger(ray_local, tiny_path, books, tmp_path,
                                                                   experiment, mlflow_server):
    from orchestration.run_sweep import main

    client, name = experiment
    out = tmp_path / "sweep"
    argv = ["--model", str(tiny_path), "--data", str(books), "--window_size", "64", "--max_tokens", "300",
            "--grid", "memory_width=4,8", "--output", str(out), "--no_progress", "--tracking", mlflow_server]
    assert main(argv) == 0
    runs = runs_of(client, name)
    sweep_id = read_manifest(out)["mlflow"][mlflow_server]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep_id]
    assert len(runs) == 3 and len(trials) == 2
    assert {r.data.params["memory_width"] for r in trials} == {"4", "8"}  # Tune's config of each trial
    assert all(r.data.metrics["books_done"] == 3 for r in trials)
