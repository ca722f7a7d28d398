"""analysis/: the run-store reader and every aggregate against hand computations (SPEC §6-8)."""
import json
import math
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import plots, tables
from analysis.load import load_run, load_runs

# --- a small run store, written exactly as docs/design.md says -----------------------------------------


def write_run(folder, task, config, config_id, rows, *, tail="", ledger_tail="", trials=None):
    """manifest.json, rows.jsonl (rows in order), ledger.jsonl (one line per unit after its rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"task": task, "config": config, "config_id": config_id, "code_version": "test",
                "packages": {"pandas": pd.__version__}, "resources": {"gpus": 1}, "created": "2026-01-01T00:00:00"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    units = {}
    for row in rows:
        units.setdefault(row["unit_id"], []).append(row)
    with open(folder / "rows.jsonl", "w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
        out.write(tail)
    with open(folder / "ledger.jsonl", "w") as out:
        for unit, unit_rows in units.items():
            status = "failed" if any(r["kind"] == "error" for r in unit_rows) else "done"
            out.write(json.dumps({"unit_id": unit, "status": status, "rows": len(unit_rows)}) + "\n")
        out.write(ledger_tail)
    (folder / "summary.json").write_text(json.dumps({"units": len(units)}))
    if trials is not None:
        trials.to_csv(folder / "trials.csv", index=False)
    return folder


def common(task, item, method, config_id, kind):
    return {"kind": kind, "task": task, "unit_id": f"{task}:{item}:{config_id}", "config_id": config_id,
            "method": method, "node": "n0", "device": "cuda:0"}


def pg19_rows(method, config_id, book_id, windows, *, seconds=1.0, trainable_params=0, title=None):
    """windows: [(start, scored_tokens, nll per token)] -> window rows and the book row."""
    rows = []
    for index, (start, scored, per_token) in enumerate(windows):
        rows.append({**common("pg19", book_id, method, config_id, "window"), "book_id": book_id, "window": index,
                     "start": start, "scored_tokens": scored, "nll_sum": per_token * scored,
                     "train_loss": None if method == "none" else per_token, "seconds": seconds})
    tokens = windows[-1][0] + windows[-1][1]
    nll = sum(s * p for _, s, p in windows)
    scored = sum(s for _, s, _ in windows)
    rows.append({**common("pg19", book_id, method, config_id, "book"), "book_id": book_id,
                 "title": title or book_id, "tokens": tokens, "scored_tokens": scored, "nll_sum": nll,
                 "ppl": math.exp(nll / scored), "seconds": seconds * len(windows),
                 "trainable_params": trainable_params, "error": None})
    return rows


def grid(tokens, window, per_token):
    """The windows of a book of `tokens` tokens (overlap 1), with nll per token `per_token(k, start)`."""
    out, start, k = [], 1, 0
    while start < tokens:
        scored = min(window - 1, tokens - start)
        out.append((start, scored, per_token(k, start)))
        start, k = start + scored, k + 1
    return out


# Book a: 130K tokens, 5 windows; book b: 70K tokens, 2 windows (starts, scored, nll/token), by hand.
BOOK_A = [(1, 29_999, 3.0), (30_000, 30_000, 2.9), (60_000, 30_000, 2.8), (90_000, 30_000, 2.7), (120_000, 10_000, 2.6)]
BOOK_B = [(1, 34_999, 3.2), (35_000, 35_000, 3.1)]


def frame(rows, kind):
    return pd.DataFrame([r for r in rows if r["kind"] == kind]).assign(run="r")


@pytest.fixture
def hand():
    rows = pg19_rows("locas", "c1", "a", BOOK_A) + pg19_rows("locas", "c1", "b", BOOK_B)
    return frame(rows, "window"), frame(rows, "book")


# --- loading ----------------------------------------------------------------------------------------------


def test_load_keeps_ledgered_units_and_skips_torn_lines(tmp_path):
    good = pg19_rows("locas", "c1", "a", BOOK_A)
    partial = pg19_rows("locas", "c1", "b", BOOK_B)[:1]          # an attempt that never reached the ledger
    error = [{**common("pg19", "c", "locas", "c1", "error"), "error": "CUDA out of memory", "attempts": 3}]
    folder = write_run(tmp_path / "run1", "pg19", {"method": "locas", "window_size": 30_000, "memory": {"r": 64}},
                       "c1", good + error, tail='{"kind": "window", "unit_id": "pg19:a:c1", "sta')
    # the unledgered partial rows of b, and an earlier partial attempt of a, sit in the rows file too
    text = (folder / "rows.jsonl").read_text()
    earlier = json.dumps({**good[0], "nll_sum": 1e9}) + "\n"
    (folder / "rows.jsonl").write_text(earlier + "".join(json.dumps(r) + "\n" for r in partial) + text)
    with open(folder / "ledger.jsonl", "a") as out:
        out.write('{"unit_id": "pg19:b:c1", "sta')                # torn ledger line: b is not finished
    run = load_run(folder)
    assert len(run.windows) == len(BOOK_A) and set(run.windows["book_id"]) == {"a"}
    assert run.windows["nll_sum"].max() < 1e9                    # the earlier attempt's row is dropped
    assert list(run.books["book_id"]) == ["a"]
    assert run.errors[["unit_id", "error", "attempts"]].values.tolist() == [["pg19:c:c1", "CUDA out of memory", 3]]
    assert set(run.windows["run"]) == {"run1"} and set(run.windows["method"]) == {"locas"}
    assert run.windows["cfg_window_size"].eq(30_000).all() and run.windows["cfg_memory_r"].eq(64).all()
    assert run.qa.empty and run.mmlu.empty and run.trials.empty
    assert {"run", "method", "config_id", "category", "f1"} <= set(run.qa.columns)


def test_load_warns_on_a_bad_line_in_the_middle(tmp_path):
    folder = write_run(tmp_path / "r", "pg19", {}, "c1", pg19_rows("none", "c1", "a", BOOK_A))
    lines = (folder / "rows.jsonl").read_text().splitlines()
    (folder / "rows.jsonl").write_text("\n".join(lines[:2] + ["{oops"] + lines[2:]) + "\n")
    with pytest.warns(UserWarning, match="unreadable line"):
        run = load_run(folder)
    assert len(run.windows) == len(BOOK_A)


def test_load_many_runs_and_trials(tmp_path):
    write_run(tmp_path / "all" / "x", "pg19", {"method": "none"}, "c0", pg19_rows("none", "c0", "a", BOOK_A))
    write_run(tmp_path / "all" / "y", "pg19", {"method": "locas"}, "c1", pg19_rows("locas", "c1", "a", BOOK_A))
    trials = pd.DataFrame({"config/keep_top": [32, 64], "config/memory_init": ["highest", "random"],
                           "ppl": [20.0, 21.0], "books_done": [2, 2], "seconds": [5.0, 6.0],
                           "status": ["TERMINATED"] * 2, "loads": [1, 1]})
    write_run(tmp_path / "all" / "z", "pg19", {"method": "locas"}, "c2", [], trials=trials)
    listed = load_runs(f"{tmp_path / 'all' / 'x'}, {tmp_path / 'all' / 'y'}")
    assert listed.names == ["x", "y"] and sorted(listed.windows["method"].unique()) == ["locas", "none"]
    parent = load_runs(tmp_path / "all")
    assert parent.names == ["x", "y", "z"]
    assert list(parent.trials["keep_top"]) == [32, 64] and set(parent.trials["method"]) == {"locas"}
    assert tables.sweep_config_columns(parent.trials) == ["keep_top", "memory_init"]
    assert list(tables.sweep_table(parent.trials)["rank"]) == [1, 2]


def test_analysis_never_imports_torch_or_ray():
    import subprocess

    code = ("import sys, analysis.load, analysis.tables, analysis.plots; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- PG-19 aggregates against hand computations ---------------------------------------------------------


def test_ppl_at_n_buckets_and_templora_by_hand(hand):
    windows, books = hand
    table = tables.pg19_table(windows, books, ns=(50_000, 100_000, 150_000))
    row = table.iloc[0]
    # PPL@50K: windows starting before 50K are a's first two and both of b's
    nll_50 = 3.0 * 29_999 + 2.9 * 30_000 + 3.2 * 34_999 + 3.1 * 35_000
    assert row["ppl@50000"] == pytest.approx(math.exp(nll_50 / (29_999 + 30_000 + 34_999 + 35_000)))
    assert row["books@50000"] == 2 and row["reach@50000"] == 2
    # bucket [50K, 100K): a's windows at 60K and 90K only
    assert row["bucket@100000"] == pytest.approx(math.exp((2.8 + 2.7) / 2))
    assert row["bucket_books@100000"] == 1 and row["reach@100000"] == 1
    # PPL@100K adds them; the window at 120K is left for 150K
    nll_100 = nll_50 + 2.8 * 30_000 + 2.7 * 30_000
    assert row["ppl@100000"] == pytest.approx(math.exp(nll_100 / (129_998 + 60_000)))
    whole = nll_100 + 2.6 * 10_000
    assert row["ppl"] == pytest.approx(math.exp(whole / 199_998)) == pytest.approx(row["ppl@150000"])
    assert row["bucket@150000"] == pytest.approx(math.exp(2.6))
    assert row["books"] == 2 and row["reach@150000"] == 0
    # TempLoRA-style: Σ scored · exp(nll/scored) / Σ scored over the windows starting before N
    weighted = [(29_999, 3.0), (30_000, 2.9), (34_999, 3.2), (35_000, 3.1)]
    expected = sum(s * math.exp(p) for s, p in weighted) / sum(s for s, _ in weighted)
    assert row["templora_ppl@50000"] == pytest.approx(expected)
    every = weighted + [(30_000, 2.8), (30_000, 2.7), (10_000, 2.6)]
    assert row["templora_ppl"] == pytest.approx(sum(s * math.exp(p) for s, p in every) / 199_998)
    assert row["templora_ppl"] > row["ppl"]                      # Jensen


def test_reaching_only_keeps_the_books_that_reach_n(hand):
    windows, books = hand
    row = tables.pg19_table(windows, books, ns=(50_000, 100_000), reaching_only=True).iloc[0]
    a_100 = 3.0 * 29_999 + 2.9 * 30_000 + 2.8 * 30_000 + 2.7 * 30_000
    assert row["ppl@100000"] == pytest.approx(math.exp(a_100 / 119_999)) and row["books@100000"] == 1
    assert row["books@50000"] == 2                                # both books have >= 50K tokens
    view = tables.pg19_view(tables.pg19_table(windows, books, ns=(50_000, 100_000)), "ppl", ns=(50_000, 100_000))
    assert list(view.columns) == ["run", "method", "config_id", "50K", "100K", "book", "n@50K", "n@100K", "n@book"]


def test_book_tokens_come_from_book_rows_else_windows(hand):
    windows, books = hand
    assert tables.book_tokens(windows).set_index("book_id")["tokens"].to_dict() == {"a": 130_000, "b": 70_000}
    longer = books.assign(tokens=[250_000, 70_000])              # e.g. a book stopped early with an error
    per_book = tables.book_ppl(windows, longer).set_index("book_id")
    assert per_book.loc["a", "reaches@200000"] and not per_book.loc["b", "reaches@100000"]


def test_aggregates_agree_with_locas_metrics(hand):
    metrics = pytest.importorskip("locas.metrics")
    windows, books = hand
    per_book = tables.book_ppl(windows, books).set_index("book_id")
    for book_id, rows in windows.groupby("book_id"):
        expected = metrics.book_summary(rows.to_dict("records"))
        for key, value in expected.items():
            if value is None:
                assert pd.isna(per_book.loc[book_id, key]), key
            else:
                assert per_book.loc[book_id, key] == pytest.approx(value), key
    pooled = tables.pg19_table(windows, books).iloc[0]
    records = windows.to_dict("records")
    for n in metrics.PPL_AT:
        for ours, theirs in ((f"ppl@{n}", metrics.ppl_at(records, n)), (f"bucket@{n}", metrics.bucket_ppl(records, n)),
                             (f"templora_ppl@{n}", metrics.templora_ppl(records, n))):
            assert (pd.isna(pooled[ours]) if theirs is None else pooled[ours] == pytest.approx(theirs)), ours
    assert pooled["templora_ppl"] == pytest.approx(metrics.templora_ppl(records))


# --- deltas and the bootstrap ------------------------------------------------------------------------------


def synthetic_books(count, seed):
    """Per-book (nll, tokens) for a baseline and a method ~5% better with book-level noise."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(50_000, 200_000, count).astype(float)
    base = rng.normal(3.0, 0.2, count)
    method = base + np.log(0.95) + rng.normal(0, 0.03, count)
    return method * tokens, tokens, base * tokens, tokens


