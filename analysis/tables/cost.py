"""Cost like with like: accelerator seconds per token on the books both runs finished, and a ratio only
between runs that adapted books in batches of the same size (docs/protocols.md)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from analysis.load import KEYS, Runs
from analysis.frames import BOOK, with_keys
from analysis.tables.comparisons import _baselines, _settings
from locas.tasks.pg19.tables import stopped_books, without_books


def _stamp(frame: pd.DataFrame, column: str, normal=None, cast=None) -> pd.DataFrame:
    """Per group: the one value of its rows' `column` stamp (each row's through `normal`, the value through
    `cast`); several values: "mixed"; none (rows written before the stamp): NaN, "not recorded"."""
    frame, _ = with_keys(frame)
    if column not in frame:
        return frame[KEYS].drop_duplicates().assign(**{column: np.nan})
    values = frame[column] if normal is None else frame[column].map(normal)

    def one(group: pd.Series):
        known = group.dropna().unique()
        if len(known) == 1:
            return known[0] if cast is None else cast(known[0])
        return "mixed" if len(known) else np.nan

    return frame.assign(**{column: values}).groupby(KEYS, dropna=False)[column].agg(one).reset_index()


def batch_sizes(frame: pd.DataFrame) -> pd.DataFrame:
    """Per group: `batch_size`, the batch its units ran in (a run resumed at another batch size: "mixed")."""
    return _stamp(frame, "batch_size", cast=int)


def devices(frame: pd.DataFrame) -> pd.DataFrame:
    """Per group: `device`, what its units ran on ("cpu", or the GPU's name without its index). Seconds per
    token compare only on the same device."""
    return _stamp(frame, "device", normal=lambda d: re.sub(r"^cuda:\d+\s*", "", d) or "cuda" if isinstance(d, str)
                  else np.nan)


def _rate(frame: pd.DataFrame) -> float:
    tokens = frame["scored_tokens"].sum()
    return frame["seconds"].sum() / tokens * 1000 if tokens else np.nan


def cost_table(data, windows: pd.DataFrame | None = None, *, baseline: str = "none",
               baseline_run: str | None = None) -> pd.DataFrame:
    """The paper's cost columns per group, over its completed books: `books`, `tokens` (scored),
    `trainable_params` (0 for the frozen baseline), `gpu_seconds` (Σ book seconds: each book's share of the
    accelerator time of the batched window steps it was in, plus its memorize), `gpu_s_per_1k_tokens`,
    `batch_size`; then against the comparable baseline on the books both finished (`paired_books`):
    `baseline_run`, `baseline_batch_size`, `gpu_s_per_1k_paired` and `baseline_gpu_s_per_1k_paired` (the
    same books), and `time_vs_none`, their ratio (the paper's "1.8×"), only when both batch sizes are known
    and equal and both ran on the same `device`; `cost_note` says why a ratio is not given. (`gpu_` names
    the accelerator's seconds: a CPU run's are CPU seconds, and its `device` says so.)"""
    books, windows = (data.books, data.windows) if isinstance(data, Runs) else (data, windows)
    books, _ = with_keys(books)
    books = _settings(without_books(books, stopped_books(windows, books)))
    if "trainable_params" not in books.columns:
        books = books.assign(trainable_params=np.nan)
    agg = (books.groupby(KEYS, dropna=False)
           .agg(books=(BOOK, "nunique"), tokens=("scored_tokens", "sum"), trainable_params=("trainable_params", "max"),
                gpu_seconds=("seconds", "sum")).reset_index())
    is_base = agg["method"] == baseline
    agg.loc[is_base, "trainable_params"] = agg.loc[is_base, "trainable_params"].fillna(0)
    agg["gpu_s_per_1k_tokens"] = agg["gpu_seconds"] / agg["tokens"].where(agg["tokens"] > 0) * 1000
    agg = agg.merge(batch_sizes(books), on=KEYS, how="left").merge(devices(books), on=KEYS, how="left")
    batch = {tuple(r[:3]): r[3] for r in agg[KEYS + ["batch_size"]].itertuples(index=False, name=None)}
    device = {tuple(r[:3]): r[3] for r in agg[KEYS + ["device"]].itertuples(index=False, name=None)}

    base = books[books["method"] == baseline]
    chosen = {key: group for key, group in base.groupby(KEYS, dropna=False)}
    chosen.update(_baselines(books[books["method"] != baseline], base, baseline_run, "cost", warn=True))
    rows = []
    for key, mine in books.groupby(KEYS, dropna=False):
        other = chosen.get(key)
        if other is None:
            rows.append({**dict(zip(KEYS, key)), "cost_note": "no comparable baseline"})
            continue
        other_key = tuple(other[KEYS].iloc[0])
        shared = set(mine[BOOK]) & set(other[BOOK])
        ours, theirs = _rate(mine[mine[BOOK].isin(shared)]), _rate(other[other[BOOK].isin(shared)])
        a, b = batch.get(key), batch.get(other_key)
        known = all(isinstance(x, (int, np.integer)) for x in (a, b))
        note = (None if known and a == b else
                f"batch {_shown(a)} vs {_shown(b)}: no ratio (batching changes the time per token)")
        mine_on, theirs_on = device.get(key), device.get(other_key)
        if note is None and not (isinstance(mine_on, str) and mine_on == theirs_on and mine_on != "mixed"):
            note = f"device {_shown(mine_on)} vs {_shown(theirs_on)}: no ratio (another device's seconds)"
        rows.append({**dict(zip(KEYS, key)), "baseline_run": other_key[0], "baseline_batch_size": b,
                     "paired_books": len(shared), "gpu_s_per_1k_paired": ours, "baseline_gpu_s_per_1k_paired": theirs,
                     "time_vs_none": ours / theirs if note is None and theirs else np.nan, "cost_note": note})
    columns = KEYS + ["baseline_run", "baseline_batch_size", "paired_books", "gpu_s_per_1k_paired",
                      "baseline_gpu_s_per_1k_paired", "time_vs_none", "cost_note"]
    return agg.merge(pd.DataFrame(rows).reindex(columns=columns), on=KEYS, how="left")


def _shown(value) -> str:
    """A batch size or device as a note shows it."""
    return "not recorded" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
