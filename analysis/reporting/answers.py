"""LoCoMo and MMLU in the report: per run with its setting and its failures, the paper's figures only beside
runs of their setting, and differences on the questions both answered with cluster bootstrap intervals."""

from __future__ import annotations

import pandas as pd

from analysis import tables
from analysis.load import KEYS, Runs
from analysis.reporting.common import LEVEL, interval_text, with_notes, without_baseline
from analysis.reporting.paper import definitions, figure_entry, paper_columns, run_setting, with_setting
from analysis.frames import with_keys

CATEGORY_COLUMNS = [*tables.CATEGORIES.values(), tables.ADVERSARIAL_REPORT]


def _counts(runs: Runs, task: str, unit: str) -> pd.DataFrame:
    counts = tables.outcome_counts(runs, task).rename(columns={"done": unit})
    return counts[KEYS + [unit, "stopped", "failed", "failed questions"]]


def locomo_results(runs: Runs) -> pd.DataFrame:
    """LoCoMo F1 × 100 per category under both adversarial rules per run (conversations finished, failed,
    questions failed); the paper's row follows a run only when the run has its setting."""
    if not len(runs.qa) and not len(tables.unit_outcomes(runs, "locomo")):
        return pd.DataFrame()
    ours = tables.locomo_table(runs) if len(runs.qa) else pd.DataFrame(columns=KEYS)
    ours = _counts(runs, "locomo", "conversations").merge(ours, on=KEYS, how="left")
    ours = paper_columns(with_setting(ours, runs), runs, "locomo", {"single-hop": "paper"})
    ours = ours.drop(columns="paper")  # the paper's figures follow as a row of their own
    rows = []
    for _, row in ours.iterrows():
        rows.append({"source": "this study", **row.to_dict()})
        setting = run_setting(runs.manifests.get(row["run"]), row["method"])
        entry, theirs = figure_entry("locomo", "single-hop", setting["method"])
        if entry and str(row["paper setting"]).startswith("same as"):
            rows.append({"source": f"paper: {entry['label']}", "run": row["run"], "method": row["method"],
                         "model": theirs.get("model"), "window": theirs.get("window", "-"),
                         "width": theirs.get("width", "-"),
                         **{k: v for k, v in entry.items() if k in CATEGORY_COLUMNS}})
    return pd.DataFrame(rows).fillna({"paper setting": ""})


def _left_questions(runs: Runs, mine: tuple, base_run: str, paired: set) -> str:
    """The questions one of the two runs did not answer, and the conversations that failed in either."""
    qa, _ = with_keys(runs.qa)
    failed = tables.failed_questions(runs, "locomo")
    units = tables.unit_outcomes(runs, "locomo")
    sides = {mine[0]: qa[(qa["run"] == mine[0]) & (qa["config_id"] == mine[2])], base_run: qa[qa["run"] == base_run]}
    asked = set().union(*(set(s["question_id"].astype(str)) for s in sides.values()))
    asked |= set(failed[failed["run"].isin(list(sides))]["item"])
    lost = units[units["run"].isin(list(sides)) & (units["status"] == "failed")]
    parts = [f"{len(asked - paired)} question(s) not answered by both"] if asked - paired else []
    parts += [f"conversation {r.item} failed in {r.run} ({r.reason})" for r in lost.itertuples()]
    return "; ".join(parts)


def locomo_differences(runs: Runs) -> pd.DataFrame:
    """Mean F1 × 100 difference from the frozen baseline on the questions both answered, with a bootstrap
    interval that resamples conversations (`n` of them)."""
    if not len(runs.qa):
        return pd.DataFrame()
    deltas = tables.answer_deltas(runs)
    if not len(deltas):
        return pd.DataFrame()
    deltas[LEVEL] = [interval_text(lo, hi, n, "conversations")
                     for lo, hi, n in zip(deltas["ci_low"], deltas["ci_high"], deltas["conversations"])]
    qa, notes = with_keys(runs.qa)[0], []
    for key, _ in deltas.groupby(KEYS + ["baseline_run"], dropna=False):
        mine = set(qa[(qa["run"] == key[0]) & (qa["config_id"] == key[2])]["question_id"].astype(str))
        base = set(qa[qa["run"] == key[3]]["question_id"].astype(str))
        why = _left_questions(runs, tuple(key[:3]), key[3], mine & base)
        if why:
            notes.append(f"{key[0]} against {key[3]}: left out: {why}")
    notes += without_baseline(qa, deltas)
    out = deltas[KEYS + ["baseline_run", "category", "questions", "conversations", "delta", LEVEL]]
    return with_notes(with_setting(out.rename(columns={"baseline_run": "baseline", "conversations": "n (conversations)"}),
                                   runs), notes)


def mmlu_results(runs: Runs) -> pd.DataFrame:
    """MMLU accuracy (%) of the base, of base + memory (or adapter) after adapting on a book, and of its dense
    export, with units finished and failed; the paper's where the run has its setting."""
    if not len(runs.mmlu):
        return pd.DataFrame()
    out = tables.mmlu_table(runs)
    out = out.merge(_counts(runs, "mmlu", "units").drop(columns="stopped"), on=KEYS, how="left")
    out = paper_columns(with_setting(out, runs), runs, "mmlu",
                        {"base_micro": "paper base_micro", "memory_micro": "paper memory_micro"})
    return with_notes(out, definitions("mmlu"))


def mmlu_differences(runs: Runs) -> pd.DataFrame:
    """Accuracy (%) change from the base on the same questions, with a bootstrap interval that resamples
    questions (each question's answers after every book together; `n` questions)."""
    if not len(runs.mmlu):
        return pd.DataFrame()
    deltas = tables.retention_deltas(runs)
    deltas[LEVEL] = [interval_text(lo, hi, n, "questions")
                     for lo, hi, n in zip(deltas["ci_low"], deltas["ci_high"], deltas["questions"])]
    counts = _counts(runs, "mmlu", "units")[KEYS + ["failed", "failed questions"]]
    out = deltas.merge(counts, on=KEYS, how="left")[KEYS + ["variant", "books", "failed", "failed questions",
                                                            "answers", "questions", "delta", LEVEL]]
    return with_setting(out.rename(columns={"questions": "n (questions)"}), runs)