def test_bootstrap_contains_the_estimate_and_narrows_with_more_books():
    few = tables.paired_bootstrap(*synthetic_books(10, 1), n_boot=2000, seed=0)
    many = tables.paired_bootstrap(*synthetic_books(200, 1), n_boot=2000, seed=0)
    for delta, low, high in (few, many):
        assert low <= delta <= high and high < 0               # the method is better on every draw
    assert many[2] - many[1] < (few[2] - few[1]) / 2
    assert tables.paired_bootstrap(*synthetic_books(10, 1), n_boot=2000, seed=0) == few   # seeded


def test_delta_table_pairs_books_with_the_same_window_grid():
    rows = (pg19_rows("none", "c0", "a", BOOK_A) + pg19_rows("none", "c0", "b", BOOK_B)
            + pg19_rows("locas", "c1", "a", [(s, n, p - 0.1) for s, n, p in BOOK_A])
            + pg19_rows("locas", "c1", "b", grid(70_000, 20_000, lambda k, s: 3.0)))   # other windows: unpaired
    windows = frame(rows, "window")
    paired = tables.book_deltas(windows)
    assert list(paired["book_id"]) == ["a"] and list(paired["baseline_config_id"]) == ["c0"]
    assert paired["log_ratio"].iloc[0] == pytest.approx(-0.1)
    table = tables.delta_table(windows, ns=(100_000, None), n_boot=200).set_index("n")
    a_100 = np.array([29_999, 30_000, 30_000, 30_000])
    base_100 = math.exp((a_100 * [3.0, 2.9, 2.8, 2.7]).sum() / a_100.sum())
    assert table.loc[100_000, "ppl_base"] == pytest.approx(base_100)
    assert table.loc[100_000, "delta"] == pytest.approx(base_100 * (math.exp(-0.1) - 1))
    assert table.loc[100_000, "books"] == 1 and table.loc[100_000, "improved"] == 1.0
    assert np.isnan(table.loc[100_000, "ci_low"])                  # one book: no interval


