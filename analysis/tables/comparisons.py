"""Comparisons against the frozen baseline: paired books, bootstrap intervals, relative cost."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis.frames import BOOK, PPL_AT, SETTINGS, exp_ratio, pg19_frames, with_keys
from analysis.load import KEYS, Runs
from locas.tasks.pg19.tables import book_tokens, completed, first_tokens, segments, stopped_books, without_books

# --- comparisons ------------------------------------------------------------------------------------------


def _settings(frame: pd.DataFrame) -> pd.DataFrame:
    """The comparability settings of each row (missing ones as None), as one text key `_setting`."""
    present = [c for c in SETTINGS if c in frame.columns]
    key = frame[present].map(str).agg("|".join, axis=1) if present else pd.Series("", index=frame.index)
    return frame.assign(_setting=key)


def _baselines(treated: pd.DataFrame, base: pd.DataFrame, baseline_run: str | None, what: str, warn: bool,
               item: str = BOOK):
    """For each treated group, its comparable baseline group (same settings; in `baseline_run` when named):
    the one sharing most items (books, questions), then the one in the same run, then the first by name.
    Warns once for groups with none, and once when a group had several to choose from and none was named."""
    candidates = {key: group for key, group in base.groupby(["run", "config_id", "_setting"], dropna=False, sort=True)}
    if baseline_run is not None:
        candidates = {k: g for k, g in candidates.items() if k[0] == baseline_run}
    chosen, lonely, ambiguous = {}, [], []
    for key, group in treated.groupby(KEYS, dropna=False, sort=True):
        setting = group["_setting"].iloc[0]
        options = [(-len(set(group[item]) & set(g[item])), k[0] != key[0], k) for k, g in candidates.items()
                   if k[2] == setting]
        options = sorted(o for o in options if o[0])  # most shared books, then the same run, then by name
        if not options:
            lonely.append(f"{key[1]} in {key[0]}")
            continue
        if len(options) > 1 and baseline_run is None:
            ambiguous.append(f"{key[1]} in {key[0]} -> {options[0][2][0]}")
        chosen[key] = candidates[options[0][2]]
    if warn and lonely and len(base):
        warnings.warn(f"{what}: no comparable baseline (same model, dtype, data, split, max_tokens, windows and "
                      f"books) for {', '.join(lonely)}; they are left out", stacklevel=3)
    if warn and ambiguous:
        warnings.warn(f"{what}: several comparable baselines, the one sharing the most books was taken "
                      f"({'; '.join(ambiguous)}); name one with baseline_run=", stacklevel=3)
    return chosen


def book_deltas(data, books: pd.DataFrame | None = None, *, baseline: str = "none", baseline_run: str | None = None,
                n: int | None = None, reaching_only: bool = False, warn: bool = True) -> pd.DataFrame:
    """Per completed book of every non-baseline group, paired with a comparable baseline group (method ==
    `baseline`, in run `baseline_run` when given) on the same book with an identical window grid: `nll`,
    `tokens`, `ppl` and the baseline's `nll_base`, `tokens_base`, `ppl_base`, `delta` (ppl − ppl_base),
    `log_ratio` (log ppl/ppl_base), plus `baseline_run`, `baseline_config_id`. Over the first n tokens
    (PPL@n) or the whole book when n is None; `reaching_only` keeps books with >= n tokens."""
    windows, books = pg19_frames(data, books)
    kept, _ = completed(windows, books)
    kept = _settings(kept).merge(book_tokens(kept, books).rename(columns={"tokens": "_book_tokens"}),
                                 on=KEYS + [BOOK], how="left")
    level = KEYS + [BOOK]
    kept = kept.sort_values(level + ["start"])
    grid = kept["start"].astype("int64").astype(str) + ":" + kept["scored_tokens"].astype("int64").astype(str)
    per_book = (kept.assign(_grid=grid).groupby(level, dropna=False)
                .agg(grid=("_grid", ",".join), book_tokens=("_book_tokens", "max"), _setting=("_setting", "first"))
                .reset_index())
    parts = segments(kept) if n is None else first_tokens(segments(kept), n)
    sums = parts.groupby(level, dropna=False).agg(nll=("nll_sum", "sum"), tokens=("scored_tokens", "sum")).reset_index()
    per_book = per_book.merge(sums, on=level, how="inner")
    if reaching_only and n is not None:
        per_book = per_book[per_book["book_tokens"] >= n]
    per_book = per_book[per_book["tokens"] > 0]
    is_base = per_book["method"] == baseline
    chosen = _baselines(per_book[~is_base], per_book[is_base], baseline_run, "deltas", warn)
    out = []
    for key, group in per_book[~is_base].groupby(KEYS, dropna=False, sort=True):
        if key not in chosen:
            continue
        other = chosen[key][[BOOK, "grid", "nll", "tokens", "run", "config_id"]]
        out.append(group.merge(other, on=[BOOK, "grid"], suffixes=("", "_base"))
                   .rename(columns={"run_base": "baseline_run", "config_id_base": "baseline_config_id"}))
    columns = level + ["baseline_run", "baseline_config_id", "nll", "tokens", "nll_base", "tokens_base",
                       "ppl", "ppl_base", "delta", "log_ratio"]
    if not out or not sum(len(o) for o in out):
        return pd.DataFrame(columns=columns)
    paired = pd.concat(out, ignore_index=True)
    paired["ppl"] = exp_ratio(paired["nll"], paired["tokens"])
    paired["ppl_base"] = exp_ratio(paired["nll_base"], paired["tokens_base"])
    paired["delta"] = paired["ppl"] - paired["ppl_base"]
    paired["log_ratio"] = np.log(paired["ppl"] / paired["ppl_base"])
    return paired[columns]


def paired_bootstrap(nll: np.ndarray, tokens: np.ndarray, nll_base: np.ndarray, tokens_base: np.ndarray,
                     *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(Δ, low, high): Δ = pooled PPL − pooled baseline PPL over the books given (one entry per book),
    and its percentile interval from `n_boot` resamples of the books (the same draw for both sides)."""
    nll, tokens, nll_base, tokens_base = (np.asarray(a, dtype=float) for a in (nll, tokens, nll_base, tokens_base))
    n = len(nll)
    point = np.exp(nll.sum() / tokens.sum()) - np.exp(nll_base.sum() / tokens_base.sum())
    if n < 2:
        return float(point), float("nan"), float("nan")
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)  # (n_boot, n)
    deltas = np.exp(counts @ nll / (counts @ tokens)) - np.exp(counts @ nll_base / (counts @ tokens_base))
    tail = (1.0 - level) / 2
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    return float(point), float(low), float(high)


