"""The study report on a study of tiny-model runs (windows and widths not the paper's, a stopped book, a failed
book, a failed question, a failed MMLU book, a sweep), written with the real run store: each rule of
docs/protocols.md "The study report", and its numbers against independent pandas/numpy code."""
import json

import numpy as np
import pandas as pd
import pytest
from report_study import FAILED, LENGTHS, PG19, STOPPED, build_study, pooled

from analysis import report, tables
from analysis.load import load_runs

SLOW = pytest.mark.slow  # the study is written with the run store and every table built: seconds each


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = build_study(tmp_path_factory.mktemp("study"))
    return root, load_runs(root)


@pytest.fixture(scope="module")
def markdown(study):
    return report.report_markdown(*study)


def rows_of(root, run, kind):
    """The run's rows of `kind`, read straight from rows.jsonl (every unit here is ledgered once)."""
    lines = (root / run / "rows.jsonl").read_text().splitlines()
    return pd.DataFrame([r for r in map(json.loads, lines) if r["kind"] == kind])


@SLOW
def test_a_paper_figure_stands_only_beside_a_run_of_its_setting(study, markdown):
    root, runs = study
    results = report.pg19_results(runs).set_index("run")
    for run in ("pg19-none", "pg19-locas", "pg19-lora"):  # tiny model, windows of 4,096, width 16 / rank 8
        assert results.loc[run, "paper PPL@200K"] == ""
        assert "model models/tinylm-pg19 ≠ Qwen/Qwen3-1.7B-Base" in results.loc[run, "paper setting"]
        assert "window 4096 ≠ 2048" in results.loc[run, "paper setting"]
    assert "width 16 ≠ 64" in results.loc["pg19-locas", "paper setting"]
    assert "width 8 ≠ 64" in results.loc["pg19-lora", "paper setting"]
    assert results.loc["pg19-paper-locas", "paper PPL@200K"] == 19.04
    assert results.loc["pg19-paper-none", "paper PPL@200K"] == 20.50
    assert results.loc["pg19-paper-locas", "paper setting"] == "same as Locas"
    assert list(results.loc["pg19-locas", ["model", "window", "width"]]) == ["models/tinylm-pg19", 4096, 16]
    assert results.loc["pg19-none", "width"] == "-"  # a frozen model has no width
    cost = report.pg19_cost(runs).set_index("run")
    assert cost.loc["pg19-locas", "paper time_vs_none"] == "" and cost.loc["pg19-paper-locas", "paper time_vs_none"] == 1.8
    mmlu = report.mmlu_results(runs).iloc[0]
    assert mmlu["paper base_micro"] == "" and mmlu["paper memory_micro"] == ""  # not on every MMLU row
    assert "paper base_micro: model models/tinylm-pg19 ≠ Qwen/Qwen3-1.7B-Base" in mmlu["paper setting"]
    locomo = report.locomo_results(runs).set_index(["run", "source"])
    assert ("locomo-locas", "this study") in locomo.index and len(locomo.loc["locomo-locas"]) == 1  # no paper row
    paper_row = locomo.loc[("locomo-paper-locas", "paper: + Locas")]  # beside the run of its setting
    assert paper_row["single-hop"] == 41.6 and paper_row["model"] == "Qwen/Qwen3-1.7B-Base"
    assert locomo.loc[("locomo-paper-locas", "this study"), "paper setting"] == "same as + Locas"
    for table in (results, cost, mmlu.to_frame().T, locomo.reset_index(), report.pg19_differences(runs),
                  report.locomo_differences(runs), report.mmlu_differences(runs), report.ablations(runs)):
        assert {"model", "window", "width"} <= set(table.columns)
    assert "the paper does not say whether PPL@200K pools the tokens of the books that reach 200K" in markdown


