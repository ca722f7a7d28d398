"""What the tables share (analysis.tables' and each task folder's tables.py): the keys, grouping that also
works for a single group, and JSON-able numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.load import KEYS, Runs
from locas.contract import BUCKET_WIDTH  # noqa: F401 - the depth buckets, re-exported for the tables

PPL_AT = (50_000, 100_000, 150_000, 200_000)
BOOK = "book_id"
SETTINGS = ["cfg_model_model", "cfg_model_dtype", "cfg_options_data", "cfg_options_split", "cfg_adapt_max_tokens",
            "cfg_adapt_window_size", "cfg_adapt_overlap"]
"""What two runs must share to be compared (the manifest's config, flattened by analysis.load)."""


def pg19_frames(data, books: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(windows, books) of a `Runs`, or the frames given."""
    return (data.windows, data.books) if isinstance(data, Runs) else (data, books)


def with_keys(frame: pd.DataFrame, by=None) -> tuple[pd.DataFrame, list[str]]:
    """The frame with every key column present (missing ones as None), and the grouping columns."""
    by = list(KEYS if by is None else [by] if isinstance(by, str) else by)
    missing = [k for k in dict.fromkeys(KEYS + by) if k not in frame.columns]
    if missing:
        frame = frame.assign(**{k: None for k in missing})
    return frame, by


def grouped(frame: pd.DataFrame, by: list[str]):
    """groupby that also works for no grouping at all (one group of everything)."""
    return frame.assign(_all=0).groupby(by or ["_all"], dropna=False)


def exp_ratio(nll, tokens):
    """The PPL rule (`locas.contract.ppl`) over columns, arrays or sums: exp(NLL / tokens), NaN where nothing is
    scored (a column gives a column on its index)."""
    nll_values, token_values = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    ratio = np.divide(nll_values, token_values, out=np.full(np.broadcast(nll_values, token_values).shape, np.nan),
                      where=token_values > 0)
    return pd.Series(np.exp(ratio), index=nll.index) if isinstance(nll, pd.Series) else np.exp(ratio)


def merge(table: pd.DataFrame, part: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Columns of `part` beside `table`'s rows (by the group columns; side by side for a single group)."""
    if not by:
        return pd.concat([table.reset_index(drop=True), part.reset_index(drop=True)], axis=1)
    return table.merge(part, on=by, how="left")


def number(value, whole: bool = False):
    """A JSON-able number (an int where `whole`, or where it is one already); NaN and missing become None."""
    if value is None or pd.isna(value):
        return None
    return float(value) if isinstance(value, (float, np.floating)) and not whole else int(value)


def width_summary(units: pd.DataFrame | None) -> dict:
    """An expanding memory's widths for a run's summary, from its book or conversation rows: `final_width` (the
    widest unit's; `final_width_min` the narrowest's) and `trainable_params` (the widest unit's); {} for a fixed
    width (its width is the config's `memory_width`)."""
    if units is None or "final_width" not in units.columns or not units["final_width"].notna().any():
        return {}
    grown = units[units["final_width"].notna()]
    return {"final_width": number(grown["final_width"].max(), whole=True),
            "final_width_min": number(grown["final_width"].min(), whole=True),
            "trainable_params": number(grown["trainable_params"].max(), whole=True)}