def test_cost_table_by_hand():
    rows = (pg19_rows("none", "c0", "a", BOOK_A, seconds=2.0) + pg19_rows("none", "c0", "b", BOOK_B, seconds=2.0)
            + pg19_rows("locas", "c1", "a", BOOK_A, seconds=3.0, trainable_params=11_000)
            + pg19_rows("locas", "c1", "b", BOOK_B, seconds=5.0, trainable_params=11_000))
    table = tables.cost_table(frame(rows, "book"), frame(rows, "window")).set_index("method")
    assert table.loc["none", "gpu_seconds"] == 2.0 * 7 and table.loc["locas", "gpu_seconds"] == 3.0 * 5 + 5.0 * 2
    assert table.loc["none", "trainable_params"] == 0 and table.loc["locas", "trainable_params"] == 11_000
    assert table.loc["locas", "time_vs_none"] == pytest.approx(25 / 14)
    assert table.loc["none", "time_vs_none"] == pytest.approx(1.0)


# --- LoCoMo and MMLU ------------------------------------------------------------------------------------------

QA = [  # (category, f1, f1_adversarial_report)
    (1, 0.5, None), (1, 1.0, None), (2, 0.0, None), (2, 0.25, None), (2, 0.5, None), (3, 0.2, None),
    (4, 1.0, None), (4, 0.0, None), (5, 1.0, -0.2), (5, 0.0, -0.6),
]


