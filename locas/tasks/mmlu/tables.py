"""MMLU retention's figures: micro and macro accuracy of the base, memory and dense variants, their agreement.
pandas only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.frames import BOOK, grouped, merge, number, with_keys
from analysis.load import Runs
from locas.contract import KEYS

__all__ = ["mmlu_summary", "mmlu_table"]  # what analysis.tables shows of them


def _accuracy(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group: `micro` (over questions) and `macro` (mean of subject accuracies), both × 100."""
    correct = rows.assign(_c=rows["correct"].astype(float))
    groups = by or ["_all"]
    correct = correct.assign(_all=0)
    micro = correct.groupby(groups, dropna=False)["_c"].agg(["mean", "size"]).rename(columns={"mean": "micro", "size": "n"})
    subjects = correct.groupby(groups + ["subject"], dropna=False)["_c"].mean()
    macro = subjects.groupby(level=list(range(len(groups))), dropna=False).mean().rename("macro")
    out = micro.join(macro).reset_index().drop(columns="_all", errors="ignore")
    out[["micro", "macro"]] *= 100
    return out


def mmlu_table(data, by=None) -> pd.DataFrame:
    """One row per group with adapted rows (every group when there are only base rows), all in %:
    `base_micro`, `base_macro`: the base model (variant `base`) of the same run, else of all runs, each
    question once; `memory_micro`, `memory_macro`, `dense_micro`, `dense_macro`: pooled over the books
    adapted on; `agreement`: share of (book, question) where memory and dense predict the same option;
    `books` adapted on and `questions` (distinct book × subject × question evaluated)."""
    mmlu = data.mmlu if isinstance(data, Runs) else data
    mmlu, by = with_keys(mmlu, by)
    base = mmlu[mmlu["variant"] == "base"]
    adapted = mmlu[mmlu["variant"] != "base"]
    source = adapted if len(adapted) else mmlu
    table = source[by].drop_duplicates().reset_index(drop=True) if by else pd.DataFrame(index=[0])
    run_level = [c for c in ("run",) if c in by]
    table = table.assign(base_micro=np.nan, base_macro=np.nan)
    question = ["subject", "question_id"]
    if len(base):
        pooled = _accuracy(base.drop_duplicates(question), []).iloc[0]
        table["base_micro"], table["base_macro"] = pooled["micro"], pooled["macro"]
        if run_level:  # the base of the same run where it has one, else the base of all runs
            before = _accuracy(base.drop_duplicates(run_level + question), run_level).set_index("run")
            table["base_micro"] = table["run"].map(before["micro"]).fillna(table["base_micro"])
            table["base_macro"] = table["run"].map(before["macro"]).fillna(table["base_macro"])
    for variant in ("memory", "dense"):
        rows = adapted[adapted["variant"] == variant]
        acc = _accuracy(rows, by) if len(rows) else pd.DataFrame(columns=by + ["micro", "macro", "n"])
        acc = acc.rename(columns={"micro": f"{variant}_micro", "macro": f"{variant}_macro"}).drop(columns="n")
        table = merge(table, acc, by) if by or len(acc) else table.assign(**{f"{variant}_micro": np.nan,
                                                                               f"{variant}_macro": np.nan})
    keys = list(dict.fromkeys(KEYS + by))
    item = [BOOK, "subject", "question_id"]
    both = adapted[adapted["variant"] == "memory"].merge(
        adapted[adapted["variant"] == "dense"][keys + item + ["prediction"]], on=keys + item, suffixes=("", "_dense"))
    same = both.assign(_same=(both["prediction"] == both["prediction_dense"]).astype(float) * 100)
    agreement = grouped(same, by)["_same"].mean().rename("agreement").reset_index().drop(columns="_all", errors="ignore")
    table = merge(table, agreement, by) if len(both) else table.assign(agreement=np.nan)
    sizes = (grouped(source.drop_duplicates(keys + item), by).agg(books=(BOOK, "nunique"), questions=("question_id", "size"))
             .reset_index().drop(columns="_all", errors="ignore"))
    return merge(table, sizes, by)


def mmlu_summary(data) -> dict:
    """An MMLU run's headline figures: errors; base, memory and dense micro/macro accuracy (%); agreement."""
    runs = data if isinstance(data, Runs) else None
    mmlu = runs.mmlu if runs is not None else data
    row = mmlu_table(mmlu, by=[]).iloc[0] if len(mmlu) else {}
    summary = {"questions": int(mmlu["question_id"].nunique()) if len(mmlu) else 0,
               "errors": len(runs.errors) if runs is not None else None}
    for key in ("base_micro", "base_macro", "memory_micro", "memory_macro", "dense_micro", "dense_macro", "agreement"):
        summary[key] = number(row.get(key)) if len(mmlu) else None
    return summary