@SLOW
def test_stopped_and_failed_units_are_counted_named_first_and_left_out_of_comparisons(study, markdown):
    root, runs = study
    first = "\n".join(markdown.splitlines()[:8])
    assert "Not every unit finished: 1 stopped, 3 failed" in first
    assert f"{STOPPED[0]}: pg19 unit {STOPPED[1]} stopped (non-finite loss" in first
    assert f"{FAILED[0]}: pg19 unit {FAILED[1]} failed (CUDA out of memory)" in first
    assert "locomo-locas: locomo question conv-2:q3 failed" in first and "mmlu-locas: mmlu unit b2 failed" in first
    results = report.pg19_results(runs).set_index("run")
    assert list(results.loc["pg19-locas", ["books", "stopped", "failed"]]) == [5, 1, 0]
    assert list(results.loc["pg19-lora", ["books", "stopped", "failed"]]) == [5, 0, 1]
    for table in (report.pg19_cost(runs), report.locomo_results(runs), report.mmlu_differences(runs)):
        assert {"stopped", "failed"} <= set(table.columns) or {"failed", "failed questions"} <= set(table.columns)
    deltas = report.pg19_differences(runs)
    book = deltas[deltas["range"] == "book"].set_index("run")
    assert book.loc["pg19-locas", "n (books)"] == 5 and book.loc["pg19-locas", "left out (whole run)"] == 1
    assert book.loc["pg19-lora", "n (books)"] == 5 and book.loc["pg19-lora", "left out (whole run)"] == 1
    notes = deltas.attrs["notes"]
    assert any("book b5: stopped in pg19-locas (non-finite loss" in n for n in notes)
    assert any("book b4: failed in pg19-lora (CUDA out of memory)" in n for n in notes)
    # independently: pooled PPL of both runs over the books both finished
    base, locas = rows_of(root, "pg19-none", "window"), rows_of(root, "pg19-locas", "window")
    shared = sorted(set(LENGTHS) - {STOPPED[1]})
    expected = pooled(locas[locas["book_id"].isin(shared)]) - pooled(base[base["book_id"].isin(shared)])
    assert book.loc["pg19-locas", "delta"] == pytest.approx(expected, rel=1e-12)
    locomo = report.locomo_differences(runs)
    assert any("1 question(s) not answered by both" in n for n in locomo.attrs["notes"])
    assert "locomo-paper-locas: no none run of the same model" in " ".join(locomo.attrs["notes"])  # not silently absent


@SLOW
def test_the_delta_at_each_depth_uses_the_headlines_books_and_rule(study):
    root, runs = study
    deltas = report.pg19_differences(runs)
    locas = deltas[deltas["run"] == "pg19-locas"].set_index("range")
    headline = report.pg19_results(runs).set_index("run")
    reaching = [b for b, n in LENGTHS.items() if n >= 50_000 and b != STOPPED[1]]
    assert locas.loc["PPL@50K", "n (books)"] == len(reaching) == headline.loc["pg19-locas", "n@50K"]
    assert locas.loc["PPL@50K", "ppl"] == pytest.approx(headline.loc["pg19-locas", "50K"], rel=1e-12)
    # independently: exactly the first 50K tokens (windows cut there) of the books reaching 50K
    def ppl_at(frame, n):
        parts = []
        for _, w in frame[frame["book_id"].isin(reaching)].iterrows():
            end = w["start"] + w["scored_tokens"]
            nll = w["nll_sum"] if end <= n else dict(map(tuple, w["cuts"])).get(n) if w["start"] < n else None
            if nll is not None:
                parts.append((nll, min(end, n) - w["start"]))
        nll, tokens = np.array(parts).sum(axis=0)
        return np.exp(nll / tokens)
    base, ours = rows_of(root, "pg19-none", "window"), rows_of(root, "pg19-locas", "window")
    assert locas.loc["PPL@50K", "ppl_base"] == pytest.approx(ppl_at(base, 50_000), rel=1e-12)
    assert locas.loc["PPL@50K", "delta"] == pytest.approx(ppl_at(ours, 50_000) - ppl_at(base, 50_000), rel=1e-9)
    assert locas.loc["PPL@50K", "95% interval"] == "no interval: n = 3 books, fewer than 5"
    assert locas.loc["book", "95% interval"].startswith("[")
    for depth in ("PPL@150K", "PPL@200K"):  # no book reaches them: missing, not the last value repeated
        assert locas.loc[depth, "n (books)"] == 0 and np.isnan(locas.loc[depth, "delta"])
        assert locas.loc[depth, "95% interval"] == f"missing: no paired book reaches {depth[4:]}"


@SLOW
def test_a_cost_ratio_only_between_runs_at_the_same_batch_size(study):
    root, runs = study
    cost = report.pg19_cost(runs).set_index("run")
    assert list(cost.loc[["pg19-none", "pg19-locas", "pg19-lora"], "batch"]) == [8, 8, 1]
    assert np.isnan(cost.loc["pg19-lora", "time_vs_none"])
    assert cost.loc["pg19-lora", "note"] == "batch 1 vs 8: no ratio (batching changes the time per token)"
    # independently: each rate over the books both finished (book rows' seconds per 1K scored tokens)
    def rate(run, books):
        frame = rows_of(root, run, "book")
        frame = frame[frame["book_id"].isin(books)]
        return frame["seconds"].sum() / frame["scored_tokens"].sum() * 1000
    shared = sorted(set(LENGTHS) - {STOPPED[1]})
    assert cost.loc["pg19-locas", "baseline s/1K (paired)"] == pytest.approx(rate("pg19-none", shared))
    assert cost.loc["pg19-locas", "time_vs_none"] == pytest.approx(rate("pg19-locas", shared) / rate("pg19-none", shared))
    lora_books = sorted(set(LENGTHS) - {FAILED[1]})
    assert cost.loc["pg19-lora", "baseline s/1K (paired)"] == pytest.approx(rate("pg19-none", lora_books))
    assert cost.loc["pg19-lora", "s/1K (paired)"] == pytest.approx(rate("pg19-lora", lora_books))
    assert cost.loc["pg19-paper-locas", "time_vs_none"] == pytest.approx(PG19["pg19-paper-locas"][3] / 1.0)


