"""analysis/: the run-store reader and every aggregate against hand computations (SPEC §6-8)."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from run_rows import BOOK_A, BOOK_B, QA, common, frame, grid, mmlu_rows, pg19_rows, qa_rows, sweep_trials, write_run

from analysis import plots, tables
from analysis.load import load_run, load_runs
from locas.run_folder import StoreError


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


def test_load_refuses_a_bad_line_in_the_middle_as_the_store_does(tmp_path):
    folder = write_run(tmp_path / "r", "pg19", {}, "c1", pg19_rows("none", "c1", "a", BOOK_A))
    lines = (folder / "rows.jsonl").read_text().splitlines()
    (folder / "rows.jsonl").write_text("\n".join(lines[:2] + ["{oops"] + lines[2:]) + "\n")
    with pytest.raises(StoreError, match="rows.jsonl line 3 is not a JSON object"):
        load_run(folder)


def test_load_many_runs_and_trials(tmp_path):
    write_run(tmp_path / "all" / "x", "pg19", {"method": "none"}, "c0", pg19_rows("none", "c0", "a", BOOK_A))
    write_run(tmp_path / "all" / "y", "pg19", {"method": "locas"}, "c1", pg19_rows("locas", "c1", "a", BOOK_A))
    trials = sweep_trials([(32, "highest", 20.0, "completed"), (64, "random", 21.0, "completed"),
                           (128, "highest", 19.0, "stopped")])
    write_run(tmp_path / "all" / "z", "pg19", {"method": "locas"}, "c2", [], trials=trials)
    listed = load_runs(f"{tmp_path / 'all' / 'x'}, {tmp_path / 'all' / 'y'}")
    assert listed.names == ["x", "y"] and sorted(listed.windows["method"].unique()) == ["locas", "none"]
    parent = load_runs(tmp_path / "all")
    assert parent.names == ["x", "y", "z"]
    assert list(parent.trials["memory_width"]) == [32, 64, 128] and set(parent.trials["method"]) == {"locas"}
    assert tables.sweep_config_columns(parent.trials) == ["loss", "lr", "steps_per_window", "window_size",
                                                          "memory_width", "memory_init", "lora_rank", "lora_alpha"]
    ranked = tables.sweep_table(parent)  # ASHA's early stop is not a result: only completed trials rank
    assert list(ranked["rank"]) == [1, 2] and list(ranked["memory_width"]) == [32, 64]
    assert tables.best_trial(parent)["trial"] == "t32-highest"
    assert "Runs: 3 run(s)" in repr(parent) and "5 windows" in repr(parent) and "3 trials" in repr(parent)


# --- PG-19 aggregates against hand computations ---------------------------------------------------------


def test_ppl_at_n_is_exact_at_n_and_pools_all_books_or_the_ones_reaching_n(hand):
    windows, books = hand
    row = tables.pg19_table(windows, books, ns=(50_000, 100_000, 150_000)).iloc[0]
    # PPL@50K: the scored tokens 1..49,999 of each book; a's window at 30K and b's at 35K split at 50K
    a_50, b_50 = 3.0 * 29_999 + 2.9 * 20_000, 3.2 * 34_999 + 3.1 * 15_000
    assert row["ppl@50000"] == pytest.approx(math.exp((a_50 + b_50) / (2 * 49_999)))
    assert row["ppl@50000_reaching"] == pytest.approx(row["ppl@50000"]) and row["reach@50000"] == 2
    assert row["mean_book_ppl@50000"] == pytest.approx((math.exp(a_50 / 49_999) + math.exp(b_50 / 49_999)) / 2)
    # bucket [50K, 100K): a's tokens 50,000..99,999 (three windows' parts), b's 50,000..69,999
    a_bucket = 2.9 * 10_000 + 2.8 * 30_000 + 2.7 * 10_000
    assert row["bucket@100000"] == pytest.approx(math.exp((a_bucket + 3.1 * 20_000) / 70_000))
    assert row["bucket_books@100000"] == 2
    # PPL@100K: a's first 99,999 scored tokens and all of b (shorter than N); reaching: a alone
    a_100 = a_50 + a_bucket
    b_all = 3.2 * 34_999 + 3.1 * 35_000
    assert row["ppl@100000"] == pytest.approx(math.exp((a_100 + b_all) / (99_999 + 69_999)))
    assert row["ppl@100000_reaching"] == pytest.approx(math.exp(a_100 / 99_999)) and row["reach@100000"] == 1
    whole = a_100 + 2.7 * 20_000 + 2.6 * 10_000 + b_all
    assert row["ppl"] == pytest.approx(math.exp(whole / 199_998)) == pytest.approx(row["ppl@150000"])
    assert row["reach@150000"] == 0 and np.isnan(row["ppl@150000_reaching"])
    assert row["books"] == 2 and row["tokens"] == 199_998 and row["stopped"] == 0
    # TempLoRA-style: Σ scored · exp(nll/scored) / Σ scored over the whole windows starting before N
    weighted = [(29_999, 3.0), (30_000, 2.9), (34_999, 3.2), (35_000, 3.1)]
    expected = sum(s * math.exp(p) for s, p in weighted) / sum(s for s, _ in weighted)
    assert row["templora_ppl@50000"] == pytest.approx(expected)
    every = weighted + [(30_000, 2.8), (30_000, 2.7), (10_000, 2.6)]
    assert row["templora_ppl"] == pytest.approx(sum(s * math.exp(p) for s, p in every) / 199_998)
    assert row["templora_ppl"] > row["ppl"]                      # Jensen


def test_a_window_straddling_n_without_a_cut_is_refused(hand):
    windows, books = hand
    with pytest.raises(ValueError, match="PPL@50000 is not exact"):
        tables.pg19_table(windows.assign(cuts=[[]] * len(windows)), books, ns=(50_000,))
    with pytest.raises(ValueError, match="multiple of 50,000"):
        tables.pg19_table(windows, books, ns=(60_000,))


def test_the_run_summary_is_the_table_of_every_book(hand):
    windows, books = hand
    summary = tables.pg19_summary(windows, books, ns=(50_000, 100_000))
    row = tables.pg19_table(windows, books, ns=(50_000, 100_000), by=[]).iloc[0]
    assert summary["ppl@100000_reaching"] == pytest.approx(row["ppl@100000_reaching"])
    assert (summary["books"], summary["reach@100000"], summary["tokens"]) == (2, 1, 199_998)
    assert json.loads(json.dumps(summary)) == summary
    view = tables.pg19_view(tables.pg19_table(windows, books, ns=(50_000, 100_000)), "ppl_reaching",
                            ns=(50_000, 100_000))
    assert list(view.columns) == ["run", "method", "config_id", "50K", "100K", "n@50K", "n@100K"]


def test_stopped_books_and_missing_nll_are_left_out_and_counted(hand):
    windows, books = hand
    rows = pg19_rows("locas", "c1", "c", BOOK_B, error="non-finite loss at window 1: the document was stopped")
    stopped_w, stopped_b = frame(rows, "window"), frame(rows, "book")
    row = tables.pg19_table(pd.concat([windows, stopped_w]), pd.concat([books, stopped_b])).iloc[0]
    clean = tables.pg19_table(windows, books).iloc[0]
    assert row["ppl"] == pytest.approx(clean["ppl"]) and (row["books"], row["stopped"]) == (2, 1)
    damaged = windows.copy()
    damaged.loc[damaged["book_id"] == "b", "nll_sum"] = [np.nan, 10.0]
    with pytest.warns(UserWarning, match="without an NLL"):
        row = tables.pg19_table(damaged, books).iloc[0]
    assert (row["books"], row["stopped"]) == (1, 1)  # b is not summed as if its window scored nothing
    only_a = tables.pg19_table(windows[windows["book_id"] == "a"], books[books["book_id"] == "a"]).iloc[0]
    assert row["ppl"] == pytest.approx(only_a["ppl"])


def test_tables_take_what_load_runs_returns(tmp_path, hand):
    write_run(tmp_path / "x", "pg19", {}, "c1", pg19_rows("locas", "c1", "a", BOOK_A) + pg19_rows("locas", "c1", "b", BOOK_B))
    runs = load_runs(tmp_path / "x")
    windows, books = hand
    assert tables.pg19_table(runs)["ppl"].iloc[0] == pytest.approx(tables.pg19_table(windows, books)["ppl"].iloc[0])
    assert len(tables.book_ppl(runs)) == 2 and len(tables.cost_table(runs)) == 1


def test_relative_run_paths_resolve_from_a_given_folder(tmp_path, monkeypatch):
    write_run(tmp_path / "runs" / "x", "pg19", {}, "c1", pg19_rows("locas", "c1", "a", BOOK_A))
    monkeypatch.chdir(tmp_path / "runs")
    assert load_runs("x").names == ["x"]
    assert load_runs("runs/x", base=tmp_path).names == ["x"]


def test_book_tokens_come_from_book_rows_else_windows(hand):
    windows, books = hand
    assert tables.book_tokens(windows).set_index("book_id")["tokens"].to_dict() == {"a": 130_000, "b": 70_000}
    longer = books.assign(tokens=[250_000, 70_000])
    per_book = tables.book_ppl(windows, longer).set_index("book_id")
    assert per_book.loc["a", "reaches@200000"] and not per_book.loc["b", "reaches@100000"]
    assert per_book.loc["b", "ppl@50000"] == pytest.approx(math.exp((3.2 * 34_999 + 3.1 * 15_000) / 49_999))


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
    a_100 = np.array([29_999, 30_000, 30_000, 10_000])  # exactly the first 100K tokens: the last window cut
    base_100 = math.exp((a_100 * [3.0, 2.9, 2.8, 2.7]).sum() / a_100.sum())
    assert table.loc[100_000, "ppl_base"] == pytest.approx(base_100)
    assert table.loc[100_000, "delta"] == pytest.approx(base_100 * (math.exp(-0.1) - 1))
    assert table.loc[100_000, "books"] == 1 and table.loc[100_000, "improved"] == 1.0
    assert np.isnan(table.loc[100_000, "ci_low"])                  # one book: no interval


def test_comparisons_join_only_comparable_runs_and_the_baseline_can_be_named(tmp_path):
    settings = {"model": {"model": "m", "dtype": "bfloat16"}, "options": {"data": "d", "split": "test"},
                "adapt": {"max_tokens": None, "window_size": 30_000, "overlap": 1}}
    other = {**settings, "adapt": {**settings["adapt"], "window_size": 20_000}}
    write_run(tmp_path / "none-a", "pg19", settings, "r0", pg19_rows("none", "c0", "a", BOOK_A))
    write_run(tmp_path / "none-b", "pg19", settings, "r1", pg19_rows("none", "c3", "a", BOOK_A))
    write_run(tmp_path / "none-w", "pg19", other, "r2", pg19_rows("none", "c4", "a", BOOK_A))
    write_run(tmp_path / "locas", "pg19", settings, "r3",
              pg19_rows("locas", "c1", "a", [(s, n, p - 0.1) for s, n, p in BOOK_A]))
    write_run(tmp_path / "locas-w", "pg19", other, "r4",
              pg19_rows("locas", "c2", "a", [(s, n, p - 0.1) for s, n, p in BOOK_A]))
    runs = load_runs(tmp_path)
    with pytest.warns(UserWarning, match="several comparable baselines"):
        paired = tables.book_deltas(runs)
    # each locas run is paired with a none run of its own settings (never across window sizes)
    assert dict(zip(paired["run"], paired["baseline_run"])) == {"locas": "none-a", "locas-w": "none-w"}
    with pytest.warns(UserWarning, match="for locas in locas-w"):  # none-b has other windows
        named = tables.book_deltas(runs, baseline_run="none-b")
    assert list(named["run"]) == ["locas"] and list(named["baseline_run"]) == ["none-b"]
    lonely = load_runs([tmp_path / "none-w", tmp_path / "locas"])
    with pytest.warns(UserWarning, match="no comparable baseline .* for locas in locas"):
        assert tables.book_deltas(lonely).empty


def test_cost_table_by_hand():
    rows = (pg19_rows("none", "c0", "a", BOOK_A, seconds=2.0) + pg19_rows("none", "c0", "b", BOOK_B, seconds=2.0)
            + pg19_rows("locas", "c1", "a", BOOK_A, seconds=3.0, trainable_params=11_000)
            + pg19_rows("locas", "c1", "b", BOOK_B, seconds=5.0, trainable_params=11_000))
    books = frame(rows, "book").assign(batch_size=8)
    table = tables.cost_table(books, frame(rows, "window")).set_index("method")
    assert table.loc["locas", "gpu_s_per_1k_tokens"] == pytest.approx(25 / 199_998 * 1000)
    assert table.loc["none", "gpu_seconds"] == 2.0 * 7 and table.loc["locas", "gpu_seconds"] == 3.0 * 5 + 5.0 * 2
    assert table.loc["none", "trainable_params"] == 0 and table.loc["locas", "trainable_params"] == 11_000
    assert table.loc["locas", "time_vs_none"] == pytest.approx(25 / 14) and table.loc["locas", "paired_books"] == 2
    assert table.loc["none", "time_vs_none"] == pytest.approx(1.0)
    # the baseline's rate on the paired books only: a book the method did not finish leaves both sides
    one = tables.cost_table(books[~((books["method"] == "locas") & (books["book_id"] == "b"))]).set_index("method")
    assert one.loc["locas", "baseline_gpu_s_per_1k_paired"] == pytest.approx(2.0 * 5 / 129_999 * 1000)
    assert one.loc["locas", "time_vs_none"] == pytest.approx(15 / 10)
    # no ratio across batch sizes, nor where the batch size was not recorded
    other = tables.cost_table(books.assign(batch_size=np.where(books["method"] == "none", 8, 1))).set_index("method")
    assert np.isnan(other.loc["locas", "time_vs_none"]) and other.loc["locas", "cost_note"].startswith("batch 1 vs 8")
    unknown = tables.cost_table(books.drop(columns="batch_size")).set_index("method")
    assert unknown.loc["locas", "cost_note"].startswith("batch not recorded vs not recorded")
    cpu = tables.cost_table(books.assign(device=np.where(books["method"] == "none", "cuda:1 NVIDIA H100", "cpu")))
    assert cpu.set_index("method").loc["locas", "cost_note"].startswith("device cpu vs NVIDIA H100: no ratio")


# --- LoCoMo and MMLU ------------------------------------------------------------------------------------------

def test_locomo_f1_per_category_by_hand():
    records = qa_rows("locas", "c1", QA)
    qa = frame(records, "qa")
    row = tables.locomo_table(qa).iloc[0]
    expected = {"multi-hop": 75.0, "temporal": 25.0, "open-domain": 20.0, "single-hop": 50.0,
                "adversarial": 50.0, "adversarial (report)": -40.0}
    for name, value in expected.items():
        assert row[name] == pytest.approx(value), name
    assert row["questions"] == len(QA)
    summary = tables.locomo_summary(qa)
    assert summary["f1_multi_hop"] == pytest.approx(75.0) and summary["f1_adversarial_report"] == pytest.approx(-40.0)


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
    summary = tables.mmlu_summary(frame(rows, "mmlu"))
    assert summary["memory_micro"] == pytest.approx(50.0) and summary["agreement"] == pytest.approx(75.0)
    assert summary["base_macro"] == pytest.approx((200 / 3 + 0) / 2) and summary["questions"] == 4


# --- plots ------------------------------------------------------------------------------------------------------


def test_plots_return_figures_and_save_png(tmp_path, hand):
    windows, books = hand
    figure = plots.plot_ppl_by_position(windows, books, path=tmp_path / "ppl.png")
    assert figure.axes and (tmp_path / "ppl.png").read_bytes()[:4] == b"\x89PNG"
    plots.plot_locomo_f1(frame(qa_rows("locas", "c1", QA) + qa_rows("none", "c0", QA[::-1]), "qa"),
                         path=tmp_path / "f1.png")
    trials = sweep_trials([(32, "highest", 20.0, "completed"), (32, "random", 22.0, "completed"),
                           (64, "highest", 19.5, "completed"), (64, "random", 18.0, "stopped")])
    heat = plots.plot_sweep_heatmap(trials, "memory_width", "memory_init", path=tmp_path / "heat.png")
    assert heat.axes and (tmp_path / "f1.png").exists() and (tmp_path / "heat.png").exists()
