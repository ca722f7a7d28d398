"""PG-19's figures: which books count, their exact segments, PPL@N, buckets, the TempLoRA-style mean."""

from __future__ import annotations

import warnings

import pandas as pd

from analysis.frames import (
    BOOK,
    BUCKET_WIDTH,
    PPL_AT,
    exp_ratio,
    grouped,
    merge,
    number,
    pg19_frames,
    width_summary,
    with_keys,
)
from analysis.load import KEYS, Runs

__all__ = ["book_ppl", "book_tokens", "completed", "pg19_summary", "pg19_table", "pg19_view", "segments",
           "stopped_books"]  # what analysis.tables shows of them

# --- PG-19: which rows count -------------------------------------------------------------------------------


def stopped_books(windows: pd.DataFrame | None, books: pd.DataFrame | None) -> pd.DataFrame:
    """The books left out of every figure (KEYS + book_id): those whose book row has an `error`, and those
    with a window that has no NLL (with a warning: the run folder is damaged)."""
    level = KEYS + [BOOK]
    stopped = []
    if books is not None and len(books) and "error" in books.columns:
        books, _ = with_keys(books)
        stopped.append(books[books["error"].notna()][level])
    if windows is not None and len(windows):
        windows, _ = with_keys(windows)
        missing = windows[windows["nll_sum"].isna()][level].drop_duplicates()
        if len(missing):
            named = ", ".join(f"{r.run}/{r.book_id}" for r in missing.head(3).itertuples())
            warnings.warn(f"{len(missing)} book(s) have windows without an NLL ({named}...): they are left out "
                          "of every pooled figure like books that stopped", stacklevel=3)
            stopped.append(missing)
    return pd.concat(stopped, ignore_index=True).drop_duplicates() if stopped else pd.DataFrame(columns=level)


