"""The best setting per cost level of a finished sweep, written as a study that runs each on the test books
beside Locas and the frozen model, so a report's cost frontier compares Locas with a tuned baseline (issue 23).

    python orchestration/run_sweep.py --space orchestration/sweeps/lora.yaml ... --best_per steps_per_window
    python orchestration/run_study.py OUT/best_per_cost.yaml --num_gpus 8 --output ~/runs/lora-frontier

A cost level is one value of the `--best_per` settings (steps per window: each step is one more forward and
backward of the window). Its best setting is its completed trial of lowest validation PPL; the test runs are
whole books (the sweep's truncation is not carried over), as `best_command` prints.
"""
from __future__ import annotations

import shlex
from dataclasses import fields
from pathlib import Path

from locas.config import AdaptConfig, ModelSpec
from locas.errors import LocasError
from orchestration.sweep.space import SWEEPABLE, _param

STUDY_FILE = "best_per_cost.yaml"


def cost_levels(text: str | None) -> tuple[str, ...]:
    """The settings named by `--best_per` (sweepable ones, aliases taken), checked before the sweep runs."""
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    levels = tuple(dict.fromkeys(_param(name, "--best_per") for name in names))
    if text is not None and not levels:
        raise LocasError(f"--best_per names the settings that set a cost level, e.g. steps_per_window; "
                         f"sweepable: {', '.join(SWEEPABLE)}")
    return levels


def best_per_level(table, levels: tuple[str, ...], configs: dict[str, AdaptConfig]) -> list[AdaptConfig]:
    """Per value of `levels` (in the order of the levels' values), the completed trial of `configs` with the
    lowest PPL. `table` is the sweep's trial table (`trial_table`)."""
    done = table[(table["status"] == "completed") & table["ppl"].notna() & table["trial"].isin(list(configs))]
    done = done.astype({"ppl": float}).sort_values("ppl", kind="stable")
    best = done.groupby(list(levels), sort=True, dropna=False).head(1).sort_values(list(levels), kind="stable")
    return [configs[trial] for trial in best["trial"]]


def _flags(settings, skip: tuple[str, ...] = ()) -> dict:
    """A config as a study run's flags: the fields off their default, as `to_flags` gives them."""
    return {f.name: getattr(settings, f.name) for f in fields(settings)
            if f.name not in skip and getattr(settings, f.name) != f.default}


def frontier_study(best: list[AdaptConfig], levels: tuple[str, ...], spec: ModelSpec, test_data: str) -> dict:
    """The study: one test run per cost level's best setting, Locas at its defaults and the frozen model, all on
    the windows the sweep used."""
    if not best:
        raise LocasError("no trial completed every book: there is no best setting to run on the test books")
    window = {"window_size": best[0].window_size, "overlap": best[0].overlap}
    runs = {}
    for cfg in best:
        name = "-".join([cfg.method, *(f"{level}-{getattr(cfg, level)}" for level in levels)])
        runs[name.replace("_", "-")] = {"task": "pg19", **_flags(cfg, skip=("max_tokens",))}
    runs["locas"] = {"task": "pg19", **_flags(AdaptConfig(method="locas", **window))}
    runs["frozen"] = {"task": "pg19", **_flags(AdaptConfig(method="none", **window))}
    for run in runs.values():
        run.update({"data": test_data, "split": "test"})
    description = (f"The best setting per {', '.join(levels)} of a sweep on the validation books, on the test "
                   "books, beside Locas at its defaults and the frozen model (orchestration/sweep/frontier.py).")
    return {"description": description, "defaults": _flags(spec, skip=("device",)), "runs": runs}


def write_frontier(folder, table, levels, configs, spec: ModelSpec, test_data: str, num_gpus: int = 0):
    """Write `folder/best_per_cost.yaml`; returns (its path, the command that runs it)."""
    import yaml

    study = frontier_study(best_per_level(table, levels, configs), levels, spec, test_data)
    path = Path(folder) / STUDY_FILE
    path.write_text(yaml.safe_dump(study, sort_keys=False, width=110))
    command = ["python", "orchestration/run_study.py", str(path), "--num_gpus", str(num_gpus),
               "--output", str(Path(folder).with_name(Path(folder).name + "-frontier"))]
    return path, " ".join(shlex.quote(part) for part in command)
