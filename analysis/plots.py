"""Figures from the tidy frames: PPL against position, LoCoMo F1 per category, sweep heatmaps.

Each function returns a `matplotlib.figure.Figure` and, given `path`, saves it as PNG. Figures are
built with `Figure()` rather than pyplot, so they render through Agg with no display and leave no pyplot
state behind; in a notebook (`%matplotlib inline`) the returned figure shows as the cell's value.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # no display: never try a GUI backend if pyplot is used later

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.frames import pg19_frames, with_keys
from analysis.load import KEYS
from analysis.tables import (ADVERSARIAL_REPORT, BOOK, BUCKET_WIDTH, CATEGORIES, book_tokens, completed, locomo_long,
                             segments, sweep_table)


def _save(figure: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return figure


def _labels(frame: pd.DataFrame) -> pd.Series:
    """The method, with the run and config id added only where a method has several of them."""
    groups = frame[KEYS].drop_duplicates()
    several = groups.groupby("method", dropna=False).size()
    label = frame["method"].astype(str)
    many = frame["method"].map(several).fillna(1) > 1
    label[many] = label[many] + " (" + frame.loc[many, "run"].astype(str) + ", " + frame.loc[many, "config_id"].astype(str) + ")"
    return label


def plot_ppl_by_position(data, books: pd.DataFrame | None = None, *, width: int = BUCKET_WIDTH,
                         reaching: int | None = None, path=None) -> Figure:
    """Pooled PPL of the scored tokens in each [k·width, (k+1)·width) of the completed books, per method,
    against the bucket's middle (in K tokens); exact when `width` divides 50,000 (where rows are cut).
    `reaching=N` keeps the books with >= N tokens, so every point of a line averages the same books."""
    windows, books = pg19_frames(data, books)
    windows, _ = completed(windows, books)
    windows = windows.merge(book_tokens(windows, books).rename(columns={"tokens": "_book_tokens"}),
                            on=KEYS + [BOOK], how="left")
    if reaching is not None:
        windows = windows[windows["_book_tokens"] >= reaching]
    windows = segments(windows)
    windows = windows.assign(_label=_labels(windows), _bucket=windows["start"] // width)
    agg = windows.groupby(["_label", "_bucket"]).agg(nll=("nll_sum", "sum"), tokens=("scored_tokens", "sum")).reset_index()
    agg = agg[agg["tokens"] > 0]
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    for label, line in agg.groupby("_label"):
        axes.plot((line["_bucket"] + 0.5) * width / 1000, np.exp(line["nll"] / line["tokens"]), marker="o", label=label)
    axes.set_xlabel(f"position in the book (K tokens, buckets of {width // 1000}K)")
    axes.set_ylabel("PPL")
    axes.set_title("PG-19: perplexity against position" + (f" (books >= {reaching // 1000}K)" if reaching else ""))
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    return _save(figure, path)


def plot_locomo_f1(data, *, path=None) -> Figure:
    """Grouped bars: F1 × 100 per LoCoMo category (and the report's adversarial rule), one bar per method."""
    qa, _ = with_keys(getattr(data, "qa", data))
    long = locomo_long(qa.assign(_label=_labels(qa)), by=["_label"])
    names = [n for n in [*CATEGORIES.values(), ADVERSARIAL_REPORT] if n in set(long["name"])]
    labels = sorted(long["_label"].unique())
    figure = Figure(figsize=(max(6, 1.4 * len(names)), 4))
    axes = figure.add_subplot()
    step = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        values = long[long["_label"] == label].set_index("name")["f1"].reindex(names)
        axes.bar(np.arange(len(names)) + (i - (len(labels) - 1) / 2) * step, values, width=step, label=label)
    axes.set_xticks(np.arange(len(names)), names, rotation=15)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_ylabel("F1 × 100")
    axes.set_title("LoCoMo: F1 per category")
    if labels:
        axes.legend()
    return _save(figure, path)


def plot_sweep_heatmap(data, x: str, y: str, *, value: str = "ppl", agg: str = "min", path=None) -> Figure:
    """`value` (aggregated by `agg` over the other config columns) for each (x, y) pair of a sweep's
    completed trials (those ASHA stopped early are left out)."""
    done = sweep_table(data, value)
    grid = done.pivot_table(index=y, columns=x, values=value, aggfunc=agg)
    figure = Figure(figsize=(1.2 * max(3, grid.shape[1]) + 2, 0.8 * max(3, grid.shape[0]) + 1.5))
    axes = figure.add_subplot()
    image = axes.imshow(grid.to_numpy(dtype=float), cmap="viridis_r", aspect="auto")
    axes.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    axes.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    for (row, column), cell in np.ndenumerate(grid.to_numpy(dtype=float)):
        if np.isfinite(cell):
            axes.text(column, row, f"{cell:.2f}", ha="center", va="center", color="white", fontsize=9)
    figure.colorbar(image, ax=axes, label=f"{value} ({agg})")
    axes.set_title(f"sweep: {value} by {x} × {y}")
    return _save(figure, path)
