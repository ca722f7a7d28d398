"""The paper's tables from the tidy frames of `analysis.load` (SPEC §6-8), vectorized in pandas.

PG-19 rules (the same as `locas.metrics`): a window scores positions [start, start + scored_tokens) and
only its sums are stored, so a range [lo, hi) counts a window **iff lo <= start < hi** (the window belongs
to the range of its first scored token). PPL@N = exp(Σ nll / Σ scored) over the windows starting before N,
pooled over every book of a group (token-weighted); the bucket at N is [N - 50K, N); the TempLoRA-style
figure is Σ scored_i · exp(nll_i / scored_i) / Σ scored_i over the same windows. A book *reaches* N when
its tokens >= N (the book row's `tokens`, else the end of its last window); `reaching_only=True` keeps, in
each column, only the books that reach its N.

Deltas against `none`: a method's books are paired with the `none` books of the same id **and the same
window grid** (identical `start` and `scored_tokens` of every window), which is what "same window
settings" means whatever the config calls them. The statistic is the difference of pooled PPL over the
paired books (exactly the difference the PPL table shows, restricted to those books); its confidence
interval is a paired percentile bootstrap that resamples books (with replacement, the same draw for both
methods), seeded. The mean per-book log-PPL ratio and the share of books improved are reported beside it.

Groups are `by = ["run", "method", "config_id"]` unless told otherwise. pandas and numpy only.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis.load import KEYS, TRIAL_RESULTS

PPL_AT = (50_000, 100_000, 150_000, 200_000)
BUCKET_WIDTH = 50_000
BOOK = "book_id"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
ADVERSARIAL_REPORT = "adversarial (report)"


def _keys(frame: pd.DataFrame, by=None) -> tuple[pd.DataFrame, list[str]]:
    """The frame with every key column present (missing ones as None), and the grouping columns."""
    by = list(KEYS if by is None else [by] if isinstance(by, str) else by)
    missing = [k for k in dict.fromkeys(KEYS + by) if k not in frame.columns]
    if missing:
        frame = frame.assign(**{k: None for k in missing})
    return frame, by


def _groups(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame[by].drop_duplicates().reset_index(drop=True)


def _exp_ratio(nll: pd.Series, tokens: pd.Series) -> pd.Series:
    return np.exp(nll / tokens.where(tokens > 0))


# --- PG-19 -------------------------------------------------------------------------------------------


def book_tokens(windows: pd.DataFrame, books: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (run, method, config_id, book_id): `tokens`, the book row's when there is one, else the end of
    its last window (start + scored_tokens: every token but the first is scored)."""
    windows, _ = _keys(windows)
    level = KEYS + [BOOK]
    ends = (windows.assign(end=windows["start"] + windows["scored_tokens"])
            .groupby(level, dropna=False)["end"].max().rename("tokens").reset_index())
    if books is None or not len(books) or "tokens" not in books.columns:
        return ends
    books, _ = _keys(books)
    stated = books.dropna(subset=["tokens"]).drop_duplicates(level, keep="last")[level + ["tokens"]]
    merged = ends.merge(stated, on=level, how="outer", suffixes=("_windows", ""))
    merged["tokens"] = merged["tokens"].fillna(merged["tokens_windows"])
    return merged[level + ["tokens"]]


def _with_tokens(windows: pd.DataFrame, books: pd.DataFrame | None) -> pd.DataFrame:
    windows, _ = _keys(windows)
    tokens = book_tokens(windows, books).rename(columns={"tokens": "_book_tokens"})
    return windows.merge(tokens, on=KEYS + [BOOK], how="left")


