"""Adding a task is one folder and one registry line (docs/design.md): the toy task of tests/toytext/, a folder
of plain-text documents scored window by window with a row kind of its own, runs end to end on the real run
path (the CLI, Ray actors, the run store) and its summary and table come from its own folder."""
import json
import math
import warnings

import pytest

from analysis.load import load_run
from locas.tasks import TASKS
from locas.tiny import sample_text
from orchestration.cli import run_task


def reference_nll(tiny_path, text: str) -> tuple[float, int]:
    """Σ NLL of every token but the first under the frozen model in one forward (transformers only)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits.double(), ids[0, 1:], reduction="sum")
    return float(nll), ids.shape[1] - 1


def test_a_fourth_task_is_one_folder_and_one_registry_line(ray_local, tiny_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TASKS, "toytext", "tests.toytext")  # the one registry line
    docs = tmp_path / "docs"
    docs.mkdir()
    texts = {f"doc{i}": sample_text(20 + 10 * i, seed=i) for i in range(3)}
    for name, text in texts.items():
        (docs / f"{name}.txt").write_text(text)
    out = tmp_path / "run"
    argv = ["--model", str(tiny_path), "--data", str(docs), "--output", str(out), "--dtype", "float32",
            "--device", "cpu", "--method", "none", "--window_size", "1024", "--no_progress"]
    assert run_task("toytext", argv) == 0
    printed = capsys.readouterr().out
    assert "units: 3 done, 0 failed, 0 already finished" in printed and "doc2" in printed  # its table

    runs = load_run(out)
    assert sorted(runs.texts["doc_id"]) == sorted(texts) and runs.other.empty and runs.errors.empty
    assert set(runs.texts["task"]) == {"toytext"} and runs.texts["node"].notna().all()  # stamped by a worker
    for name, text in texts.items():  # method none: the frozen model's NLL, as one plain forward gives it
        nll, scored = reference_nll(tiny_path, text)
        row = runs.texts.set_index("doc_id").loc[name]
        assert row["scored_tokens"] == scored and row["nll_sum"] == pytest.approx(nll, rel=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    pooled = math.exp(runs.texts["nll_sum"].sum() / runs.texts["scored_tokens"].sum())
    assert summary["texts"] == 3 and summary["errors"] == 0 and summary["ppl"] == pytest.approx(pooled)

    assert run_task("toytext", argv) == 0 and "3 already finished" in capsys.readouterr().out  # resumes

    monkeypatch.delitem(TASKS, "toytext")  # unregistered, its rows are kept apart and said so, never dropped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = load_run(out)
    assert len(runs.other) == 3 and set(runs.other["kind"]) == {"text"}
    assert any("no registered task knows" in str(w.message) for w in caught)
