"""What every section of the report shares: numbers as text, intervals with their n, notes under a table."""

from __future__ import annotations

import math

import pandas as pd

from analysis.tables import MIN_UNITS, too_few

MISSING = "missing"
LEVEL = "95% interval"


def number_text(value) -> str:
    """A figure as the report prints it; a figure no run gave is `missing`."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        value = value + 0.0  # no "-0"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def interval_text(low, high, n: int, unit: str) -> str:
    """"[low, high]", or why there is none: too few units (`n` of them), or nothing to compare."""
    if not n:
        return f"{MISSING}: no {unit}"
    reason = too_few(int(n), unit, MIN_UNITS)
    if reason:
        return reason
    return f"[{number_text(float(low))}, {number_text(float(high))}]"


def with_notes(frame: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """The table, carrying the lines the report prints under it (left-out units, the paper's definitions)."""
    frame.attrs["notes"] = [n for n in notes if n]
    return frame


def notes_of(frame: pd.DataFrame) -> list[str]:
    return list(frame.attrs.get("notes", []))


def without_baseline(groups: pd.DataFrame, compared: pd.DataFrame, baseline: str = "none") -> list[str]:
    """A note per run of another method than `baseline` that no comparison covers (none of its settings)."""
    lonely = sorted(set(groups.loc[groups["method"] != baseline, "run"]) - set(compared["run"]))
    return [f"{run}: no {baseline} run of the same model, dtype, data, split, max_tokens and windows to compare "
            "with; no difference is given" for run in lonely]