def qa_rows(method, config_id, scores):
    return [{**common("locomo", "conv-1", method, config_id, "qa"), "conversation_id": "conv-1",
             "question_id": f"q{i}", "category": category, "question": f"question {i}?", "gold": "gold",
             "prediction": "pred", "f1": f1, "f1_adversarial_report": report, "seconds": 0.1}
            for i, (category, f1, report) in enumerate(scores)]


def test_locomo_f1_per_category_by_hand():
    records = qa_rows("locas", "c1", QA)
    qa = frame(records, "qa")
    row = tables.locomo_table(qa).iloc[0]
    expected = {"multi-hop": 75.0, "temporal": 25.0, "open-domain": 20.0, "single-hop": 50.0,
                "adversarial": 50.0, "adversarial (report)": -40.0}
    for name, value in expected.items():
        assert row[name] == pytest.approx(value), name
    assert row["questions"] == len(QA)
    metrics = pytest.importorskip("locas.metrics")
    assert metrics.category_means(records) == pytest.approx(
        {c: row[n] for c, n in tables.CATEGORIES.items()})
    assert metrics.category_means(records, "f1_adversarial_report") == pytest.approx({5: -40.0})


def mmlu_rows(method, config_id, variant, book_id, answers):
    """answers: [(subject, question_id, prediction)]; the gold answer is always 0."""
    return [{**common("mmlu", book_id or "base", method, config_id, "mmlu"), "book_id": book_id, "variant": variant,
             "subject": subject, "question_id": qid, "answer": 0, "prediction": pred, "correct": pred == 0}
            for subject, qid, pred in answers]


