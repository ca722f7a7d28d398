"""PG-19 in the report: perplexity at depth per run, each method against the frozen baseline on the books
both finished (at each depth on the headline's books and rule), and cost at equal batch size."""

from __future__ import annotations

import pandas as pd

from analysis import tables
from analysis.load import KEYS, Runs
from analysis.reporting.common import LEVEL, MISSING, interval_text, with_notes, without_baseline
from analysis.reporting.paper import definitions, paper_columns, with_setting

HEADLINE_N = 200_000
BASELINE = "none"


def _counts(runs: Runs) -> pd.DataFrame:
    counts = tables.outcome_counts(runs, "pg19")
    return counts.rename(columns={"done": "books"})


def pg19_results(runs: Runs) -> pd.DataFrame:
    """Per run: its model, window, width and batch; books finished, stopped and failed; PPL@N over the books
    reaching N (the headline) with their count, the whole books' PPL; the paper's PPL@200K where the run has
    the paper's setting."""
    if not len(runs.windows) and not len(tables.unit_outcomes(runs, "pg19")):
        return pd.DataFrame()
    table = tables.pg19_table(runs) if len(runs.windows) else pd.DataFrame(columns=KEYS + ["ppl"])
    view = tables.pg19_view(table, "ppl_reaching") if len(runs.windows) else pd.DataFrame(columns=KEYS)
    table = table[KEYS + ["ppl"]]
    out = _counts(runs).merge(tables.batch_sizes(runs.books), on=KEYS, how="left")
    out = out.merge(view, on=KEYS, how="left").merge(table.rename(columns={"ppl": "PPL (whole books)"}), on=KEYS,
                                                     how="left")
    for column in [c for c in out.columns if c.startswith("n@")]:
        out[column] = out[column].fillna(0).astype(int)
    out = out.rename(columns={"batch_size": "batch"})
    out = with_setting(out[KEYS + ["batch", *[c for c in out.columns if c not in KEYS + ["batch"]]]], runs)
    out = paper_columns(out, runs, "pg19", {f"ppl@{HEADLINE_N}": "paper PPL@200K"})
    return with_notes(out, definitions("pg19")[:1])


def _left_out(runs: Runs) -> dict[tuple, tuple[int, str]]:
    """(method group, baseline group) -> (books left out, why), over the books either ran."""
    outcomes = tables.unit_outcomes(runs, "pg19")
    paired = tables.book_deltas(runs, baseline=BASELINE, warn=False)
    out = {}
    for key, group in paired.groupby(KEYS + ["baseline_run", "baseline_config_id"], dropna=False):
        mine, base = tuple(key[:3]), (key[3], BASELINE, key[4])
        out[mine] = tables.left_out(outcomes, [mine, base], set(group[tables.BOOK].astype(str)))
    return out


def pg19_differences(runs: Runs) -> pd.DataFrame:
    """Each method against the frozen baseline on the books both finished: PPL@N over those reaching N (the
    headline's rule) and the whole book, the pooled difference with its paired bootstrap interval over books
    (`n` books); `left out (whole run)`: the books one of the two did not finish, whatever their length (named
    under the table)."""
    if not len(runs.windows):
        return pd.DataFrame()
    deltas = tables.delta_table(runs, baseline=BASELINE, reaching_only=True, n_boot=2000, seed=0)
    if not len(deltas):
        return pd.DataFrame()
    left = _left_out(runs)
    deltas["left out (whole run)"] = [left.get(tuple(k), (0, ""))[0] for k in deltas[KEYS].itertuples(index=False)]
    deltas[LEVEL] = [interval_text(lo, hi, n, "books") if n or r == "book" else f"{MISSING}: no paired book reaches "
                     f"{r.removeprefix('PPL@')}" for lo, hi, n, r in zip(deltas["ci_low"], deltas["ci_high"],
                                                                         deltas["books"], deltas["range"])]
    out = deltas[KEYS + ["baseline_run", "range", "books", "left out (whole run)", "ppl_base", "ppl", "delta", LEVEL]]
    out = with_setting(out.rename(columns={"baseline_run": "baseline", "books": "n (books)"}), runs)
    notes = [f"{key[0]} against its baseline: {n} book(s) left out: {why}" for key, (n, why) in left.items() if n]
    notes += without_baseline(tables.unit_outcomes(runs, "pg19"), deltas, BASELINE)
    return with_notes(out, notes)


def pg19_cost(runs: Runs) -> pd.DataFrame:
    """Per run: trainable parameters, device-seconds per 1K scored tokens over its finished books, its batch
    size and device; against the frozen baseline: both rates on the books both finished, and their ratio only at equal
    batch size on the same device (else both rates and a note), beside the paper's relative time where the setting is the
    paper's."""
    if not len(runs.books):
        return pd.DataFrame()
    cost = tables.cost_table(runs, baseline=BASELINE)
    counts = _counts(runs)[KEYS + ["stopped", "failed"]]
    out = cost.merge(counts, on=KEYS, how="left").rename(columns={
        "batch_size": "batch", "baseline_run": "baseline", "baseline_batch_size": "baseline batch",
        "gpu_s_per_1k_tokens": "s/1K tokens", "paired_books": "paired books",
        "gpu_s_per_1k_paired": "s/1K (paired)", "baseline_gpu_s_per_1k_paired": "baseline s/1K (paired)",
        "cost_note": "note"})
    out = out[KEYS + ["batch", "device", "books", "stopped", "failed", "trainable_params", "s/1K tokens", "baseline",
                      "baseline batch", "paired books", "s/1K (paired)", "baseline s/1K (paired)",
                      "time_vs_none", "note"]]
    out["note"] = out["note"].fillna("")
    out = paper_columns(with_setting(out, runs), runs, "pg19", {"time_vs_none": "paper time_vs_none"})
    return with_notes(out, definitions("pg19")[1:])