def without_books(frame: pd.DataFrame, stopped: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` whose book is not among `stopped`."""
    if not len(stopped):
        return frame
    marked = frame.merge(stopped.assign(_stopped=True), on=KEYS + [BOOK], how="left")
    return frame[marked["_stopped"].isna().to_numpy()]


def completed(windows: pd.DataFrame, books: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the windows of the books that ran to the end, the books that stopped: see stopped_books)."""
    windows, _ = with_keys(windows)
    stopped = stopped_books(windows, books)
    return without_books(windows, stopped), stopped


def book_tokens(windows: pd.DataFrame, books: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (run, method, config_id, book_id): `tokens`, the book row's when there is one, else the end of
    its last window (start + scored_tokens: every token but the first is scored)."""
    windows, _ = with_keys(windows)
    level = KEYS + [BOOK]
    ends = (windows.assign(end=windows["start"] + windows["scored_tokens"])
            .groupby(level, dropna=False)["end"].max().rename("tokens").reset_index())
    if books is None or not len(books) or "tokens" not in books.columns:
        return ends
    books, _ = with_keys(books)
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


def first_tokens(parts: pd.DataFrame, n: int) -> pd.DataFrame:
    """The segments among the first n tokens; refuses a segment that straddles n (no cut there)."""
    straddles = (parts["start"] < n) & (parts["start"] + parts["scored_tokens"] > n)
    if straddles.any():
        raise ValueError(f"PPL@{n} is not exact: {int(straddles.sum())} window(s) straddle position {n} without a "
                         f"cut there; N must be a multiple of {BUCKET_WIDTH:,} (rows keep their NLL split there)")
    return parts[parts["start"] < n]


def _pooled(parts: pd.DataFrame, by: list[str], name: str) -> pd.DataFrame:
    """Per group: pooled PPL `name` and `books` (how many books it pools)."""
    agg = grouped(parts, by).agg(nll=("nll_sum", "sum"), tokens=("scored_tokens", "sum"), books=(BOOK, "nunique"))
    agg[name] = exp_ratio(agg["nll"], agg["tokens"])
    return agg[[name, "books"]].reset_index().drop(columns="_all", errors="ignore")


def _templora(windows: pd.DataFrame, by: list[str], name: str) -> pd.DataFrame:
    """Per group: Σ scored · exp(nll / scored) / Σ scored over whole windows."""
    scored = windows["scored_tokens"]
    weighted = windows.assign(_w=scored * exp_ratio(windows["nll_sum"], scored))
    agg = grouped(weighted, by).agg(w=("_w", "sum"), tokens=("scored_tokens", "sum"))
    agg[name] = agg["w"] / agg["tokens"].where(agg["tokens"] > 0)
    return agg[[name]].reset_index().drop(columns="_all", errors="ignore")


def pg19_table(data, books: pd.DataFrame | None = None, *, ns=PPL_AT, width: int = BUCKET_WIDTH,
               by=None) -> pd.DataFrame:
    """One row per group (see the module's rules). Per N: `ppl@N`, `ppl@N_reaching`, `reach@N`,
    `mean_book_ppl@N`, `bucket@N` with `bucket_books@N`, `templora_ppl@N`; then the whole book: `ppl`,
    `templora_ppl`, `books` (completed), `tokens` (scored) and `stopped` (books left out)."""
    windows, books = pg19_frames(data, books)
    windows, by = with_keys(windows, by)
    kept, stopped = completed(windows, books)
    tokens = book_tokens(kept, books).rename(columns={"tokens": "_book_tokens"})
    kept = kept.merge(tokens, on=KEYS + [BOOK], how="left")
    parts = segments(kept)
    table = _pooled(parts, by, "ppl")
    table = merge(table, grouped(parts, by)["scored_tokens"].sum().rename("tokens").reset_index()
                   .drop(columns="_all", errors="ignore"), by)
    table = merge(table, _templora(kept, by, "templora_ppl"), by)
    stopped = stopped.merge(windows[list(dict.fromkeys(KEYS + [BOOK] + by))].drop_duplicates(), on=KEYS + [BOOK])
    counts = grouped(stopped, by)[BOOK].nunique().rename("stopped").reset_index().drop(columns="_all", errors="ignore")
    table = merge(table, counts, by) if len(counts) else table.assign(stopped=0)
    table["stopped"] = table["stopped"].fillna(0).astype(int)
    for n in ns:
        first = first_tokens(parts, n)
        table = merge(table, _pooled(first, by, f"ppl@{n}").drop(columns="books"), by)
        reaching = first[first["_book_tokens"] >= n]
        table = merge(table, _pooled(reaching, by, f"ppl@{n}_reaching").rename(columns={"books": f"reach@{n}"}), by)
        per_book = _pooled(reaching, list(dict.fromkeys(by + [BOOK])), "_p")
        mean = (grouped(per_book, by)["_p"].mean().rename(f"mean_book_ppl@{n}").reset_index()
                .drop(columns="_all", errors="ignore"))
        table = merge(table, mean, by)
        bucket = first[first["start"] >= max(0, n - width)]
        table = merge(table, _pooled(bucket, by, f"bucket@{n}").rename(columns={"books": f"bucket_books@{n}"}), by)
        table = merge(table, _templora(kept[kept["start"] < n], by, f"templora_ppl@{n}"), by)
        for column in (f"reach@{n}", f"bucket_books@{n}"):
            table[column] = table[column].fillna(0).astype(int)
    return table


def pg19_summary(data, books: pd.DataFrame | None = None, *, ns=PPL_AT) -> dict:
    """The headline figures of a run (its `summary.json`): every completed book pooled, per N the four
    PPL@N figures (pooled over all books, over the books reaching N, their count, the per-book mean)."""
    windows, books = pg19_frames(data, books)
    row = pg19_table(windows, books, ns=ns, by=[]).iloc[0] if len(windows) else {}
    keys = ["books", "stopped", "tokens", "ppl", "templora_ppl"]
    keys += [f"{name}@{n}{tail}" for n in ns for name, tail in
             (("ppl", ""), ("ppl", "_reaching"), ("reach", ""), ("mean_book_ppl", ""))]
    counts = {"books", "stopped", "tokens", *(f"reach@{n}" for n in ns)}
    summary = {key: number(row.get(key), whole=key in counts) for key in keys}
    if isinstance(data, Runs):
        summary["errors"] = len(data.errors)
    return {**summary, **width_summary(books)}


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
    windows, books = pg19_frames(data, books)
    level = KEYS + [BOOK]
    table = pg19_table(windows, books, ns=ns, width=width, by=level)
    table = table.drop(columns="tokens").merge(book_tokens(windows, books), on=level, how="left")
    keep = level + ["tokens"]
    for n in ns:
        table[f"reaches@{n}"] = table["tokens"] >= n
        keep += [f"ppl@{n}", f"bucket@{n}", f"templora_ppl@{n}", f"reaches@{n}"]
    return table[keep + ["ppl", "templora_ppl"]]



def book_table(runs) -> pd.DataFrame:
    """What a PG-19 run prints when it ends: one row per book."""
    return runs.books[["book_id", "method", "tokens", "ppl", "seconds", "trainable_params", "error"]]
