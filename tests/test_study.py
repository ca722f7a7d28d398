"""Studies: the shipped study files, mistakes named before anything starts, and the demo study on one local
pool (its report, a rerun that resumes it, a run added to it that fails a unit)."""
import json
from pathlib import Path

import pytest

from locas.errors import LocasError
from orchestration import run_study
from orchestration.study import plan_study

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def test_the_shipped_studies_parse_with_their_scripts_flags(tmp_path):
    paper = {run.name: run for run in plan_study(STUDIES / "paper.yaml", tmp_path, check_models=False)}
    assert {(run.task, plan.cfg.method) for run in paper.values() for _, plan in run.plans} == {
        ("pg19", "none"), ("pg19", "lora"), ("pg19", "locas"), ("locomo", "none"), ("locomo", "lora"),
        ("locomo", "locas"), ("mmlu", "locas"), ("mmlu", "lora")}
    locas = paper["pg19-locas"].plans[0][1]
    assert (locas.spec.model, locas.cfg.memory_width, locas.options.split) == ("Qwen/Qwen3-1.7B-Base", 64, "test")
    # the paper's relative time at equal batching: every PG-19 run adapts one book at a time
    assert {p.run.batch_size for r in paper.values() if r.task == "pg19" for _, p in r.plans} == {1}
    assert {p.cfg.loss for r in paper.values() if r.task == "locomo" for _, p in r.plans if p.cfg.method != "none"} \
        == {"SD"}
    ablations = {run.name: run for run in plan_study(STUDIES / "ablations.yaml", tmp_path, check_models=False)}
    assert sorted(p.cfg.memory_init for _, p in ablations["init"].plans) == ["highest", "lowest", "random", "random_index"]
    assert [p.cfg.memory_width for _, p in ablations["width"].plans] == [16, 32, 64, 128, 256]
    assert all(folder.startswith("width/") for folder, _ in ablations["width"].plans)


@pytest.mark.parametrize("text, match", [
    ("runs:\n  a: {task: pg19, memory_widht: 8}\n", "run a: unrecognized arguments: --memory_widht 8"),
    ("runs:\n  a: {task: pg20}\n", "run a: needs `task:` one of pg19, locomo, mmlu, sweep"),
    ("runs:\n  a: {task: pg19, method: lora2}\n", "run a: argument --method/--memory_type: invalid choice"),
    ("defaults: {window: 64}\nruns:\n  a: {task: pg19}\n", "defaults: unknown flag"),
    ("runs:\n  a/b: {task: pg19}\n", "a run's name is its folder's"),
    ("runs: []\n", "expected a mapping with `runs:`"),
    ("runz:\n  a: {task: pg19}\n", "expected a mapping with `runs:`"),
])
def test_a_mistake_fails_before_anything_starts_naming_its_run(tmp_path, text, match):
    study = tmp_path / "bad.yaml"
    study.write_text(text)
    with pytest.raises(LocasError, match=match):
        plan_study(study, tmp_path / "out", check_models=False)
    assert not (tmp_path / "out").exists()


def test_the_demo_study_reports_resumes_and_runs_only_what_is_added(ray_local, tmp_path, capsys):
    import nbformat

    out = tmp_path / "study"
    assert run_study.main(["--demo", "--output", str(out), "--num_workers", "2", "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "0 failed, 0 already finished; model loads per actor: [1, 1]" in printed  # one model: one load each
    status = json.loads((out / "study.json").read_text())
    assert status["state"] == "finished" and len(status["runs"]) == 8  # 6 runs and the sweep's 2 trials
    assert all(r["done"] == r["units"] > 0 and r["status"] == "finished" for r in status["runs"].values())
    for name in ("pg19-none", "pg19-locas", "pg19-lora", "locomo-none", "locomo-locas", "mmlu-locas"):
        assert (out / name / "summary.json").is_file() and (out / name / "ledger.jsonl").is_file()
    assert len(list((out / "width").glob("*/ledger.jsonl"))) == 2 and (out / "width" / "trials.csv").is_file()

    report = (out / "report.md").read_text()
    assert "no run of the study gives this table" not in report  # every table has rows from real runs
    for section in ("PG-19: perplexity at depth", "LoCoMo: F1 per category", "MMLU: retention", "Ablations: sweeps"):
        assert f"## {section}" in report
    # a tiny model: the paper's figures are not beside it, and each row says what differs
    assert "19.04" not in report and "model demo-inputs/model ≠ Qwen/Qwen3-1.7B-Base" in report
    assert "Every unit of every run finished." in report and "![PPL against position](report_ppl_by_position.png)" in report
    book = nbformat.read(out / "report.ipynb", as_version=4)
    outputs = [o for cell in book.cells for o in cell.get("outputs", [])]
    assert outputs and not any(o.get("output_type") == "error" for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4  # position, cost, LoCoMo, MMLU

    # the same command again: nothing left to run
    assert run_study.main(["--demo", "--output", str(out), "--num_workers", "2", "--no_progress"]) == 0
    assert "0 done, 0 failed, 22 already finished" in capsys.readouterr().out

    # a run added to the file is the only one that runs; its too-short book fails, the study goes on
    books = tmp_path / "books"
    books.mkdir()
    (books / "long.txt").write_text((out / "demo-inputs" / "books" / "demo0.txt").read_text())
    (books / "short.txt").write_text("a")
    grown = tmp_path / "grown.yaml"
    grown.write_text((STUDIES / "demo.yaml").read_text() + (
        f"  pg19-added: {{task: pg19, method: locas, demo: false, model: {out / 'demo-inputs' / 'model'}, "
        f"dtype: float32, window_size: 256, memory_width: 32, data: {books}}}\n"))
    assert run_study.main([str(grown), "--output", str(out), "--num_workers", "2", "--no_progress"]) == 1
    assert "1 done, 1 failed, 22 already finished" in capsys.readouterr().out
    added = json.loads((out / "study.json").read_text())["runs"]["pg19-added"]
    assert (added["done"], added["failed"]) == (1, 1)
    grown_report = (out / "report.md").read_text()
    assert "pg19-added" in grown_report and "Not every unit finished: 0 stopped, 1 failed" in grown_report
