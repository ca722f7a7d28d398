"""The rules that turn rows into figures, in one place (docs/protocols.md): the run summaries
(`summary.json`), the notebooks and any pandas session all call these. pandas and numpy only.

Every function takes what `analysis.load.load_runs` returns (`tables.pg19_table(runs)`) or the frames
themselves. Groups are `by = ["run", "method", "config_id"]` unless told otherwise.

PG-19. A window row scores positions [start, start + scored_tokens) and keeps its NLL sum split at every
multiple of 50,000 inside them (`cuts`), so every figure below counts exactly the tokens it names:
- PPL@N = exp(Σ NLL / Σ scored tokens) over the scored tokens among each book's first N tokens, pooled
  over the books (token-weighted). `ppl@N` pools every book (a shorter book gives all its tokens);
  `ppl@N_reaching` only the books with at least N tokens (`reach@N` of them): every position up to N then
  counts the same books. The paper-style headline is `ppl@N_reaching`. `mean_book_ppl@N` is the plain mean
  of those books' own PPL@N.
- bucket@N: pooled PPL over the positions [N − 50K, N): how well the model does at that depth.
- templora_ppl: Σ scored_i · exp(nll_i / scored_i) / Σ scored_i over whole windows (those whose first scored
  token is before N, for @N): the token-weighted mean of per-window perplexities that TempLoRA-style tables
  report. It is always at least the pooled PPL (Jensen): compare it only with tables that use it.
- A book that stopped with an error is left out of every pooled figure and delta, and counted (`stopped`).
  A window without an NLL in a book that did not stop makes its book count as stopped too, with a warning.
- Comparisons (deltas, relative cost) pair runs on the same model, dtype, data, split, max_tokens and
  windows only; per book they also need the identical window grid.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from analysis.load import KEYS, TRIAL_RESULTS, Runs

PPL_AT = (50_000, 100_000, 150_000, 200_000)
BUCKET_WIDTH = 50_000
BOOK = "book_id"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
ADVERSARIAL_REPORT = "adversarial (report)"
SETTINGS = ["cfg_model_model", "cfg_model_dtype", "cfg_options_data", "cfg_options_split", "cfg_adapt_max_tokens",
            "cfg_adapt_window_size", "cfg_adapt_overlap"]
"""What two runs must share to be compared (the manifest's config, flattened by analysis.load)."""


def _pg19(data, books: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(windows, books) of a `Runs`, or the frames given."""
    return (data.windows, data.books) if isinstance(data, Runs) else (data, books)


def _keys(frame: pd.DataFrame, by=None) -> tuple[pd.DataFrame, list[str]]:
    """The frame with every key column present (missing ones as None), and the grouping columns."""
    by = list(KEYS if by is None else [by] if isinstance(by, str) else by)
    missing = [k for k in dict.fromkeys(KEYS + by) if k not in frame.columns]
    if missing:
        frame = frame.assign(**{k: None for k in missing})
    return frame, by


def _grouped(frame: pd.DataFrame, by: list[str]):
    """groupby that also works for no grouping at all (one group of everything)."""
    return frame.assign(_all=0).groupby(by or ["_all"], dropna=False)


def _exp_ratio(nll, tokens):
    return np.exp(nll / tokens.where(tokens > 0))


def pooled_ppl(nll_sum: float, scored_tokens: float) -> float:
    """exp(Σ NLL / Σ scored tokens); NaN when nothing is scored."""
    return math.exp(nll_sum / scored_tokens) if scored_tokens else math.nan


# --- PG-19: which rows count -------------------------------------------------------------------------------


def stopped_books(windows: pd.DataFrame | None, books: pd.DataFrame | None) -> pd.DataFrame:
    """The books left out of every figure (KEYS + book_id): those whose book row has an `error`, and those
    with a window that has no NLL (with a warning: the run folder is damaged)."""
    level = KEYS + [BOOK]
    stopped = []
    if books is not None and len(books) and "error" in books.columns:
        books, _ = _keys(books)
        stopped.append(books[books["error"].notna()][level])
    if windows is not None and len(windows):
        windows, _ = _keys(windows)
        missing = windows[windows["nll_sum"].isna()][level].drop_duplicates()
        if len(missing):
            named = ", ".join(f"{r.run}/{r.book_id}" for r in missing.head(3).itertuples())
            warnings.warn(f"{len(missing)} book(s) have windows without an NLL ({named}...): they are left out "
                          "of every pooled figure like books that stopped", stacklevel=3)
            stopped.append(missing)
    return pd.concat(stopped, ignore_index=True).drop_duplicates() if stopped else pd.DataFrame(columns=level)


def _without(frame: pd.DataFrame, stopped: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` whose book is not among `stopped`."""
    if not len(stopped):
        return frame
    marked = frame.merge(stopped.assign(_stopped=True), on=KEYS + [BOOK], how="left")
    return frame[marked["_stopped"].isna().to_numpy()]


def completed(windows: pd.DataFrame, books: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the windows of the books that ran to the end, the books that stopped: see stopped_books)."""
    windows, _ = _keys(windows)
    stopped = stopped_books(windows, books)
    return _without(windows, stopped), stopped


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
    merged = ends.merge(stated, on=level, how="left", suffixes=("_windows", ""))
    merged["tokens"] = merged["tokens"].fillna(merged["tokens_windows"])
    return merged[level + ["tokens"]]


def segments(windows: pd.DataFrame) -> pd.DataFrame:
    """The windows split at their `cuts`: rows with `start`, `scored_tokens`, `nll_sum` (and every other
    column of their window), none of which straddles a cut position."""
    has_cuts = windows["cuts"].map(lambda c: isinstance(c, list) and len(c) > 0) if "cuts" in windows else None
    if has_cuts is None or not has_cuts.any():
        return windows
    pieces = []
    for _, window in windows[has_cuts].iterrows():
        bounds = [window["start"]] + [c[0] for c in window["cuts"]] + [window["start"] + window["scored_tokens"]]
        nll = [0.0] + [c[1] for c in window["cuts"]] + [window["nll_sum"]]
        for lo, hi, before, after in zip(bounds, bounds[1:], nll, nll[1:]):
            pieces.append({**window.to_dict(), "start": lo, "scored_tokens": hi - lo, "nll_sum": after - before})
    return pd.concat([windows[~has_cuts], pd.DataFrame(pieces)], ignore_index=True)


def _before(parts: pd.DataFrame, n: int) -> pd.DataFrame:
    """The segments among the first n tokens; refuses a segment that straddles n (no cut there)."""
    straddles = (parts["start"] < n) & (parts["start"] + parts["scored_tokens"] > n)
    if straddles.any():
        raise ValueError(f"PPL@{n} is not exact: {int(straddles.sum())} window(s) straddle position {n} without a "
                         f"cut there; N must be a multiple of {BUCKET_WIDTH:,} (rows keep their NLL split there)")
    return parts[parts["start"] < n]


def _pooled(parts: pd.DataFrame, by: list[str], name: str) -> pd.DataFrame:
    """Per group: pooled PPL `name` and `books` (how many books it pools)."""
    agg = _grouped(parts, by).agg(nll=("nll_sum", "sum"), tokens=("scored_tokens", "sum"), books=(BOOK, "nunique"))
    agg[name] = _exp_ratio(agg["nll"], agg["tokens"])
    return agg[[name, "books"]].reset_index().drop(columns="_all", errors="ignore")


def _templora(windows: pd.DataFrame, by: list[str], name: str) -> pd.DataFrame:
    """Per group: Σ scored · exp(nll / scored) / Σ scored over whole windows."""
    scored = windows["scored_tokens"]
    weighted = windows.assign(_w=scored * _exp_ratio(windows["nll_sum"], scored))
    agg = _grouped(weighted, by).agg(w=("_w", "sum"), tokens=("scored_tokens", "sum"))
    agg[name] = agg["w"] / agg["tokens"].where(agg["tokens"] > 0)
    return agg[[name]].reset_index().drop(columns="_all", errors="ignore")


def _merge(table: pd.DataFrame, part: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    if not by:
        return pd.concat([table.reset_index(drop=True), part.reset_index(drop=True)], axis=1)
    return table.merge(part, on=by, how="left")


# --- PG-19: tables ----------------------------------------------------------------------------------------


def pg19_table(data, books: pd.DataFrame | None = None, *, ns=PPL_AT, width: int = BUCKET_WIDTH,
               by=None) -> pd.DataFrame:
    """One row per group (see the module's rules). Per N: `ppl@N`, `ppl@N_reaching`, `reach@N`,
    `mean_book_ppl@N`, `bucket@N` with `bucket_books@N`, `templora_ppl@N`; then the whole book: `ppl`,
    `templora_ppl`, `books` (completed), `tokens` (scored) and `stopped` (books left out)."""
    windows, books = _pg19(data, books)
    windows, by = _keys(windows, by)
    kept, stopped = completed(windows, books)
    tokens = book_tokens(kept, books).rename(columns={"tokens": "_book_tokens"})
    kept = kept.merge(tokens, on=KEYS + [BOOK], how="left")
    parts = segments(kept)
    table = _pooled(parts, by, "ppl")
    table = _merge(table, _grouped(parts, by)["scored_tokens"].sum().rename("tokens").reset_index()
                   .drop(columns="_all", errors="ignore"), by)
    table = _merge(table, _templora(kept, by, "templora_ppl"), by)
    stopped = stopped.merge(windows[list(dict.fromkeys(KEYS + [BOOK] + by))].drop_duplicates(), on=KEYS + [BOOK])
    counts = _grouped(stopped, by)[BOOK].nunique().rename("stopped").reset_index().drop(columns="_all", errors="ignore")
    table = _merge(table, counts, by) if len(counts) else table.assign(stopped=0)
    table["stopped"] = table["stopped"].fillna(0).astype(int)
    for n in ns:
        first = _before(parts, n)
        table = _merge(table, _pooled(first, by, f"ppl@{n}").drop(columns="books"), by)
        reaching = first[first["_book_tokens"] >= n]
        table = _merge(table, _pooled(reaching, by, f"ppl@{n}_reaching").rename(columns={"books": f"reach@{n}"}), by)
        per_book = _pooled(reaching, list(dict.fromkeys(by + [BOOK])), "_p")
        mean = (_grouped(per_book, by)["_p"].mean().rename(f"mean_book_ppl@{n}").reset_index()
                .drop(columns="_all", errors="ignore"))
        table = _merge(table, mean, by)
        bucket = first[first["start"] >= max(0, n - width)]
        table = _merge(table, _pooled(bucket, by, f"bucket@{n}").rename(columns={"books": f"bucket_books@{n}"}), by)
        table = _merge(table, _templora(kept[kept["start"] < n], by, f"templora_ppl@{n}"), by)
        for column in (f"reach@{n}", f"bucket_books@{n}"):
            table[column] = table[column].fillna(0).astype(int)
    return table


def pg19_summary(data, books: pd.DataFrame | None = None, *, ns=PPL_AT) -> dict:
    """The headline figures of a run (its `summary.json`): every completed book pooled, per N the four
    PPL@N figures (pooled over all books, over the books reaching N, their count, the per-book mean)."""
    windows, books = _pg19(data, books)
    row = pg19_table(windows, books, ns=ns, by=[]).iloc[0] if len(windows) else {}
    keys = ["books", "stopped", "tokens", "ppl", "templora_ppl"]
    keys += [f"{name}@{n}{tail}" for n in ns for name, tail in
             (("ppl", ""), ("ppl", "_reaching"), ("reach", ""), ("mean_book_ppl", ""))]
    counts = {"books", "stopped", "tokens", *(f"reach@{n}" for n in ns)}
    summary = {key: _number(row.get(key), whole=key in counts) for key in keys}
    if isinstance(data, Runs):
        summary["errors"] = len(data.errors)
    return summary


def _number(value, whole: bool = False):
    """A JSON-able number (an int where `whole`, or where it is one already); NaN and missing become None."""
    if value is None or pd.isna(value):
        return None
    return float(value) if isinstance(value, (float, np.floating)) and not whole else int(value)


def pg19_view(table: pd.DataFrame, what: str = "ppl", *, ns=PPL_AT, by=None) -> pd.DataFrame:
    """A readable slice of `pg19_table`: `what` in {"ppl", "ppl_reaching", "mean_book_ppl", "bucket",
    "templora_ppl"}, columns "50K"... (plus "book" for the whole book where it applies) and the matching
    book counts "n@50K"..."""
    by = [c for c in (KEYS if by is None else by) if c in table.columns]
    columns = {"ppl": ("ppl@{}", "books"), "ppl_reaching": ("ppl@{}_reaching", "reach@{}"),
               "mean_book_ppl": ("mean_book_ppl@{}", "reach@{}"), "bucket": ("bucket@{}", "bucket_books@{}"),
               "templora_ppl": ("templora_ppl@{}", "books")}
    value, count = columns[what]
    out = table[by].copy()
    for n in ns:
        out[f"{n // 1000}K"] = table[value.format(n)]
    if what in ("ppl", "templora_ppl"):
        out["book"] = table[what]
    for n in ns:
        out[f"n@{n // 1000}K"] = table[count.format(n)]
    return out


def book_ppl(data, books: pd.DataFrame | None = None, *, ns=PPL_AT, width: int = BUCKET_WIDTH) -> pd.DataFrame:
    """Per completed book (run, method, config_id, book_id): `tokens`, per N `ppl@N`, `bucket@N`,
    `templora_ppl@N`, `reaches@N`, and the whole book's `ppl` and `templora_ppl`."""
    windows, books = _pg19(data, books)
    level = KEYS + [BOOK]
    table = pg19_table(windows, books, ns=ns, width=width, by=level)
    table = table.drop(columns="tokens").merge(book_tokens(windows, books), on=level, how="left")
    keep = level + ["tokens"]
    for n in ns:
        table[f"reaches@{n}"] = table["tokens"] >= n
        keep += [f"ppl@{n}", f"bucket@{n}", f"templora_ppl@{n}", f"reaches@{n}"]
    return table[keep + ["ppl", "templora_ppl"]]


# --- comparisons ------------------------------------------------------------------------------------------


def _settings(frame: pd.DataFrame) -> pd.DataFrame:
    """The comparability settings of each row (missing ones as None), as one text key `_setting`."""
    present = [c for c in SETTINGS if c in frame.columns]
    key = frame[present].map(str).agg("|".join, axis=1) if present else pd.Series("", index=frame.index)
    return frame.assign(_setting=key)


def _baselines(treated: pd.DataFrame, base: pd.DataFrame, baseline_run: str | None, what: str, warn: bool):
    """For each treated group, its comparable baseline group (same settings; in `baseline_run` when named):
    the one sharing most books, then the one in the same run, then the first by name. Warns once for groups
    with none, and once when a group had several to choose from and none was named."""
    candidates = {key: group for key, group in base.groupby(["run", "config_id", "_setting"], dropna=False, sort=True)}
    if baseline_run is not None:
        candidates = {k: g for k, g in candidates.items() if k[0] == baseline_run}
    chosen, lonely, ambiguous = {}, [], []
    for key, group in treated.groupby(KEYS, dropna=False, sort=True):
        setting = group["_setting"].iloc[0]
        options = [(-len(set(group[BOOK]) & set(g[BOOK])), k[0] != key[0], k) for k, g in candidates.items()
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
    windows, books = _pg19(data, books)
    kept, _ = completed(windows, books)
    kept = _settings(kept).merge(book_tokens(kept, books).rename(columns={"tokens": "_book_tokens"}),
                                 on=KEYS + [BOOK], how="left")
    level = KEYS + [BOOK]
    kept = kept.sort_values(level + ["start"])
    grid = kept["start"].astype("int64").astype(str) + ":" + kept["scored_tokens"].astype("int64").astype(str)
    per_book = (kept.assign(_grid=grid).groupby(level, dropna=False)
                .agg(grid=("_grid", ",".join), book_tokens=("_book_tokens", "max"), _setting=("_setting", "first"))
                .reset_index())
    parts = segments(kept) if n is None else _before(segments(kept), n)
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
    paired["ppl"] = _exp_ratio(paired["nll"], paired["tokens"])
    paired["ppl_base"] = _exp_ratio(paired["nll_base"], paired["tokens_base"])
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
    books, _ = _keys(books)
    books = _settings(_without(books, stopped_books(windows, books)))
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


# --- LoCoMo --------------------------------------------------------------------------------------------


def locomo_long(data, by=None) -> pd.DataFrame:
    """Per group and category: `name`, `rule` ("official" / "report"), `f1` (mean × 100), `questions`.
    Category 5 appears under both rules: `f1` (the official abstention score: 1 when the answer abstains)
    and `f1_adversarial_report` (the report's −F1 against the adversarial answer)."""
    qa = data.qa if isinstance(data, Runs) else data
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


def locomo_table(data, by=None) -> pd.DataFrame:
    """One row per group: F1 × 100 per category (`multi-hop`, `temporal`, `open-domain`, `single-hop`,
    `adversarial` by the official rule, `adversarial (report)`) and `questions`."""
    qa = data.qa if isinstance(data, Runs) else data
    qa, by = _keys(qa, by)
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
        summary[key] = _number(row.get(name)) if len(qa) else None
    return summary


# --- MMLU ----------------------------------------------------------------------------------------------


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
    mmlu, by = _keys(mmlu, by)
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
        table = _merge(table, acc, by) if by or len(acc) else table.assign(**{f"{variant}_micro": np.nan,
                                                                               f"{variant}_macro": np.nan})
    keys = list(dict.fromkeys(KEYS + by))
    item = [BOOK, "subject", "question_id"]
    both = adapted[adapted["variant"] == "memory"].merge(
        adapted[adapted["variant"] == "dense"][keys + item + ["prediction"]], on=keys + item, suffixes=("", "_dense"))
    same = both.assign(_same=(both["prediction"] == both["prediction_dense"]).astype(float) * 100)
    agreement = _grouped(same, by)["_same"].mean().rename("agreement").reset_index().drop(columns="_all", errors="ignore")
    table = _merge(table, agreement, by) if len(both) else table.assign(agreement=np.nan)
    sizes = (_grouped(source.drop_duplicates(keys + item), by).agg(books=(BOOK, "nunique"), questions=("question_id", "size"))
             .reset_index().drop(columns="_all", errors="ignore"))
    return _merge(table, sizes, by)


def mmlu_summary(data) -> dict:
    """An MMLU run's headline figures: errors; base, memory and dense micro/macro accuracy (%); agreement."""
    runs = data if isinstance(data, Runs) else None
    mmlu = runs.mmlu if runs is not None else data
    row = mmlu_table(mmlu, by=[]).iloc[0] if len(mmlu) else {}
    summary = {"questions": int(mmlu["question_id"].nunique()) if len(mmlu) else 0,
               "errors": len(runs.errors) if runs is not None else None}
    for key in ("base_micro", "base_macro", "memory_micro", "memory_macro", "dense_micro", "dense_macro", "agreement"):
        summary[key] = _number(row.get(key)) if len(mmlu) else None
    return summary


# --- sweeps --------------------------------------------------------------------------------------------


def sweep_config_columns(trials: pd.DataFrame) -> list[str]:
    """The config columns of a sweep's trials (everything but the keys, the results and `cfg_*`)."""
    skip = set(KEYS) | set(TRIAL_RESULTS) | {"trial", "books_total", "worker_pid", "node", "error"}
    return [c for c in trials.columns if c not in skip and not c.startswith("cfg_")]


def sweep_table(data, value: str = "ppl") -> pd.DataFrame:
    """The trials that finished every book (status `completed`), best (lowest `value`) first, with `rank`;
    trials that ASHA stopped early or that failed are left out."""
    trials = data.trials if isinstance(data, Runs) else data
    done = trials[(trials["status"] == "completed") & trials[value].notna()] if "status" in trials else trials
    done = done.sort_values(value, kind="stable").reset_index(drop=True)
    done.insert(0, "rank", range(1, len(done) + 1))
    return done


def best_trial(data, value: str = "ppl") -> dict | None:
    """The completed trial with the lowest finite `value`, or None."""
    ranked = sweep_table(data, value)
    ranked = ranked[np.isfinite(ranked[value].astype(float))]
    return None if not len(ranked) else ranked.iloc[0].drop(labels="rank").to_dict()