def delta_table(data, books: pd.DataFrame | None = None, *, baseline: str = "none", baseline_run: str | None = None,
                ns=(*PPL_AT, None), reaching_only: bool = False, n_boot: int = 2000, seed: int = 0,
                level: float = 0.95) -> pd.DataFrame:
    """Per non-baseline group and range (`n` = N for PPL@N, <NA> for the whole book; `range` its label
    "PPL@50K" / "book"): `books` paired, `ppl_base`, `ppl` (pooled over the paired books), `delta` with its
    bootstrap `ci_low`, `ci_high`, `mean_log_ratio` (mean per-book log(ppl/ppl_base)) and `improved`
    (share of books with delta < 0)."""
    rows = []
    for i, n in enumerate(ns):
        paired = book_deltas(data, books, baseline=baseline, baseline_run=baseline_run, n=n,
                             reaching_only=reaching_only, warn=i == 0)
        for key, group in paired.groupby(KEYS + ["baseline_run", "baseline_config_id"], dropna=False, sort=True):
            delta, low, high = paired_bootstrap(group["nll"], group["tokens"], group["nll_base"],
                                                group["tokens_base"], n_boot=n_boot, seed=seed, level=level)
            rows.append({**dict(zip(KEYS + ["baseline_run", "baseline_config_id"], key)),
                         "n": n, "range": "book" if n is None else f"PPL@{n // 1000}K", "books": len(group),
                         "ppl_base": float(np.exp(group["nll_base"].sum() / group["tokens_base"].sum())),
                         "ppl": float(np.exp(group["nll"].sum() / group["tokens"].sum())),
                         "delta": delta, "ci_low": low, "ci_high": high,
                         "mean_log_ratio": float(group["log_ratio"].mean()),
                         "improved": float((group["delta"] < 0).mean())})
    columns = KEYS + ["baseline_run", "baseline_config_id", "n", "range", "books", "ppl_base", "ppl", "delta",
                      "ci_low", "ci_high", "mean_log_ratio", "improved"]
    return pd.DataFrame(rows, columns=columns).astype({"n": "Int64"})


