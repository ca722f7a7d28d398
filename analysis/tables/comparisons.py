"""Comparisons against the frozen baseline: paired books, bootstrap intervals, relative cost."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis.load import KEYS, Runs
from analysis.frames import BOOK, PPL_AT, SETTINGS, exp_ratio, pg19_frames, with_keys
from analysis.tables.intervals import MIN_UNITS, cluster_mean_bootstrap, paired_bootstrap
from locas.tasks.pg19.tables import book_tokens, completed, first_tokens, segments

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


def delta_table(data, books: pd.DataFrame | None = None, *, baseline: str = "none", baseline_run: str | None = None,
                ns=(*PPL_AT, None), reaching_only: bool = False, n_boot: int = 2000, seed: int = 0,
                level: float = 0.95, min_units: int = MIN_UNITS) -> pd.DataFrame:
    """Per non-baseline group and range (`n` = N for PPL@N, <NA> for the whole book; `range` its label
    "PPL@50K" / "book"): `books` paired, `ppl_base`, `ppl` (pooled over the paired books), `delta` with its
    bootstrap `ci_low`, `ci_high` (none under `min_units` books), `mean_log_ratio` (mean per-book
    log(ppl/ppl_base)) and `improved` (share of books with delta < 0). A range no paired book gives (no book
    reaches N, with `reaching_only`) is a row with 0 books and no figures."""
    rows, pairs = [], {}
    names = KEYS + ["baseline_run", "baseline_config_id"]
    for i, n in enumerate(ns):
        paired = book_deltas(data, books, baseline=baseline, baseline_run=baseline_run, n=n,
                             reaching_only=reaching_only, warn=i == 0)
        for key, group in paired.groupby(names, dropna=False, sort=True):
            pairs.setdefault(key, set()).add(n)
            delta, low, high = paired_bootstrap(group["nll"], group["tokens"], group["nll_base"],
                                                group["tokens_base"], n_boot=n_boot, seed=seed, level=level,
                                                min_units=min_units)
            rows.append({**dict(zip(names, key)), "n": n, "books": len(group),
                         "ppl_base": float(exp_ratio(group["nll_base"].sum(), group["tokens_base"].sum())),
                         "ppl": float(exp_ratio(group["nll"].sum(), group["tokens"].sum())),
                         "delta": delta, "ci_low": low, "ci_high": high,
                         "mean_log_ratio": float(group["log_ratio"].mean()),
                         "improved": float((group["delta"] < 0).mean())})
    rows += [{**dict(zip(names, key)), "n": n, "books": 0} for key, given in pairs.items() for n in ns
             if n not in given]
    columns = names + ["n", "range", "books", "ppl_base", "ppl", "delta", "ci_low", "ci_high", "mean_log_ratio",
                       "improved"]
    table = pd.DataFrame(rows, columns=columns)
    order = {n: i for i, n in enumerate(ns)}
    table = table.assign(_order=table["n"].map(lambda n: order[None if pd.isna(n) else n]))
    table = table.sort_values(names + ["_order"], kind="stable").drop(columns="_order").reset_index(drop=True)
    table["range"] = table["n"].map(lambda n: "book" if pd.isna(n) else f"PPL@{int(n) // 1000}K")
    return table.astype({"n": "Int64"})


def answer_deltas(data, *, baseline: str = "none", baseline_run: str | None = None, n_boot: int = 2000,
                  seed: int = 0, min_units: int = MIN_UNITS) -> pd.DataFrame:
    """LoCoMo: per non-baseline group and category (both adversarial rules), the mean F1 × 100 difference
    from a comparable baseline group on the same questions (those both answered), with a bootstrap interval
    that resamples conversations (their questions are not independent): `conversations` of them."""
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
            mean, low, high, clusters = cluster_mean_bootstrap(
                100 * (part[column].astype(float) - part[f"{column}_base"].astype(float)), part["conversation_id"],
                n_boot=n_boot, seed=seed, min_units=min_units)
            rows.append({**dict(zip(KEYS, key)), "baseline_run": base["run"].iloc[0], "category": name,
                         "questions": len(part), "conversations": clusters, "delta": mean, "ci_low": low,
                         "ci_high": high})
    return pd.DataFrame(rows, columns=KEYS + ["baseline_run", "category", "questions", "conversations", "delta",
                                              "ci_low", "ci_high"])


def retention_deltas(data, *, n_boot: int = 2000, seed: int = 0, min_units: int = MIN_UNITS) -> pd.DataFrame:
    """MMLU: per group, the accuracy (%) change from the base model to the adapted state (`memory`) and to its
    export (`dense`), each book's answer against the base's on the same question; the interval resamples
    questions (one question's answers after every book move together): `questions` of them."""
    mmlu, _ = with_keys(data.mmlu if isinstance(data, Runs) else data)
    question = ["subject", "question_id"]
    base = mmlu[mmlu["variant"] == "base"].drop_duplicates(question)[question + ["correct"]]
    rows = []
    for key, group in mmlu[mmlu["variant"] != "base"].groupby(KEYS, dropna=False, sort=True):
        for variant in ("memory", "dense"):
            paired = group[group["variant"] == variant].merge(base, on=question, suffixes=("", "_base"))
            diff = 100 * (paired["correct"].astype(float) - paired["correct_base"].astype(float))
            mean, low, high, questions = cluster_mean_bootstrap(
                diff, paired["subject"].astype(str) + "/" + paired["question_id"].astype(str), n_boot=n_boot,
                seed=seed, min_units=min_units)
            rows.append({**dict(zip(KEYS, key)), "variant": variant, "books": paired[BOOK].nunique(),
                         "answers": len(paired), "questions": questions, "delta": mean, "ci_low": low,
                         "ci_high": high})
    return pd.DataFrame(rows, columns=KEYS + ["variant", "books", "answers", "questions", "delta", "ci_low",
                                              "ci_high"])