def _pooled(windows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group: pooled `ppl`, `templora_ppl`, `books`, `tokens` (scored) over the given windows."""
    scored = windows["scored_tokens"]
    weighted = scored * _exp_ratio(windows["nll_sum"], scored)  # NaN for empty windows: skipped
    agg = (windows.assign(_weighted=weighted)
           .groupby(by, dropna=False)
           .agg(nll=("nll_sum", "sum"), tokens=("scored_tokens", "sum"), weighted=("_weighted", "sum"),
                books=(BOOK, "nunique")))
    agg["ppl"] = _exp_ratio(agg["nll"], agg["tokens"])
    agg["templora_ppl"] = agg["weighted"] / agg["tokens"].where(agg["tokens"] > 0)
    return agg[["ppl", "templora_ppl", "books", "tokens"]].reset_index()


def pg19_table(windows: pd.DataFrame, books: pd.DataFrame | None = None, *, ns=PPL_AT,
               width: int = BUCKET_WIDTH, reaching_only: bool = False, by=None) -> pd.DataFrame:
    """One row per group. Per N: `ppl@N` (cumulative), `bucket@N` ([N - width, N)), `templora_ppl@N`,
    `books@N` / `bucket_books@N` (the books behind those columns), `reach@N` (books with >= N tokens);
    then the whole book: `ppl`, `templora_ppl`, `books`, `tokens` (scored tokens)."""
    windows = _with_tokens(windows, books)
    windows, by = _keys(windows, by)
    table = _groups(windows, by)
    for n in ns:
        selected = windows[windows["_book_tokens"] >= n] if reaching_only else windows
        cumulative = _pooled(selected[selected["start"] < n], by)
        cumulative = cumulative.rename(columns={"ppl": f"ppl@{n}", "templora_ppl": f"templora_ppl@{n}",
                                                "books": f"books@{n}"}).drop(columns="tokens")
        low = max(0, n - width)
        bucket = _pooled(selected[(selected["start"] >= low) & (selected["start"] < n)], by)
        bucket = bucket.rename(columns={"ppl": f"bucket@{n}", "books": f"bucket_books@{n}"})
        bucket = bucket[by + [f"bucket@{n}", f"bucket_books@{n}"]]
        reach = (windows[windows["_book_tokens"] >= n].groupby(by, dropna=False)[BOOK].nunique()
                 .rename(f"reach@{n}").reset_index())
        table = table.merge(cumulative, on=by, how="left").merge(bucket, on=by, how="left")
        table = table.merge(reach, on=by, how="left")
        for column in (f"books@{n}", f"bucket_books@{n}", f"reach@{n}"):
            table[column] = table[column].fillna(0).astype(int)
    whole = _pooled(windows, by)
    return table.merge(whole, on=by, how="left")


def pg19_view(table: pd.DataFrame, what: str = "ppl", *, ns=PPL_AT, by=None) -> pd.DataFrame:
    """A readable slice of `pg19_table`: `what` in {"ppl", "bucket", "templora_ppl"}, columns "50K"...
    (plus "book" for the whole book where it applies) and the matching "n@50K"... book counts."""
    by = [c for c in (KEYS if by is None else by) if c in table.columns]
    counts = {"ppl": "books", "templora_ppl": "books", "bucket": "bucket_books"}[what]
    out = table[by].copy()
    for n in ns:
        out[f"{n // 1000}K"] = table[f"{what}@{n}"]
    if what != "bucket":
        out["book"] = table[what]
    for n in ns:
        out[f"n@{n // 1000}K"] = table[f"{counts}@{n}"]
    if what != "bucket":
        out["n@book"] = table["books"]
    return out


def book_ppl(windows: pd.DataFrame, books: pd.DataFrame | None = None, *, ns=PPL_AT,
             width: int = BUCKET_WIDTH) -> pd.DataFrame:
    """Per (run, method, config_id, book_id): `tokens`, then per N `ppl@N`, `bucket@N`,
    `templora_ppl@N`, `reaches@N`, and the whole book's `ppl` and `templora_ppl`."""
    windows = _with_tokens(windows, books)
    level = KEYS + [BOOK]
    table = pg19_table(windows.drop(columns="_book_tokens"), books, ns=ns, width=width, by=level)
    table = table.drop(columns="tokens").merge(book_tokens(windows, books), on=level, how="left")
    keep = level + ["tokens"]
    for n in ns:
        table[f"reaches@{n}"] = table["tokens"] >= n
        keep += [f"ppl@{n}", f"bucket@{n}", f"templora_ppl@{n}", f"reaches@{n}"]
    return table[keep + ["ppl", "templora_ppl"]]


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


def book_deltas(windows: pd.DataFrame, books: pd.DataFrame | None = None, *, baseline: str = "none",
                n: int | None = None, reaching_only: bool = False, warn: bool = True) -> pd.DataFrame:
    """Per book of every non-baseline group, paired with the baseline group (method == `baseline`) that
    shares the most books with an identical window grid: `nll`, `tokens`, `ppl` and the baseline's
    `nll_base`, `tokens_base`, `ppl_base`, `delta` (ppl − ppl_base), `log_ratio` (log ppl/ppl_base),
    plus `baseline_run`, `baseline_config_id`. Over [0, n) (PPL@n) or the whole book when n is None;
    `reaching_only` keeps books with >= n tokens."""
    windows = _with_tokens(windows, books)
    level = KEYS + [BOOK]
    windows = windows.sort_values(level + ["start"])
    grid = (windows["start"].astype("int64").astype(str) + ":" + windows["scored_tokens"].astype("int64").astype(str))
    per_book = (windows.assign(_grid=grid).groupby(level, dropna=False)
                .agg(grid=("_grid", ",".join), book_tokens=("_book_tokens", "max")).reset_index())
    scored = windows if n is None else windows[windows["start"] < n]
    sums = (scored.groupby(level, dropna=False).agg(nll=("nll_sum", "sum"), tokens=("scored_tokens", "sum"))
            .reset_index())
    per_book = per_book.merge(sums, on=level, how="inner")
    if reaching_only and n is not None:
        per_book = per_book[per_book["book_tokens"] >= n]
    per_book = per_book[per_book["tokens"] > 0]
    is_base = per_book["method"] == baseline
    base, treated = per_book[is_base], per_book[~is_base]
    candidates = [other for _, other in base.groupby(["run", "config_id"], dropna=False, sort=True)]
    out = []
    for _, group in treated.groupby(KEYS, dropna=False, sort=True):
        best = None
        for other in candidates:
            paired = group.merge(other[[BOOK, "grid", "nll", "tokens", "run", "config_id"]],
                                 on=[BOOK, "grid"], suffixes=("", "_base"))
            rank = (len(paired), other["run"].iloc[0] == group["run"].iloc[0])
            if len(paired) and (best is None or rank > best[0]):
                best = (rank, paired)
        if best is None:
            if warn:
                warnings.warn(f"{group['method'].iloc[0]} in {group['run'].iloc[0]}: no {baseline!r} book with "
                              "the same id and window grid to compare against", stacklevel=2)
            continue
        out.append(best[1].rename(columns={"run_base": "baseline_run", "config_id_base": "baseline_config_id"}))
    columns = level + ["baseline_run", "baseline_config_id", "nll", "tokens", "nll_base", "tokens_base",
                       "ppl", "ppl_base", "delta", "log_ratio"]
    if not out:
        return pd.DataFrame(columns=columns)
    paired = pd.concat(out, ignore_index=True)
    paired["ppl"] = _exp_ratio(paired["nll"], paired["tokens"])
    paired["ppl_base"] = _exp_ratio(paired["nll_base"], paired["tokens_base"])
    paired["delta"] = paired["ppl"] - paired["ppl_base"]
    paired["log_ratio"] = np.log(paired["ppl"] / paired["ppl_base"])
    return paired[columns]


def delta_table(windows: pd.DataFrame, books: pd.DataFrame | None = None, *, baseline: str = "none",
                ns=(*PPL_AT, None), reaching_only: bool = False, n_boot: int = 2000, seed: int = 0,
                level: float = 0.95) -> pd.DataFrame:
    """Per non-baseline group and range (`n` = N for PPL@N, <NA> for the whole book; `range` its label
    "PPL@50K" / "book"): `books` paired,
    `ppl_base`, `ppl` (pooled over the paired books), `delta` with its bootstrap `ci_low`, `ci_high`,
    `mean_log_ratio` (mean per-book log(ppl/ppl_base)) and `improved` (share of books with delta < 0)."""
    rows = []
    for i, n in enumerate(ns):
        paired = book_deltas(windows, books, baseline=baseline, n=n, reaching_only=reaching_only, warn=i == 0)
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


def cost_table(books: pd.DataFrame, windows: pd.DataFrame | None = None, *, baseline: str = "none",
               by=None) -> pd.DataFrame:
    """The paper's Table 1 layout per group: `books`, `tokens` (scored), `trainable_params` (extra
    parameters; 0 for the frozen baseline), `gpu_seconds` (Σ book seconds; Σ window seconds when there
    are no book rows), `seconds_per_mtok` and `time_vs_none`: seconds per scored token over the
    baseline's (the baseline in the same run when there is one, else all baseline rows pooled), so
    the ratio is fair even when the groups' books differ."""
    source = books if books is not None and len(books) else windows
    if source is None:
        raise ValueError("cost_table needs book rows or window rows")
    source, by = _keys(source, by)
    if "trainable_params" not in source.columns:
        source = source.assign(trainable_params=np.nan)
    agg = (source.groupby(by, dropna=False)
           .agg(books=(BOOK, "nunique"), tokens=("scored_tokens", "sum"),
                trainable_params=("trainable_params", "max"), gpu_seconds=("seconds", "sum"))
           .reset_index())
    is_base = agg["method"] == baseline if "method" in by else pd.Series(False, index=agg.index)
    agg.loc[is_base, "trainable_params"] = agg.loc[is_base, "trainable_params"].fillna(0)
    agg["seconds_per_mtok"] = agg["gpu_seconds"] / agg["tokens"].where(agg["tokens"] > 0) * 1e6
    base = agg[is_base]
    pooled = base["gpu_seconds"].sum() / base["tokens"].sum() * 1e6 if len(base) and base["tokens"].sum() else np.nan

    def reference(row) -> float:
        if "run" in by:
            same = base[base["run"] == row["run"]]
            if len(same) and same["tokens"].sum():
                return same["gpu_seconds"].sum() / same["tokens"].sum() * 1e6
        return pooled

    agg["time_vs_none"] = agg["seconds_per_mtok"] / agg.apply(reference, axis=1) if len(agg) else []
    return agg


# --- LoCoMo --------------------------------------------------------------------------------------------


def locomo_long(qa: pd.DataFrame, by=None) -> pd.DataFrame:
    """Per group and category: `name`, `rule` ("official" / "report"), `f1` (mean × 100), `questions`.
    Category 5 appears under both rules: `f1` (the official abstention score) and
    `f1_adversarial_report` (the report's −F1 against the adversarial answer)."""
    qa, by = _keys(qa, by)
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


def locomo_table(qa: pd.DataFrame, by=None) -> pd.DataFrame:
    """One row per group: F1 × 100 per category (`multi-hop`, `temporal`, `open-domain`, `single-hop`,
    `adversarial` by the official rule, `adversarial (report)`) and `questions`."""
    qa, by = _keys(qa, by)
    long = locomo_long(qa, by)
    names = [*CATEGORIES.values(), ADVERSARIAL_REPORT]
    wide = long.pivot_table(index=by, columns="name", values="f1", dropna=False, aggfunc="first")
    wide = wide.reindex(columns=[c for c in names if c in wide.columns]).reset_index()
    wide.columns.name = None
    counts = qa.groupby(by, dropna=False).size().rename("questions").reset_index()
    return _groups(qa, by).merge(wide, on=by, how="left").merge(counts, on=by, how="left")


# --- MMLU ----------------------------------------------------------------------------------------------


def _accuracy(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group: `micro` (over questions) and `macro` (mean of subject accuracies), both × 100."""
    correct = rows.assign(_c=rows["correct"].astype(float))
    micro = correct.groupby(by, dropna=False)["_c"].agg(["mean", "size"]).rename(columns={"mean": "micro", "size": "n"})
    subjects = correct.groupby(by + ["subject"], dropna=False)["_c"].mean()
    macro = subjects.groupby(level=list(range(len(by))), dropna=False).mean().rename("macro")
    out = micro.join(macro).reset_index()
    out[["micro", "macro"]] *= 100
    return out


def mmlu_table(mmlu: pd.DataFrame, by=None) -> pd.DataFrame:
    """One row per group with adapted rows (every group when there are only base rows), all in %:
    `base_micro`, `base_macro`: the base model (variant `base`) of the same run, else of all runs, each
    question once; `memory_micro`, `memory_macro`, `dense_micro`, `dense_macro`: pooled over the books
    adapted on; `agreement`: share of (book, question) where memory and dense predict the same option;
    `books` adapted on and `questions` (distinct book × subject × question evaluated)."""
    mmlu, by = _keys(mmlu, by)
    base = mmlu[mmlu["variant"] == "base"]
    adapted = mmlu[mmlu["variant"] != "base"]
    table = _groups(adapted if len(adapted) else mmlu, by)
    run_level = [c for c in ("run",) if c in by]
    table = table.assign(base_micro=np.nan, base_macro=np.nan)
    if len(base):
        question = ["subject", "question_id"]
        pooled = _accuracy(base.drop_duplicates(question).assign(_all=0), ["_all"]).iloc[0]
        table["base_micro"], table["base_macro"] = pooled["micro"], pooled["macro"]
        if run_level:  # the base of the same run where it has one, else the base of all runs
            before = _accuracy(base.drop_duplicates(run_level + question), run_level).set_index("run")
            table["base_micro"] = table["run"].map(before["micro"]).fillna(table["base_micro"])
            table["base_macro"] = table["run"].map(before["macro"]).fillna(table["base_macro"])
    for variant in ("memory", "dense"):
        rows = adapted[adapted["variant"] == variant]
        acc = _accuracy(rows, by) if len(rows) else pd.DataFrame(columns=by + ["micro", "macro", "n"])
        acc = acc.rename(columns={"micro": f"{variant}_micro", "macro": f"{variant}_macro"}).drop(columns="n")
        table = table.merge(acc, on=by, how="left")
    question = [BOOK, "subject", "question_id"]
    both = adapted[adapted["variant"] == "memory"].merge(
        adapted[adapted["variant"] == "dense"][list(dict.fromkeys(KEYS + by)) + question + ["prediction"]],
        on=list(dict.fromkeys(KEYS + by)) + question, suffixes=("", "_dense"))
    agreement = (both.assign(_same=(both["prediction"] == both["prediction_dense"]).astype(float) * 100)
                 .groupby(by, dropna=False)["_same"].mean().rename("agreement").reset_index())
    table = table.merge(agreement, on=by, how="left") if len(agreement) else table.assign(agreement=np.nan)
    evaluated = (adapted if len(adapted) else mmlu).drop_duplicates(list(dict.fromkeys(KEYS + by)) + question)
    sizes = evaluated.groupby(by, dropna=False).agg(books=(BOOK, "nunique"), questions=("question_id", "size"))
    sizes = sizes.reset_index()
    return table.merge(sizes, on=by, how="left")


# --- sweeps --------------------------------------------------------------------------------------------


def sweep_config_columns(trials: pd.DataFrame) -> list[str]:
    """The config columns of a sweep's trials (everything but the keys, the results and `cfg_*`)."""
    skip = set(KEYS) | set(TRIAL_RESULTS) | {"trial_id", "error", "logdir"}
    return [c for c in trials.columns if c not in skip and not c.startswith("cfg_")]


def sweep_table(trials: pd.DataFrame, value: str = "ppl") -> pd.DataFrame:
    """The trials that produced `value`, best (lowest) first, with their `rank`."""
    done = trials.dropna(subset=[value]).sort_values(value, kind="stable").reset_index(drop=True)
    done.insert(0, "rank", range(1, len(done) + 1))
    return done