@SLOW
def test_intervals_resample_conversations_and_questions_with_n_beside_them(study):
    root, runs = study
    locomo = report.locomo_differences(runs).set_index("category")
    assert locomo.loc["temporal", "n (conversations)"] == 6 and locomo.loc["single-hop", "n (conversations)"] == 5
    mmlu = report.mmlu_differences(runs).set_index("variant")
    assert mmlu.loc["memory", "n (questions)"] == 12 and mmlu.loc["memory", "answers"] == 24


def test_the_cluster_bootstrap_draws_whole_clusters():
    """Against a plain loop over the same draws of clusters; no interval under MIN_UNITS clusters."""
    values = np.array([1.0, 1.0, 0.0, 3.0, 3.0, 3.0, -1.0, 2.0, 2.0])
    clusters = np.array(["a", "a", "b", "c", "c", "c", "d", "e", "e"])
    mean, low, high, n = tables.cluster_mean_bootstrap(values, clusters, n_boot=300, seed=4)
    counts = np.random.default_rng(4).multinomial(5, np.full(5, 0.2), size=300)
    names = sorted(set(clusters))
    draws = [np.concatenate([np.repeat(values[clusters == c], k) for c, k in zip(names, row)]).mean() for row in counts]
    assert (mean, n) == (pytest.approx(values.mean()), 5)
    assert (low, high) == (pytest.approx(np.quantile(draws, 0.025)), pytest.approx(np.quantile(draws, 0.975)))
    assert np.isnan(tables.cluster_mean_bootstrap(values[:5], clusters[:5])[1])  # 3 clusters: no interval
    single = tables.paired_mean_bootstrap(values, n_boot=300, seed=4)  # each item its own cluster
    assert single[0] == pytest.approx(values.mean()) and single[1] < single[2]


@SLOW
def test_ablations_use_the_pg19_rules_and_names(study):
    root, runs = study
    table = report.ablations(runs).set_index("run")
    assert set(table.index) == {"width/t8-highest", "width/t32-highest"}
    assert table.loc["width/t8-highest", "setting"] == "memory_width=8"
    for column in ("books", "stopped", "failed", "PPL@200K", "PPL (whole books)", "Δ PPL (whole books)",
                   "95% interval", "s/1K tokens"):
        assert column in table.columns
    trial = rows_of(root / "width", "t8-highest", "window")
    base = rows_of(root, "pg19-none", "window")
    base = base[base["book_id"].isin(set(trial["book_id"]))]
    assert table.loc["width/t8-highest", "Δ PPL (whole books)"] == pytest.approx(pooled(trial) - pooled(base), rel=1e-12)
    assert table.loc["width/t8-highest", "baseline"] == "pg19-none"


@pytest.mark.slow
def test_the_figures_are_pngs_linked_from_report_md_and_images_in_report_ipynb(study, tmp_path):
    import shutil

    import nbformat

    root = shutil.copytree(study[0], tmp_path / "study")
    markdown, book = report.write_report(root)
    text = markdown.read_text()
    for name, title, *_ in report.FIGURES:
        assert f"![{title}]({name})" in text and (root / name).read_bytes()[:4] == b"\x89PNG"
    outputs = [o for cell in nbformat.read(book, as_version=4).cells for o in cell.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(report.FIGURES)
    assert not any("<Figure" in str(o.get("data", {}).get("text/plain", "")) for o in outputs)


def test_position_buckets_scale_with_the_books_and_hold_a_window_each():
    from analysis.plots import bucket_width

    assert bucket_width([400_000, 600_000]) == 50_000  # capped where rows are cut
    assert bucket_width([30_000, 34_000, 40_000]) == 2_000  # a tenth of the median, rounded down to 1-2-5
    assert bucket_width([3_400], window=255) == 500  # never narrower than a window: no empty bucket between two
