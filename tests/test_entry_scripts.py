"""The user's commands end to end on a local Ray: results, resume, refusals, a killed driver."""
import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import PG19_BOOKS, ledger_lines, require, wait_for

from analysis.load import load_run
from analysis.tables import pg19_table
from locas.run_folder import read_manifest, read_rows
from locas.tiny import sample_text
from orchestration import run_pg19

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
    assert run_pg19.main(flags(tiny_path, books, out)) == 1  # a unit failed: the exit code says so
    captured = capsys.readouterr()
    assert "1 unit(s) failed" in captured.err and "--retry_failed" in captured.err
    rows = read_rows(out)
    assert sorted(book_table(out)) == ["b0", "b1", "b2", "b3"]
    errors = [r for r in rows if r["kind"] == "error"]
    assert len(errors) == 1 and "short" in errors[0]["unit_id"] and "too short" in errors[0]["error"]
    assert all(r["node"] and r["device"] == "cpu" and r["config_id"] and r["method"] == "locas" for r in rows)
    manifest = read_manifest(out)
    assert manifest["workers"] and manifest["workers"][0]["device"] == "cpu"
    assert manifest["config"]["adapt"]["method"] == "locas" and manifest["packages"]["torch"]
    assert "universal newlines" in manifest["config"]["text"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["books"] == 4 and summary["errors"] == 1 and summary["ppl"] > 1
    assert "rows:" in captured.out and "b3" in captured.out

    assert run_pg19.main(flags(tiny_path, books, out)) == 1
    assert "5 already finished" in capsys.readouterr().out
    assert len(read_rows(out)) == len(rows)

    runs = load_run(out)  # the notebooks' reader sees the same figures as the run's summary
    assert len(runs.books) == 4 and len(runs.errors) == 1
    assert pg19_table(runs)["ppl"].iloc[0] == pytest.approx(summary["ppl"])


def test_reusing_an_output_folder_with_another_config_is_refused(ray_local, tiny_path, books, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_pg19.main(flags(tiny_path, books, out, "--max_books", "1")) == 0
    capsys.readouterr()
    assert run_pg19.main(flags(tiny_path, books, out, "--max_books", "1", "--lr", "1e-2")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "another --output" in err and "adapt.lr: None -> 0.01" in err
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
    assert run_pg19.main(flags(tiny_path, books, reference, "--max_tokens", "400")) == 1
    command = [sys.executable, str(ROOT / "orchestration" / "run_pg19.py"),
               *flags(tiny_path, books, out, "--max_tokens", "400")]
    # the drivers join the test session's Ray, as a user's join their cluster; a killed driver's actors go with it
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    driver = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ledger_lines(out) >= 1, 120, "the driver's first finished unit", every=0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finished_before = ledger_lines(out)
    assert 1 <= finished_before, "the driver should have finished a unit before it was killed"
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 1, resumed.stderr  # the short book failed: every other unit is done
    assert f"{finished_before} already finished" in resumed.stdout
    rows = read_rows(out)
    unit_ids = [r["unit_id"] for r in rows if r["kind"] in ("book", "error")]
    assert len(unit_ids) == len(set(unit_ids)) == 5
    assert book_table(out) == pytest.approx(book_table(reference))


def test_sigterm_ends_a_run_as_ctrl_c_does(ray_local, tiny_path, books, tmp_path, capsys):
    """`ray job stop` sends the driver SIGTERM: exit code 130 and the line saying how to resume, the finished
    units kept, the actors given back."""
    out = tmp_path / "stopped"

    def stop_after_the_first_unit():
        wait_for(lambda: ledger_lines(out) >= 1, 120, "the run's first finished unit", every=0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    # a SIGTERM that came after the run had put its handler back must not end the test session
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        threading.Thread(target=stop_after_the_first_unit, daemon=True).start()
        code = run_pg19.main(flags(tiny_path, books, out))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 130 and "interrupted: rerun the same command to resume" in capsys.readouterr().err
    assert 1 <= ledger_lines(out) < 5
    wait_for(lambda: ray_local.available_resources().get("CPU") == 2, 30,
             "the stopped run's actors to give back their CPUs", every=0.1)


def test_run_locomo_end_to_end(ray_local, tiny_path, tmp_path, capsys):
    from locomo_inputs import sample

    from orchestration import run_locomo

    data = tmp_path / "locomo.json"
    data.write_text(json.dumps([sample("conv-a"), sample("conv-b")]))
    out = tmp_path / "locomo"
    argv = ["--model", str(tiny_path), "--data", str(data), "--output", str(out), "--dtype", "float32",
            "--memory_type", "locas", "--ttt_loss", "ST", "--memory_width", "8", "--window_size", "128",
            "--no_progress"]
    assert run_locomo.main(argv) == 1  # each conversation holds a question without an answer: error rows
    rows = read_rows(out)
    qa = [r for r in rows if r["kind"] == "qa"]
    assert len(qa) == 10 and {r["conversation_id"] for r in qa} == {"conv-a", "conv-b"}
    assert sum(r["kind"] == "error" for r in rows) == 2  # the question without an answer, once per conversation
    manifest = read_manifest(out)
    assert manifest["config"]["adapt"]["loss"] == "SD" and manifest["config"]["adapt"]["steps_per_window"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["questions"] == 10 and "f1_single_hop" in summary and "f1_adversarial_report" in summary
    assert "rows:" in capsys.readouterr().out
    conversations = [r for r in rows if r["kind"] == "conversation"]
    assert len(conversations) == 2 and all(r["tokens"] > 0 and r["windows"] >= 3 for r in conversations)


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
    assert summary["agreement"] >= 99.9 and summary["questions"] == 8


def test_defaults_are_safe_and_fit_the_device():
    from locas.tasks import task as registered
    from orchestration.cli import parse
    from orchestration.tasks import documents_at_once

    def plan(*argv, task="pg19"):
        return parse(registered(task), ["--output", "x", *argv])

    def batch_size(plan):
        return documents_at_once(plan.task, plan.cfg, bool(plan.run.num_gpus), plan.run.batch_size)

    assert plan().spec.trust_remote_code is False and plan("--trust_remote_code").spec.trust_remote_code
    assert batch_size(plan()) == 1 and batch_size(plan("--num_gpus", "2")) == 8
    assert batch_size(plan("--num_gpus", "2", "--loss_function", "ST")) == 4
    assert batch_size(plan("--num_gpus", "2", "--method", "lora")) == 1
    assert batch_size(plan("--num_gpus", "2", task="locomo")) == 1
    assert batch_size(plan("--num_gpus", "2", "--batch_size", "3")) == 3
    assert plan("--steps", "3").cfg.steps_per_window == 3 and plan("--memory_type", "lora").cfg.method == "lora"
    assert plan(task="locomo").cfg.steps == 2 and plan().spec.dtype is None  # decided by the device:
    assert plan().spec.on(gpu=False).dtype == "float32" and plan().spec.on(gpu=True).dtype == "bfloat16"
    assert plan("--device", "cpu").spec.on(gpu=True).dtype == "float32"
    assert plan("--dtype", "bfloat16").spec.on(gpu=False).dtype == "bfloat16"  # as asked


def test_help_shows_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        run_pg19.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--memory_width MEMORY_WIDTH memory rows r per layer (memorize's keep_top) (default: 64)",
                 "--loss {NTP,SD,MIX,GRPO,ST}, --loss_function {NTP,SD,MIX,GRPO,ST}, --ttt_loss {NTP,SD,MIX,GRPO,ST}",
                 "(default: NTP)", "--split SPLIT", "(default: test)", "--retry_failed"):
        assert flag in text, flag


def test_a_window_longer_than_the_models_positions_is_refused(tiny_path, books, tmp_path, capsys):
    out = tmp_path / "run"
    argv = flags(tiny_path, books, out)
    argv[argv.index("--window_size") + 1] = "8192"
    assert run_pg19.main(argv) == 2
    assert "--window_size 8192 is more than the model's 4096 positions" in capsys.readouterr().err
    assert run_pg19.main(flags(tiny_path, books, out, "--window_size", "3000", "--loss_function", "SD")) == 2
    assert "plus the SD teacher's 3000 tokens" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_the_command_on_a_shared_book_agrees_with_the_model_card(ray_local, tinylm_path, tmp_path):
    """tinylm-pg19's card: PPL about 58 on PG-19 test books with 512-token windows. The command's number must
    agree with it, and equal a plain loop over the book's text as the HF PG-19 builder yields it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    book = require(PG19_BOOKS / "31974.txt")
    out = tmp_path / "card"
    argv = ["--model", str(tinylm_path), "--data", str(PG19_BOOKS), "--book_ids", "31974", "--method", "none",
            "--window_size", "512", "--dtype", "float32", "--output", str(out), "--no_progress"]
    assert run_pg19.main(argv) == 0
    ppl = json.loads((out / "summary.json").read_text())["ppl"]

    text = book.read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as the builder
    ids = AutoTokenizer.from_pretrained(tinylm_path)(text, add_special_tokens=False).input_ids
    model = AutoModelForCausalLM.from_pretrained(tinylm_path, dtype=torch.float32).eval()
    nll, start = 0.0, 0
    while start < len(ids) - 1:  # windows of 512 sharing one token: every token but the first scored once
        window = torch.tensor([ids[start:start + 512]])
        with torch.no_grad():
            logits = model(window).logits[0, :-1]
        nll += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum").item()
        start += 511
    plain = math.exp(nll / (len(ids) - 1))
    print(f"book 31974, 512-token windows: command PPL {ppl:.3f}, plain loop {plain:.3f} (card: about 58)")
    assert ppl == pytest.approx(plain, rel=1e-4)
    assert 40 < ppl < 80


def test_memory_wider_than_the_mlp_is_refused_before_anything_runs(tiny_path, books, tmp_path, capsys):
    out = tmp_path / "run"
    argv = flags(tiny_path, books, out)
    argv[argv.index("--memory_width") + 1] = "4096"
    assert run_pg19.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--memory_width 4096 is larger than the model's MLP (128 units)" in err and not out.exists()
