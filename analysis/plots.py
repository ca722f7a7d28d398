"""Figures from the tidy frames: PPL against position, the cost frontier, LoCoMo F1 per category, MMLU
accuracy per book, sweep heatmaps. Each names its runs' model and n.

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

from analysis.frames import exp_ratio, pg19_frames, with_keys
from analysis.load import KEYS
from analysis.reporting.paper import short_model
from analysis.tables.intervals import pooled_band
from analysis.tables import (ADVERSARIAL_REPORT, BOOK, BUCKET_WIDTH, CATEGORIES, MIN_UNITS, book_tokens, completed,
                             locomo_long, segments, sweep_table)


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
    models = frame["cfg_model_model"].map(short_model) if "cfg_model_model" in frame else None
    if models is not None and models.nunique() > 1:  # several models: each line names its own
        label = label + ", " + models
    return label


def _legend(axes) -> None:
    """The legend under the axes, where it hides no bar or line."""
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, frameon=False)


def _models(frame: pd.DataFrame) -> str:
    """The runs' models, named as the report's rows name them, for a plot's title."""
    models = frame["cfg_model_model"].dropna() if "cfg_model_model" in frame else pd.Series(dtype=str)
    names = sorted({short_model(m) for m in models})
    return ", ".join(names) if names else "model not recorded"


def bucket_width(lengths, window: float = 1) -> int:
    """A bucket width scaled to the books: about a tenth of the median book, rounded down to 1, 2 or 5 × 10^k
    tokens, at most 50,000 (where rows are cut, so 50K buckets are exact); never narrower than a `window`'s
    scored tokens (rounded up the same way), since a window counts whole in the bucket of its first token and
    narrower buckets would leave some empty."""
    target = max(1.0, float(np.median(lengths)) / 10) if len(lengths) else BUCKET_WIDTH
    power = 10 ** int(np.floor(np.log10(target)))
    width = max(m * power for m in (1, 2, 5) if m * power <= target)
    if width < window:
        power = 10 ** int(np.floor(np.log10(window)))
        width = min(m * power for m in (1, 2, 5, 10) if m * power >= window)
    return int(min(BUCKET_WIDTH, width))


