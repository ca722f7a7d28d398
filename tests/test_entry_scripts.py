"""The user's commands end to end on a local Ray: results, resume, refusals, a killed driver."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.load import load_run
from analysis.tables import pg19_table
from locas.tiny import sample_text
from orchestration import run_pg19
from orchestration.store import read_manifest, read_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    folder = tmp_path_factory.mktemp("books")
    for i, words in enumerate([300, 500, 700, 900]):
        (folder / f"b{i}.txt").write_text(sample_text(words, seed=i))
    (folder / "short.txt").write_text("a")  # one token: this unit raises, the others go on
    return folder


def flags(tiny_path, books, output, *extra):
    return ["--model", str(tiny_path), "--data", str(books), "--output", str(output), "--dtype", "float32",
            "--window_size", "64", "--memory_width", "8", "--no_progress", *extra]


def book_table(output):
    return {r["book_id"]: r["ppl"] for r in read_rows(output) if r["kind"] == "book"}


def test_run_pg19_writes_rows_summary_and_resumes_without_duplicates(ray_local, tiny_path, books, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_pg19.main(flags(tiny_path, books, out)) == 0
    rows = read_rows(out)
    assert sorted(book_table(out)) == ["b0", "b1", "b2", "b3"]
    errors = [r for r in rows if r["kind"] == "error"]
    assert len(errors) == 1 and "short" in errors[0]["unit_id"] and "too short" in errors[0]["error"]
    assert all(r["node"] and r["device"] == "cpu" for r in rows if r["kind"] != "error")
    manifest = read_manifest(out)
    assert manifest["workers"] and manifest["workers"][0]["device"] == "cpu"
    assert manifest["config"]["adapt"]["method"] == "locas" and manifest["packages"]["torch"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["books"] == 4 and summary["failed_units"] == 1 and summary["ppl"] > 1
    printed = capsys.readouterr().out
    assert "rows:" in printed and "b3" in printed

    assert run_pg19.main(flags(tiny_path, books, out)) == 0
    assert "5 already finished" in capsys.readouterr().out
    assert len(read_rows(out)) == len(rows)

    runs = load_run(out)  # the notebooks' reader sees the same figures as the run's summary
    assert len(runs.books) == 4 and len(runs.errors) == 1
    assert pg19_table(runs.windows, runs.books)["ppl"].iloc[0] == pytest.approx(summary["ppl"])


def test_reusing_an_output_folder_with_another_config_is_refused(ray_local, tiny_path, books, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_pg19.main(flags(tiny_path, books, out, "--max_books", "1")) == 0
    capsys.readouterr()
    assert run_pg19.main(flags(tiny_path, books, out, "--max_books", "1", "--lr", "1e-2")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "another --output" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("bad", ["model", "data"])
def test_bad_model_or_data_path_is_one_line_and_writes_nothing(tiny_path, books, tmp_path, capsys, bad):
    out = tmp_path / "run"
    model = tmp_path / "no-model" if bad == "model" else tiny_path
    data = tmp_path / "no-data" if bad == "data" else books
    assert run_pg19.main(flags(model, data, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and str(tmp_path / f"no-{bad}") in err
    assert not out.exists()


def test_unknown_option_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_pg19.main(["--loss_function", "KL", "--output", "x"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_killed_driver_resumes_to_the_same_table(ray_local, tiny_path, books, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "killed"
    assert run_pg19.main(flags(tiny_path, books, reference, "--max_tokens", "400")) == 0
    command = [sys.executable, str(ROOT / "orchestration" / "run_pg19.py"),
               *flags(tiny_path, books, out, "--max_tokens", "400")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger, deadline = out / "ledger.jsonl", time.time() + 120
    while time.time() < deadline and not (ledger.exists() and ledger.read_text().count("\n") >= 1):
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    finished_before = ledger.read_text().count("\n")
    assert 1 <= finished_before, "the driver should have finished a unit before it was killed"
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{finished_before} already finished" in resumed.stdout
    rows = read_rows(out)
    unit_ids = [r["unit_id"] for r in rows if r["kind"] in ("book", "error")]
    assert len(unit_ids) == len(set(unit_ids)) == 5
    assert book_table(out) == pytest.approx(book_table(reference))


def test_run_locomo_end_to_end(ray_local, tiny_path, tmp_path, capsys):
    from test_task_locomo import sample

    from orchestration import run_locomo

    data = tmp_path / "locomo.json"
    data.write_text(json.dumps([sample("conv-a"), sample("conv-b")]))
    out = tmp_path / "locomo"
    argv = ["--model", str(tiny_path), "--data", str(data), "--output", str(out), "--dtype", "float32",
            "--memory_type", "locas", "--ttt_loss", "ST", "--memory_width", "8", "--window_size", "128",
            "--no_progress"]
    assert run_locomo.main(argv) == 0
    rows = read_rows(out)
    qa = [r for r in rows if r["kind"] == "qa"]
    assert len(qa) == 10 and {r["conversation_id"] for r in qa} == {"conv-a", "conv-b"}
    assert sum(r["kind"] == "error" for r in rows) == 2  # the question without an answer, once per conversation
    manifest = read_manifest(out)
    assert manifest["config"]["adapt"]["loss"] == "SD" and manifest["config"]["adapt"]["steps_per_window"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["questions"] == 10 and "f1_single_hop" in summary and "f1_adversarial_report" in summary
    assert "rows:" in capsys.readouterr().out


def test_run_mmlu_retention_end_to_end(ray_local, tiny_path, books, tmp_path):
    from orchestration import run_mmlu

    mmlu = tmp_path / "mmlu"
    mmlu.mkdir()
    lines = ["question,choice0,choice1,choice2,choice3,answer"]
    lines += [f"What is {i} plus {i}?,{2 * i},{i},{3 * i},{i + 1},0" for i in range(1, 9)]
    (mmlu / "arithmetic_test.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "retention"
    argv = ["--model", str(tiny_path), "--data", str(mmlu), "--books", str(books), "--after_book", "b0,b1",
            "--output", str(out), "--dtype", "float32", "--memory_width", "8", "--window_size", "64",
            "--max_tokens", "300", "--no_progress"]
    assert run_mmlu.main(argv) == 0
    rows = [r for r in read_rows(out) if r["kind"] == "mmlu"]
    variants = {v: [r for r in rows if r["variant"] == v] for v in ("base", "memory", "dense")}
    assert [len(v) for v in variants.values()] == [8, 16, 16]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["memory_dense_agreement"] >= 0.999


def test_defaults_are_safe_and_fit_the_device():
    from orchestration.cli import batch_size, model_spec

    parse = run_pg19.build_parser().parse_args
    assert model_spec(parse([])).trust_remote_code is False
    assert model_spec(parse(["--trust_remote_code"])).trust_remote_code is True
    assert batch_size(parse([])) == 1 and batch_size(parse(["--num_gpus", "2"])) == 8
    assert batch_size(parse(["--num_gpus", "2", "--batch_size", "3"])) == 3
    assert parse(["--steps_per_window", "3"]).steps == 3


def test_memory_wider_than_the_mlp_is_refused_before_anything_runs(tiny_path, books, tmp_path, capsys):
    out = tmp_path / "run"
    argv = flags(tiny_path, books, out)
    argv[argv.index("--memory_width") + 1] = "4096"
    assert run_pg19.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--memory_width 4096 is larger than the model's MLP (128 units)" in err and not out.exists()


def test_summary_pools_only_books_that_completed():
    def window(unit, nll, n=10, start=1):
        return {"kind": "window", "unit_id": unit, "nll_sum": nll, "scored_tokens": n, "start": start}

    rows = [window("a", 10.0), window("b", 20.0), window("c", float("nan")),
            {"kind": "book", "unit_id": "a", "tokens": 11}, {"kind": "book", "unit_id": "b", "tokens": 11},
            {"kind": "book", "unit_id": "c", "tokens": 11, "error": "non-finite loss at window 0"},
            {"kind": "error", "unit_id": "d", "error": "too short"}]
    summary = run_pg19.summarize(rows)
    assert summary["ppl"] == pytest.approx(math.exp(30.0 / 20))
    assert (summary["books"], summary["books_with_error"], summary["failed_units"]) == (2, 1, 1)