def test_mmlu_micro_macro_and_agreement_by_hand():
    base = [("s1", "q1", 0), ("s1", "q2", 0), ("s1", "q3", 1), ("s2", "q4", 2)]
    rows = (mmlu_rows("none", "c0", "base", None, base)
            + mmlu_rows("locas", "c1", "memory", "a", [("s1", "q1", 0), ("s1", "q2", 1), ("s1", "q3", 1), ("s2", "q4", 0)])
            + mmlu_rows("locas", "c1", "dense", "a", [("s1", "q1", 0), ("s1", "q2", 1), ("s1", "q3", 2), ("s2", "q4", 0)]))
    row = tables.mmlu_table(frame(rows, "mmlu")).set_index("method").loc["locas"]
    assert row["base_micro"] == pytest.approx(50.0) and row["base_macro"] == pytest.approx((200 / 3 + 0) / 2)
    assert row["memory_micro"] == pytest.approx(50.0) and row["memory_macro"] == pytest.approx((100 / 3 + 100) / 2)
    assert row["dense_micro"] == pytest.approx(50.0) and row["agreement"] == pytest.approx(75.0)
    assert row["books"] == 1 and row["questions"] == 4
    # base rows in another run (a separate base unit): used for runs that have none of their own
    split = pd.concat([frame(rows[:4], "mmlu").assign(run="base"), frame(rows[4:], "mmlu").assign(run="adapted")])
    elsewhere = tables.mmlu_table(split).set_index("method").loc["locas"]
    assert elsewhere["base_micro"] == pytest.approx(50.0) and elsewhere["run"] == "adapted"
    metrics = pytest.importorskip("locas.metrics")
    memory = metrics.mmlu_accuracy([r for r in rows if r["variant"] == "memory"])
    assert row["memory_micro"] == pytest.approx(100 * memory["micro"])
    assert row["memory_macro"] == pytest.approx(100 * memory["macro"])


# --- plots ------------------------------------------------------------------------------------------------------


def test_plots_return_figures_and_save_png(tmp_path, hand):
    windows, books = hand
    figure = plots.plot_ppl_by_position(windows, books, path=tmp_path / "ppl.png")
    assert figure.axes and (tmp_path / "ppl.png").read_bytes()[:4] == b"\x89PNG"
    plots.plot_locomo_f1(frame(qa_rows("locas", "c1", QA) + qa_rows("none", "c0", QA[::-1]), "qa"),
                         path=tmp_path / "f1.png")
    trials = pd.DataFrame({"memory_width": [32, 32, 64, 64], "memory_init": ["highest", "random"] * 2,
                           "ppl": [20.0, 22.0, 19.5, np.nan]})
    heat = plots.plot_sweep_heatmap(trials, "memory_width", "memory_init", path=tmp_path / "heat.png")
    assert heat.axes and (tmp_path / "f1.png").exists() and (tmp_path / "heat.png").exists()
