"""A sweep's trials table, `OUT/trials.csv`, and its one writer: the Tune driver (from the store's `trial`
rows) and a study's sweep (from its trials' run folders) both write it here, in one order, atomically."""
from __future__ import annotations

import os
from pathlib import Path

from locas.config import AdaptConfig
from locas.run_folder import TRIALS
from orchestration.sweep.space import SWEEPABLE

TRIALS_CSV = TRIALS
TABLE_COLUMNS = ["trial", "method", *[name for name in SWEEPABLE if name != "method"], "ppl", "books_done",
                 "books_total", "seconds", "status", "worker_pid", "loads", "node", "error"]
STATUSES = ("completed", "stopped", "error")  # ran every book / stopped early by ASHA / failed


def config_columns(cfg: AdaptConfig) -> dict:
    """The table's config columns, with the method's effective lr and steps."""
    values = {name: getattr(cfg, name) for name in SWEEPABLE}
    return {**values, "lr": cfg.learning_rate, "steps_per_window": cfg.steps}


def trial_table(rows: list[dict]):
    """The trials as a frame in TABLE_COLUMNS order: completed first (best PPL first), then stopped, then
    failed."""
    import pandas as pd

    if not rows:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    df = pd.DataFrame([{c: r.get(c) for c in TABLE_COLUMNS} for r in rows])
    order = df["status"].map({s: i for i, s in enumerate(STATUSES)})
    df = df.assign(_o=order).sort_values(["_o", "ppl"], na_position="last", kind="stable").drop(columns="_o")
    return df.reset_index(drop=True)


def write_trials_csv(folder: Path, rows: list[dict]) -> Path:
    """Rewrite `folder`/trials.csv atomically from the trials' rows."""
    path = Path(folder) / TRIALS_CSV
    tmp = path.with_name(path.name + ".tmp")
    trial_table(rows).to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path
