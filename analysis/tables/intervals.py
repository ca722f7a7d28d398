"""Intervals: percentile bootstraps that resample the units the figures cluster in (books, conversations,
questions), and the smallest number of them an interval is given for (docs/protocols.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.frames import exp_ratio

MIN_UNITS = 5
"""Below this many resampled units (books, conversations, questions) no interval is given: a percentile
bootstrap over 2-4 units says little more than the units themselves."""


def too_few(n: int, unit: str, min_units: int = MIN_UNITS) -> str | None:
    """Why an interval over `n` units is not given (None when it is)."""
    return f"no interval: n = {n} {unit}, fewer than {min_units}" if n < min_units else None


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_bootstrap(nll: np.ndarray, tokens: np.ndarray, nll_base: np.ndarray, tokens_base: np.ndarray,
                     *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                     min_units: int = MIN_UNITS) -> tuple[float, float, float]:
    """(Δ, low, high): Δ = pooled PPL − pooled baseline PPL over the books given (one entry per book),
    and its percentile interval from `n_boot` resamples of the books (the same draw for both sides); no
    interval (NaN) under `min_units` books."""
    nll, tokens, nll_base, tokens_base = (np.asarray(a, dtype=float) for a in (nll, tokens, nll_base, tokens_base))
    n = len(nll)
    point = exp_ratio(nll.sum(), tokens.sum()) - exp_ratio(nll_base.sum(), tokens_base.sum())
    if n < max(2, min_units):
        return float(point), float("nan"), float("nan")
    counts = _resampled(n, n_boot, seed)
    deltas = exp_ratio(counts @ nll, counts @ tokens) - exp_ratio(counts @ nll_base, counts @ tokens_base)
    return (float(point), *_percentiles(deltas, level))


def _resampled(n: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each of `n` units is drawn in each of `n_boot` resamples with replacement: (n_boot, n)."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def pooled_band(nll, tokens, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile band of the pooled PPL over the books given (one entry per book), resampled with replacement."""
    nll, tokens = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    counts = _resampled(len(nll), n_boot, seed)
    return _percentiles(exp_ratio(counts @ nll, counts @ tokens), level)


def cluster_mean_bootstrap(values, clusters, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                           min_units: int = MIN_UNITS) -> tuple[float, float, float, int]:
    """(mean, low, high, clusters) of per-item values whose items cluster (questions in a conversation, one
    question's answers after every book): each resample draws whole clusters with replacement and takes the
    mean over all their items. No interval (NaN) under `min_units` clusters."""
    frame = pd.DataFrame({"v": np.asarray(values, dtype=float), "c": np.asarray(clusters)})
    if not len(frame):
        return float("nan"), float("nan"), float("nan"), 0
    sums = frame.groupby("c", sort=True)["v"].agg(["sum", "size"])
    n = len(sums)
    mean = float(frame["v"].mean())
    if n < max(2, min_units):
        return mean, float("nan"), float("nan"), n
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    draws = counts @ sums["sum"].to_numpy() / (counts @ sums["size"].to_numpy())
    return (mean, *_percentiles(draws, level), n)


def paired_mean_bootstrap(differences, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                          min_units: int = MIN_UNITS) -> tuple[float, float, float]:
    """(mean, low, high) of per-item differences, each item resampled on its own (items that do not
    cluster)."""
    values = np.asarray(differences, dtype=float)
    mean, low, high, _ = cluster_mean_bootstrap(values, np.arange(len(values)), n_boot=n_boot, seed=seed,
                                                level=level, min_units=min_units)
    return mean, low, high