def plot_ppl_by_position(data, books: pd.DataFrame | None = None, *, width: int | None = None,
                         reaching: int | None = None, n_boot: int = 500, seed: int = 0, path=None) -> Figure:
    """Pooled PPL of the scored tokens in each [k·width, (k+1)·width) of the completed books, per method,
    against the bucket's middle, with a 95% band over books where a bucket has at least MIN_UNITS books.
    `width` defaults to one scaled to the books' lengths (bucket_width); a window is split only at multiples
    of 50,000, so under that its tokens count in the bucket of its first scored token. `reaching=N` keeps
    the books with >= N tokens, so every point of a line averages the same books."""
    windows, books = pg19_frames(data, books)
    windows, _ = completed(windows, books)
    windows = windows.merge(book_tokens(windows, books).rename(columns={"tokens": "_book_tokens"}),
                            on=KEYS + [BOOK], how="left")
    if reaching is not None:
        windows = windows[windows["_book_tokens"] >= reaching]
    width = width or bucket_width(windows.drop_duplicates(KEYS + [BOOK])["_book_tokens"].dropna(),
                                  windows["scored_tokens"].max() if len(windows) else 1)
    windows = segments(windows)
    windows = windows.assign(_label=_labels(windows), _bucket=windows["start"] // width)
    per_book = (windows.groupby(["_label", "_bucket", BOOK]).agg(nll=("nll_sum", "sum"), tokens=("scored_tokens", "sum"))
                .reset_index())
    per_book = per_book[per_book["tokens"] > 0]
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    scale, unit = (1000, "K tokens") if width >= 1000 else (1, "tokens")
    for label, line in per_book.groupby("_label"):
        agg = line.groupby("_bucket").agg(nll=("nll", "sum"), tokens=("tokens", "sum"), books=(BOOK, "nunique"))
        x = (agg.index.to_numpy() + 0.5) * width / scale
        drawn = axes.plot(x, exp_ratio(agg["nll"], agg["tokens"]), marker="o" if len(x) <= 25 else None,
                          label=f"{label} (n={line[BOOK].nunique()} books)")
        bands = [(xi, *pooled_band(part["nll"], part["tokens"], n_boot=n_boot, seed=seed))
                 for xi, (_, part) in zip(x, line.groupby("_bucket")) if part[BOOK].nunique() >= MIN_UNITS]
        if bands:
            xs, low, high = zip(*bands)
            axes.fill_between(xs, low, high, color=drawn[0].get_color(), alpha=0.2)
    axes.set_xlabel(f"position in the book ({unit}, buckets of {width / scale:g}{unit[0] if scale > 1 else ''}; "
                    "a bucket holds the books that reach it)")
    axes.set_ylabel("PPL")
    axes.set_title(f"PG-19: perplexity against position ({_models(windows)})"
                   + (f", books >= {reaching // 1000}K" if reaching else "")
                   + f"\nbands: 95% over books where a bucket has >= {MIN_UNITS}", fontsize=10)
    axes.grid(alpha=0.3)
    if axes.lines:
        _legend(axes)
    return _save(figure, path)


def plot_locomo_f1(data, *, path=None) -> Figure:
    """Grouped bars: F1 × 100 per LoCoMo category (and the report's adversarial rule), one bar per method."""
    qa, _ = with_keys(getattr(data, "qa", data))
    qa = qa.assign(_label=_labels(qa))
    sizes = qa.groupby("_label").agg(q=("question_id", "size"), c=("conversation_id", "nunique"))
    long = locomo_long(qa, by=["_label"])
    names = [n for n in [*CATEGORIES.values(), ADVERSARIAL_REPORT] if n in set(long["name"])]
    labels = sorted(long["_label"].unique())
    figure = Figure(figsize=(max(6, 1.4 * len(names)), 4))
    axes = figure.add_subplot()
    step = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        values = long[long["_label"] == label].set_index("name")["f1"].reindex(names)
        n = f"n={sizes.loc[label, 'q']} questions, {sizes.loc[label, 'c']} conversations"
        bars = axes.bar(np.arange(len(names)) + (i - (len(labels) - 1) / 2) * step, values, width=step,
                        label=f"{label} ({n})")
        axes.bar_label(bars, fmt="%.1f", fontsize=7)  # a zero shows as 0.0, not as a missing bar
    axes.set_xticks(np.arange(len(names)), names, rotation=15)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_ylabel("F1 × 100")
    axes.set_title(f"LoCoMo: F1 per category ({_models(qa)})")
    if labels:
        _legend(axes)
    return _save(figure, path)


def plot_cost_frontier(runs, *, path=None) -> Figure:
    """PPL of the whole completed books against device-seconds per 1K scored tokens, one point per run, one
    panel per batch size and device (a rate depends on how many books shared each step and on what ran them:
    points are compared within a panel)."""
    from analysis.tables import cost_table, pg19_table

    points = pg19_table(runs)[KEYS + ["ppl", "books"]].merge(
        cost_table(runs)[KEYS + ["gpu_s_per_1k_tokens", "batch_size", "device"]], on=KEYS, how="left")
    shown = lambda value: "not recorded" if pd.isna(value) else str(value)  # noqa: E731
    points = points.assign(_label=_labels(points), _batch=[f"batch size {shown(b)}, {shown(d)}" for b, d in
                                                          zip(points["batch_size"], points["device"])])
    panels = sorted(points["_batch"].unique())
    figure = Figure(figsize=(5 * max(1, len(panels)), 4))
    for i, batch in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), i + 1)
        for _, point in points[points["_batch"] == batch].iterrows():
            axes.scatter(point["gpu_s_per_1k_tokens"], point["ppl"], label=f"{point['_label']} (n={point['books']} books)")
        axes.set_xlabel("seconds per 1K tokens (of the device named above)")
        axes.set_ylabel("PPL (whole books)")
        axes.set_title(batch, fontsize=10)
        axes.grid(alpha=0.3)
        _legend(axes)
    figure.suptitle(f"PG-19: cost frontier ({_models(runs.windows)})")
    return _save(figure, path)


def plot_mmlu_accuracy(data, *, path=None) -> Figure:
    """MMLU accuracy (%) per book adapted on, one bar per run and variant (memory, dense); the base model's as
    a line per run."""
    mmlu, _ = with_keys(getattr(data, "mmlu", data))
    mmlu = mmlu.assign(_label=_labels(mmlu), _correct=mmlu["correct"].astype(float) * 100)
    adapted = mmlu[mmlu["variant"] != "base"]
    books = sorted(adapted[BOOK].dropna().astype(str).unique())
    bars = adapted.groupby(["_label", "variant", BOOK]).agg(acc=("_correct", "mean"), n=("_correct", "size"))
    series = sorted({(label, variant) for label, variant, _ in bars.index})
    figure = Figure(figsize=(max(6, 1.5 * len(books) + 2), 4))
    axes = figure.add_subplot()
    step = 0.8 / max(1, len(series))
    for i, (label, variant) in enumerate(series):
        part = bars.loc[(label, variant)].reindex(books)
        n = int(part["n"].max()) if part["n"].notna().any() else 0
        axes.bar(np.arange(len(books)) + (i - (len(series) - 1) / 2) * step, part["acc"], width=step,
                 label=f"{label}, {variant} (n={n} questions per book)")
    base = mmlu[mmlu["variant"] == "base"].drop_duplicates(["run", "subject", "question_id"])
    for label, rows in base.groupby("_label"):
        axes.axhline(rows["_correct"].mean(), linestyle="--", linewidth=1,
                     label=f"base, {label} (n={len(rows)} questions)")
    axes.set_xticks(np.arange(len(books)), books)
    axes.set_xlabel("book adapted on")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(f"MMLU: accuracy after adapting on each book ({_models(mmlu)})")
    if axes.lines or axes.patches:
        _legend(axes)
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