def cost_table(data, windows: pd.DataFrame | None = None, *, baseline: str = "none",
               baseline_run: str | None = None) -> pd.DataFrame:
    """The paper's cost columns per group, over completed books: `books`, `tokens` (scored),
    `trainable_params` (0 for the frozen baseline), `gpu_seconds` (Σ book seconds: each book's share of
    the accelerator time of the batched window steps it was in, plus its memorize), `gpu_s_per_1k_tokens`,
    and `time_vs_none`: that rate over the rate of the comparable baseline (the paper's "1.8×")."""
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

    def rate(frame: pd.DataFrame) -> float:
        return frame["seconds"].sum() / frame["scored_tokens"].sum() * 1000

    base = books[books["method"] == baseline]
    reference = {key: rate(group) for key, group in base.groupby(KEYS, dropna=False)}
    chosen = _baselines(books[books["method"] != baseline], base, baseline_run, "cost", warn=True)
    reference.update({key: rate(group) for key, group in chosen.items()})
    keys = list(agg[KEYS].itertuples(index=False, name=None))
    agg["time_vs_none"] = [agg.loc[i, "gpu_s_per_1k_tokens"] / reference[key] if key in reference else np.nan
                           for i, key in zip(agg.index, keys)]
    return agg



def paired_mean_bootstrap(differences, *, n_boot: int = 2000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of per-item differences (a method's score minus the baseline's on the same item),
    with a percentile interval from `n_boot` resamples of the items."""
    values = np.asarray(differences, dtype=float)
    if len(values) < 2:
        return (float(values.mean()) if len(values) else float("nan")), float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    tail = (1.0 - level) / 2
    low, high = np.quantile(values[draws].mean(axis=1), [tail, 1.0 - tail])
    return float(values.mean()), float(low), float(high)


def answer_deltas(data, *, baseline: str = "none", baseline_run: str | None = None, n_boot: int = 2000,
                  seed: int = 0) -> pd.DataFrame:
    """LoCoMo: per non-baseline group and category (both adversarial rules), the mean F1 × 100 difference
    from a comparable baseline group on the same questions, with its paired bootstrap interval."""
    from locas.tasks.locomo.tables import ADVERSARIAL_REPORT, CATEGORIES

    qa = _settings(with_keys(data.qa if isinstance(data, Runs) else data)[0])
    is_base = qa["method"] == baseline
    chosen = _baselines(qa[~is_base], qa[is_base], baseline_run, "LoCoMo deltas", True, item="question_id")
    rows = []
    for key, group in qa[~is_base].groupby(KEYS, dropna=False, sort=True):
        if key not in chosen:
            continue
        base = chosen[key]
        paired = group.merge(base[["question_id", "f1", "f1_adversarial_report"]], on="question_id",
                             suffixes=("", "_base"))
        for category, name in [*CATEGORIES.items(), (5, ADVERSARIAL_REPORT)]:
            column = "f1_adversarial_report" if name == ADVERSARIAL_REPORT else "f1"
            part = paired[paired["category"].astype(int) == category].dropna(subset=[column, f"{column}_base"])
            mean, low, high = paired_mean_bootstrap(100 * (part[column] - part[f"{column}_base"]), n_boot=n_boot,
                                                    seed=seed)
            rows.append({**dict(zip(KEYS, key)), "baseline_run": base["run"].iloc[0], "category": name,
                         "questions": len(part), "delta": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=KEYS + ["baseline_run", "category", "questions", "delta", "ci_low", "ci_high"])


def retention_deltas(data, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """MMLU: per group, the accuracy (%) change from the base model to the adapted state (`memory`) and to its
    export (`dense`), paired by question (each book's answers against the base's), with bootstrap intervals."""
    mmlu, _ = with_keys(data.mmlu if isinstance(data, Runs) else data)
    base = mmlu[mmlu["variant"] == "base"].drop_duplicates("question_id")[["question_id", "correct"]]
    rows = []
    for key, group in mmlu[mmlu["variant"] != "base"].groupby(KEYS, dropna=False, sort=True):
        for variant in ("memory", "dense"):
            paired = group[group["variant"] == variant].merge(base, on="question_id", suffixes=("", "_base"))
            diff = 100 * (paired["correct"].astype(float) - paired["correct_base"].astype(float))
            mean, low, high = paired_mean_bootstrap(diff, n_boot=n_boot, seed=seed)
            rows.append({**dict(zip(KEYS, key)), "variant": variant, "answers": len(paired), "delta": mean,
                         "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=KEYS + ["variant", "answers", "delta", "ci_low", "ci_high"])
