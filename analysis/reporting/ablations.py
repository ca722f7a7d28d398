"""Ablations in the report: each sweep trial is a PG-19 run (its folder OUT/<sweep>/<config_id>/), reported
by the PG-19 tables' rules and names against the study's frozen baseline; a sweep with no trial folders
(a Tune sweep's trials.csv alone) is shown as what it is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import tables
from analysis.load import KEYS, TRIALS, Runs, load_runs
from analysis.reporting.common import LEVEL, with_notes
from analysis.reporting.pg19 import pg19_cost, pg19_differences, pg19_results
from locas.run_folder import LEDGER

RESULT = ["books", "stopped", "failed", "200K", "n@200K", "PPL (whole books)"]


def trial_folders(runs: Runs) -> dict[str, Path]:
    """Run name `<sweep>/<trial folder>` -> the folder, for every sweep of the study with trial folders."""
    found = {}
    for name, path in runs.paths.items():
        if (Path(path) / TRIALS).exists():
            for child in sorted(p for p in Path(path).iterdir() if (p / LEDGER).exists()):
                found[f"{name}/{child.name}"] = child
    return found


def ablation_runs(runs: Runs) -> Runs | None:
    """The sweeps' trial runs and the study's frozen PG-19 runs (their baseline), as one `Runs`."""
    trials = trial_folders(runs)
    if not trials:
        return None
    frozen = sorted(set(runs.books[runs.books["method"] == "none"]["run"])) if len(runs.books) else []
    named = {**trials, **{name: runs.paths[name] for name in frozen}}
    return load_runs(list(named.values()), names=list(named))


def _varied(runs: Runs) -> pd.DataFrame:
    """Per trial run: `setting`, the values its sweep varies ("memory_width=16")."""
    rows = []
    for sweep in [n for n, p in runs.paths.items() if (Path(p) / TRIALS).exists()]:
        trials = runs.trials[runs.trials["run"] == sweep]
        varied = [c for c in tables.sweep_config_columns(trials) if trials[c].nunique() > 1]
        for _, trial in trials.iterrows():
            rows.append({"run": f"{sweep}/{trial['trial']}",
                         "setting": ", ".join(f"{c}={trial[c]}" for c in varied) or "the sweep's only trial"})
    return pd.DataFrame(rows, columns=["run", "setting"])


def ablations(runs: Runs) -> pd.DataFrame:
    """Per sweep trial, by the PG-19 tables' rules: its setting, books finished, stopped and failed, PPL@200K
    over the books reaching it, the whole books' PPL, the whole-book difference from the study's frozen
    baseline on the books both finished (with its interval and n) and GPU-seconds per 1K tokens."""
    both = ablation_runs(runs)
    if both is None:
        return _trials_as_they_are(runs)
    trials = set(trial_folders(runs))
    results = pg19_results(both)
    results = results[results["run"].isin(trials)]
    deltas = pg19_differences(both)
    compared = KEYS + ["baseline", "n (books)", "left out (whole run)", "delta", LEVEL]
    whole = (deltas[deltas["range"] == "book"][compared] if len(deltas) else pd.DataFrame(columns=compared))
    whole = whole.rename(columns={"delta": "Δ PPL (whole books)"})
    cost = pg19_cost(both)[KEYS + ["s/1K tokens"]] if len(both.books) else pd.DataFrame(columns=KEYS)
    shown = [c for c in ["model", "window", "width", "batch", *RESULT] if c in results.columns]
    out = results[KEYS + shown].merge(_varied(runs), on="run", how="left")
    out = out.merge(whole, on=KEYS, how="left").merge(cost, on=KEYS, how="left")
    out = out[["run", "method", "setting", *[c for c in out.columns if c not in ("run", "method", "setting",
                                                                                   "config_id")]]]
    lonely = out["baseline"].isna()
    out["baseline"] = out["baseline"].fillna("none comparable")
    out[LEVEL] = out[LEVEL].where(~lonely, "missing: no baseline")
    notes = [n for n in deltas.attrs.get("notes", []) if n.split(" ")[0] in trials] if len(deltas) else []
    if lonely.any():
        notes.append(f"{int(lonely.sum())} trial(s) have no frozen run of the study with the same model, dtype, data, "
                     "split, max_tokens and windows to compare with: no difference is given for them.")
    return with_notes(out.rename(columns={"200K": "PPL@200K", "n@200K": "n@200K (books)"}), notes)


def _trials_as_they_are(runs: Runs) -> pd.DataFrame:
    """A sweep known only by its trials.csv: its ranked completed trials, said plainly."""
    if not len(runs.trials):
        return pd.DataFrame()
    ranked = tables.sweep_table(runs)
    varied = [c for c in tables.sweep_config_columns(runs.trials) if runs.trials[c].nunique() > 1]
    out = ranked[["run", "rank", *varied, "ppl", "books_done", "seconds"]].rename(columns={
        "ppl": "trial PPL (whole books pooled, no baseline)", "seconds": "trial seconds (as trials.csv records)"})
    return with_notes(out, ["These sweeps left no trial folders (trials.csv only): their PPL is each trial's whole "
                            "books pooled, without a baseline, interval or failure counts; their seconds are what "
                            "the sweep recorded (a Tune trial's wall clock), not GPU-seconds per token."])
