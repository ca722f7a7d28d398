"""Ray Tune sweeps: the dev-set guard, the trial process's Worker, and whole
sweeps on a local Ray with the tiny model (a 4-trial grid, an interrupted sweep resumed, ASHA stopping one)."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from locas.config import AdaptConfig, ModelSpec
from locas.errors import LocasError
from locas.run_folder import read_ledger, read_rows
from locas.tasks.pg19.data import refuse_test_books as refuse_test_split
from orchestration.run_sweep import main
from orchestration.sweep import trial
from orchestration.sweep.driver import best_command, trial_resources


# --------------------------------------------------------------------------- dev set, resources, commands

def test_the_test_split_is_refused_unless_allowed(tmp_path, capsys):
    with pytest.raises(LocasError, match="--allow_test"):
        refuse_test_split("emozilla/pg19", "test")
    (tmp_path / "pg19" / "test").mkdir(parents=True)
    with pytest.raises(LocasError, match="folder named test"):
        refuse_test_split(str(tmp_path / "pg19" / "test"), "validation")
    books = tmp_path / "shared" / "books"
    books.mkdir(parents=True)
    (tmp_path / "shared" / "test_split_ids.tsv").write_text("index\tbook_id\ttitle\n0\t10146\tReminiscences\n")
    with pytest.raises(LocasError, match="10146 are PG-19 test books"):
        refuse_test_split(str(books), "validation", ["10146"])
    refuse_test_split(str(books), "validation", ["999"])
    refuse_test_split("emozilla/pg19", "test", allow_test=True)
    refuse_test_split("emozilla/pg19", "validation")
    assert main(["--grid", "memory_width=8,16", "--split", "test", "--output", str(tmp_path / "o")]) == 2
    assert "--allow_test" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_trial_resources():
    assert trial_resources(4, None, {"GPU": 8, "CPU": 64}) == ({"cpu": 1, "gpu": 1}, 4)
    assert trial_resources(2, 0.5, {"GPU": 2, "CPU": 64}) == ({"cpu": 1, "gpu": 0.5}, 4)
    assert trial_resources(0, None, {"CPU": 2}, num_workers=8) == ({"cpu": 1}, 2)
    assert trial_resources(1, None, {"CPU": 2}) == ({"cpu": 1, "gpu": 1}, 1)  # GPUs the autoscaler will start
    with pytest.raises(LocasError, match="needs --num_gpus"):
        trial_resources(0, 1, {"CPU": 2})


def test_best_command_runs_the_setting_on_the_test_split():
    from locas.tasks import task
    from orchestration.cli import parse

    cfg = AdaptConfig(method="lora", memory_width=16, memory_init="random", loss="SD", lr=1e-3, window_size=512,
                      max_tokens=5000)
    spec = ModelSpec(model="/models/my model", dtype="float32")
    cmd = best_command(cfg, spec, "emozilla/pg19", num_gpus=8)
    assert cmd.startswith("python orchestration/run_pg19.py --model '/models/my model' --dtype float32")
    for flag in ("--method lora", "--loss SD", "--lr 0.001", "--window_size 512", "--data emozilla/pg19",
                 "--split test", "--num_gpus 8"):
        assert flag in cmd
    import shlex

    plan = parse(task("pg19"), shlex.split(cmd)[2:])  # the printed flags give the same configs back
    assert plan.cfg == cfg.replace(max_tokens=None) and plan.spec == spec and plan.options.split == "test"


def test_a_trial_process_keeps_one_worker_per_model(monkeypatch):
    monkeypatch.setattr(trial, "_PROCESS", {})
    a = trial.process_worker(ModelSpec(model="a"), require_cuda=False)
    assert trial.process_worker(ModelSpec(model="a"), require_cuda=False) is a
    b = trial.process_worker(ModelSpec(model="b"), require_cuda=False)
    assert b is not a and trial._PROCESS == {"worker": b}  # another model replaces the first


# --------------------------------------------------------------------------- sweeps on a local Ray

@pytest.fixture(scope="module")
def dev_books(tmp_path_factory):
    from locas.tiny import sample_text

    folder = tmp_path_factory.mktemp("dev-books")
    for i in range(3):
        (folder / f"book{i}.txt").write_text(sample_text(250 + 100 * i, seed=10 + i))
    return folder


def sweep_args(tiny_path, dev_books, output, *extra):
    return ["--model", str(tiny_path), "--dtype", "float32", "--data", str(dev_books), "--window_size", "64",
            "--memory_width", "8", "--output", str(output), "--no_progress", *extra]


def test_a_4_trial_grid_writes_one_row_per_trial(ray_local, tiny_path, dev_books, tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = ["--grid", "memory_width=4,8", "--grid", "memory_init=highest,random"]
    assert main(sweep_args(tiny_path, dev_books, out, *grid)) == 0
    printed = capsys.readouterr().out
    df = pd.read_csv(out / "trials.csv")
    assert len(df) == 4 and df["trial"].is_unique
    assert set(zip(df["memory_width"], df["memory_init"])) == {(4, "highest"), (4, "random"), (8, "highest"),
                                                               (8, "random")}
    assert (df["status"] == "completed").all() and (df["books_done"] == 3).all()
    assert df["ppl"].map(math.isfinite).all() and (df["ppl"] > 1).all()
    assert (df["method"] == "locas").all() and (df["lr"] == 4e-3).all() and (df["window_size"] == 64).all()
    assert list(df.columns[:3]) == ["trial", "method", "loss"]
    assert (df["loads"] == 1).all()  # each worker process loaded the model once, however many trials it ran
    assert list(df["ppl"]) == sorted(df["ppl"])  # best first
    best = df.iloc[0]
    command = next(line for line in printed.splitlines() if line.startswith("python orchestration/run_pg19.py"))
    import shlex

    from locas.tasks import task
    from orchestration.cli import parse

    plan = parse(task("pg19"), shlex.split(command)[2:])  # the best setting, on the test split
    assert (plan.cfg.memory_width, plan.cfg.memory_init) == (best["memory_width"], best["memory_init"])
    assert plan.options.split == "test" and plan.cfg.window_size == 64 and plan.options.data == str(dev_books)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["trial"] == best["trial"] and summary["statuses"]["completed"] == 4
    # the store holds each trial's book rows and its trial row, one ledger line per trial
    assert len(read_ledger(out)) == 4
    rows = read_rows(out)
    assert sum(r["kind"] == "book" for r in rows) == 12 and sum(r["kind"] == "trial" for r in rows) == 4
    book_ppl = {r["config_id"]: r for r in rows if r["kind"] == "trial"}
    for cid, trow in book_ppl.items():
        books = [r for r in rows if r["kind"] == "book" and r["config_id"] == cid]
        assert trow["ppl"] == pytest.approx(math.exp(sum(b["nll_sum"] for b in books) /
                                                     sum(b["scored_tokens"] for b in books)))


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_local, tiny_path, dev_books, tmp_path,
                                                                         capsys):
    out = tmp_path / "sweep"
    cmd = sweep_args(tiny_path, dev_books, out, "--grid", "memory_width=4,8", "--grid", "loss_function=NTP,SD",
                     "--max_books", "2")
    assert main(cmd + ["--max_trials", "2"]) == 0  # stops after 2 trials, as an interruption would
    assert "2 ran now, 0 already finished, 2 not finished yet" in capsys.readouterr().out
    first = pd.read_csv(out / "trials.csv")
    assert len(first) == 2
    assert main(cmd) == 0  # the same command again
    assert "2 ran now, 2 already finished" in capsys.readouterr().out
    df = pd.read_csv(out / "trials.csv")
    assert len(df) == 4 and df["trial"].is_unique and (df["books_done"] == 2).all()
    assert set(first["trial"]) < set(df["trial"])
    kept = df.set_index("trial").loc[first["trial"]]
    assert list(kept["seconds"]) == list(first.set_index("trial")["seconds"])  # not rerun
    assert main(cmd) == 0
    assert "0 ran now, 4 already finished" in capsys.readouterr().out
    assert len(read_ledger(out)) == 4
    # another model or other books in the same folder is refused, not mixed in
    assert main(sweep_args(tiny_path, dev_books, out, "--grid", "memory_width=4,8")) == 2
    assert "use another --output" in capsys.readouterr().err


def test_a_trial_whose_process_dies_resumes_from_its_checkpoint(ray_local, tiny_path, tmp_path, capsys):
    """As on a lost node: the trial's process is killed after its second book; Tune (FailureConfig) restarts the
    trial, which resumes from its checkpoint: every book once, the first one not adapted again, and the
    setting in Tune's own records of the trial."""
    import contextlib
    import os
    import signal
    import threading
    import time

    from locas.tiny import sample_text

    books = tmp_path / "books"
    books.mkdir()
    for i in range(5):  # ~50 windows each: after the second, three books leave time for the kill to land
        (books / f"long{i}.txt").write_text(sample_text(1500, seed=20 + i))
    out = tmp_path / "sweep"
    finished = {}
    run = threading.Thread(target=lambda: finished.setdefault("code", main(sweep_args(
        tiny_path, books, out, "--grid", "memory_width=8", "--grid", "lr=0.004"))))
    run.start()
    first_book, deadline = None, time.monotonic() + 120
    while first_book is None and run.is_alive() and time.monotonic() < deadline:
        # the second book's checkpoint: the trial computes it after Tune fetched the first result, so by then the
        # first checkpoint is registered (the first's own file may precede its registration: a kill then races)
        for saved in out.glob(f"tune/trials-*/trial_*/checkpoint_000001/{trial.CHECKPOINT}"):
            with contextlib.suppress(ValueError):  # still being written
                first_book = json.loads(saved.read_text())[0]
        time.sleep(0.05)
    assert first_book is not None and run.is_alive(), "the trial ended before its process could be killed"
    trial_pids = [int(proc.parent.name) for proc in Path("/proc").glob("[0-9]*/cmdline")  # Ray titles Tune's
                  if proc.exists() and proc.read_bytes().startswith(b"ray::ImplicitFunc")]  # trial actor so
    assert len(trial_pids) == 1, trial_pids
    os.kill(trial_pids[0], signal.SIGKILL)
    run.join(timeout=180)
    assert finished.get("code") == 0
    df = pd.read_csv(out / "trials.csv")
    assert len(df) == 1 and df["status"][0] == "completed" and df["books_done"][0] == 5
    assert df["worker_pid"][0] != trial_pids[0]  # finished by the restarted trial
    rows = [r for r in read_rows(out) if r["kind"] == "book"]
    assert sorted(r["book_id"] for r in rows) == [f"long{i}" for i in range(5)]  # every book exactly once
    assert next(r for r in rows if r["book_id"] == first_book["book_id"])["seconds"] == first_book["seconds"]  # kept
    params = json.loads(next(out.glob("tune/trials-*/trial_*/params.json")).read_text())
    assert (params["memory_width"], params["lr"]) == (8, 0.004)


def test_asha_stops_a_bad_setting_and_a_too_wide_memory_is_refused(ray_local, tiny_path, dev_books, tmp_path,
                                                                       capsys):
    out = tmp_path / "sweep"
    # a width larger than the MLP is refused before any trial runs
    assert main(sweep_args(tiny_path, dev_books, out, "--grid", "memory_width=4,512")) == 2
    assert "larger than the model's MLP" in capsys.readouterr().err and not out.exists()
    # one trial at a time, in grid order: locas (3 steps of lr 0.05 per window learns the repetitive text: PPL
    # ~450 on the first book) runs first; at the first rung the frozen model (~490) is worse, so ASHA stops it
    argv = sweep_args(tiny_path, dev_books, out, "--grid", "method=locas,none", "--lr", "0.05", "--steps", "3",
                      "--asha")
    assert main(argv) == 0
    capsys.readouterr()
    df = pd.read_csv(out / "trials.csv").set_index("method")
    assert df.loc["locas", "status"] == "completed" and df.loc["locas", "books_done"] == 3
    assert df.loc["none", "status"] == "stopped" and df.loc["none", "books_done"] == 1
    assert df.loc["none", "ppl"] > df.loc["locas", "ppl"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["status"] == "completed" and summary["remaining"] == []
