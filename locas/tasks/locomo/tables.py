"""LoCoMo's figures: F1 per category under both adversarial rules (docs/protocols.md). pandas only."""

from __future__ import annotations

import pandas as pd

from analysis.frames import number, width_summary, with_keys
from analysis.load import Runs

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
ADVERSARIAL_REPORT = "adversarial (report)"
__all__ = ["ADVERSARIAL_REPORT", "CATEGORIES", "locomo_long", "locomo_summary", "locomo_table"]  # analysis.tables shows


# --- LoCoMo --------------------------------------------------------------------------------------------


def locomo_long(data, by=None) -> pd.DataFrame:
    """Per group and category: `name`, `rule` ("official" / "report"), `f1` (mean × 100), `questions`.
    Category 5 appears under both rules: `f1` (the official abstention score: 1 when the answer abstains)
    and `f1_adversarial_report` (the report's −F1 against the adversarial answer)."""
    qa = data.qa if isinstance(data, Runs) else data
    qa, by = with_keys(qa, by)
    qa = qa.assign(category=pd.to_numeric(qa["category"]).astype(int))
    parts = []
    for rule, column in (("official", "f1"), ("report", "f1_adversarial_report")):
        values = qa.dropna(subset=[column])
        if rule == "report":
            values = values[values["category"] == 5]
        part = (values.assign(_v=values[column].astype(float) * 100)
                .groupby(by + ["category"], dropna=False).agg(f1=("_v", "mean"), questions=("_v", "size"))
                .reset_index())
        part["rule"] = rule
        part["name"] = part["category"].map(CATEGORIES)
        if rule == "report":
            part["name"] = ADVERSARIAL_REPORT
        parts.append(part)
    long = pd.concat(parts, ignore_index=True)
    return long.sort_values(by + ["category", "rule"], kind="stable").reset_index(drop=True)[
        by + ["category", "name", "rule", "f1", "questions"]]


def locomo_table(data, by=None) -> pd.DataFrame:
    """One row per group: F1 × 100 per category (`multi-hop`, `temporal`, `open-domain`, `single-hop`,
    `adversarial` by the official rule, `adversarial (report)`) and `questions`."""
    qa = data.qa if isinstance(data, Runs) else data
    qa, by = with_keys(qa, by)
    long = locomo_long(qa, by)
    names = [*CATEGORIES.values(), ADVERSARIAL_REPORT]
    wide = long.pivot_table(index=by, columns="name", values="f1", dropna=False, aggfunc="first")
    wide = wide.reindex(columns=[c for c in names if c in wide.columns]).reset_index()
    wide.columns.name = None
    counts = qa.groupby(by, dropna=False).size().rename("questions").reset_index()
    return qa[by].drop_duplicates().reset_index(drop=True).merge(wide, on=by, how="left").merge(counts, on=by, how="left")


def locomo_summary(data) -> dict:
    """A LoCoMo run's headline figures: questions, errors, F1 × 100 per category under both rules."""
    runs = data if isinstance(data, Runs) else None
    qa = runs.qa if runs is not None else data
    summary = {"questions": len(qa), "errors": len(runs.errors) if runs is not None else None}
    row = locomo_table(qa.assign(_all=0), by=["_all"]).iloc[0] if len(qa) else {}
    for name in [*CATEGORIES.values(), ADVERSARIAL_REPORT]:
        key = "f1_" + name.replace(" (report)", "_report").replace("-", "_")
        summary[key] = number(row.get(name)) if len(qa) else None
    return {**summary, **width_summary(runs.conversations if runs is not None else None)}
