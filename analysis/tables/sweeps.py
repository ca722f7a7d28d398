"""A sweep's trials: the config columns, the ranking of completed trials, the best one."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.load import KEYS, TRIAL_RESULTS, Runs


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
