"""The results notebooks run top to bottom (nbclient) against small run stores written here."""
import math
from pathlib import Path

import numpy as np
import pytest
from run_rows import QA, grid, mmlu_rows, pg19_rows, qa_rows, sweep_trials, write_run

pytestmark = pytest.mark.slow  # each test executes notebooks

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "analysis" / "notebooks"
METHODS = {"none": ("c0", 0.0, 0, 1.0), "locas": ("c1", -0.05, 11_000, 1.8), "lora": ("c2", -0.03, 70_000, 4.7)}


def pg19_stores(root: Path) -> list[Path]:
    """One run per method, six books of 60K-230K tokens in 20K windows; plus an MMLU retention run."""
    rng = np.random.default_rng(0)
    lengths = [60_000, 110_000, 160_000, 210_000, 230_000, 90_000]
    base = {i: rng.normal(3.0, 0.1) for i in range(len(lengths))}
    folders = []
    for method, (config_id, gain, params, cost) in METHODS.items():
        rows = []
        for i, tokens in enumerate(lengths):
            per_token = lambda k, start, i=i: base[i] - 1e-6 * start + gain * math.log1p(k)  # noqa: E731
            rows += pg19_rows(method, config_id, f"book{i}", grid(tokens, 20_000, per_token), seconds=cost,
                              trainable_params=params)
        rows += [{"kind": "error", "task": "pg19", "unit_id": f"pg19:broken:{config_id}", "config_id": config_id,
                  "method": method, "node": "n0", "device": "cuda:0", "error": "book is empty", "attempts": 1}]
        config = {"task": "pg19", "model": {"model": "tiny", "dtype": "float32"}, "options": {"data": "books"},
                  "adapt": {"method": method, "window_size": 20_000, "overlap": 1, "max_tokens": None}}
        folders.append(write_run(root / f"pg19-{method}", "pg19", config, config_id, rows))
    answers = [(subject, f"{subject}-{q}", (3 * q + len(subject)) % 4) for subject in ("algebra", "law") for q in range(5)]
    rows = mmlu_rows("none", "m0", "base", None, answers)
    for method, (config_id, *_) in METHODS.items():
        if method != "none":
            for book in ("book0", "book1"):
                rows += mmlu_rows(method, config_id, "memory", book, answers)
                rows += mmlu_rows(method, config_id, "dense", book, answers[:-1] + [(answers[-1][0], answers[-1][1], 3)])
    folders.append(write_run(root / "mmlu", "mmlu", {"task": "mmlu", "method": "locas"}, "m0", rows))
    return folders


def locomo_stores(root: Path) -> list[Path]:
    folders = []
    for i, method in enumerate(("none", "locas")):
        scores = [(c, min(1.0, f1 + 0.1 * i), report) for c, f1, report in QA]
        folders.append(write_run(root / f"locomo-{method}", "locomo", {"task": "locomo", "method": method},
                                 f"l{i}", qa_rows(method, f"l{i}", scores)))
    return folders


def sweep_store(root: Path) -> Path:
    trials = sweep_trials([(width, init, 20 - width / 64 + (init == "random"), "completed")
                           for width in (16, 32, 64) for init in ("highest", "lowest", "random")]
                          + [(128, "highest", 25.0, "stopped")])
    return write_run(root / "sweep", "pg19-sweep", {"task": "pg19-sweep"}, "s0", [], trials=trials)


def execute(name: str, runs: list[Path], launched_in: Path, monkeypatch) -> nbformat.NotebookNode:
    """Run a committed notebook as Jupyter does (in the notebook's folder) after `LOCAS_RUN=<relative paths>
    jupyter lab ...` in `launched_in`; any failing cell raises CellExecutionError."""
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code"), "commit without outputs"
    assert "LOCAS_RUN" in book.cells[0].source
    monkeypatch.setenv("LOCAS_RUN", ",".join(str(r.relative_to(launched_in)) for r in runs))
    monkeypatch.setenv("PWD", str(launched_in))
    client = nbclient.NotebookClient(book, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return book


def images(book) -> int:
    return sum("image/png" in output.get("data", {}) for cell in book.cells for output in cell.get("outputs", []))


def test_notebooks_run_on_small_stores_named_by_relative_paths(tmp_path, monkeypatch):
    pg19 = pg19_stores(tmp_path / "runs")
    book = execute("pg19", pg19, tmp_path, monkeypatch)
    assert (pg19[0] / "pg19_ppl_by_position.png").exists() and images(book) >= 1
    text = "".join(str(o.get("data", {}).get("text/plain", "")) for c in book.cells for o in c.get("outputs", []))
    assert "memory_micro" in text and "time_vs_none" in text and "Runs: 4 run(s)" in text

    locomo = locomo_stores(tmp_path / "runs")
    book = execute("locomo", locomo, tmp_path, monkeypatch)
    assert (locomo[0] / "locomo_f1.png").exists() and images(book) >= 1

    sweep = sweep_store(tmp_path / "runs")
    book = execute("sweeps", [sweep], tmp_path, monkeypatch)
    assert (sweep / "sweep_memory_width_x_memory_init.png").exists() and images(book) >= 1


def test_the_builder_reproduces_the_committed_notebooks(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", NOTEBOOKS / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.setattr(build, "HERE", tmp_path)
    build.main()
    for name in ("pg19", "locomo", "sweeps"):
        assert (tmp_path / f"{name}.ipynb").read_text() == (NOTEBOOKS / f"{name}.ipynb").read_text(), name
