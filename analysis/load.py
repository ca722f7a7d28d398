"""Read run folders (docs/design.md) into tidy pandas DataFrames.

    from analysis.load import load_runs
    runs = load_runs("runs/pg19-none,runs/pg19-locas")   # or one folder, a list, or a parent folder
    runs                                                   # a short summary: runs, rows, errors
    runs.windows, runs.books, runs.conversations, runs.qa, runs.mmlu, runs.errors, runs.trials   # by row kind

Only the rows of ledgered units are read, by the same reader the run store resumes with
(`locas.run_folder`). Every frame is keyed by `run` (the folder's name), `method` and `config_id`, and
carries the run's manifest config flattened into `cfg_*` columns. The frames are the registered tasks' row
kinds (`locas.tasks`); a row of a kind no task registers goes to `other`, with a warning. pandas and the
light parts of the library (`locas.contract`, `locas.run_folder`, the task registry) only: no torch, no ray.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import pandas as pd

from locas.contract import ERROR, ERROR_FIELDS, KEYS
from locas.run_folder import MANIFEST, ROWS, SUMMARY, TRIALS, iter_rows, read_json, read_manifest
from locas.tasks import row_kinds

TRIAL_RESULTS = ["ppl", "books_done", "seconds", "status", "loads"]
OTHER = "other"
ELSEWHERE = {"trial": TRIALS}
"""Row kinds whose table is a file of the run folder of its own (a sweep's `trial` rows: its trials.csv)."""


def kinds() -> dict[str, tuple[str, list[str]]]:
    """kind → the frame it goes to and the columns it always has (beyond the keys): every registered task's
    row kinds (`locas.tasks`, each task's rows.py) and the error rows every task may write."""
    return {**row_kinds(), ERROR: ("errors", ERROR_FIELDS)}


class Runs:
    """The tidy frames of one or many runs, by name (`runs.books`, `runs.qa`: one per row kind of the
    registered tasks, `errors`, `other` for rows of a kind no task registers, `trials`); `manifests` and
    `summaries` are keyed by run name."""

    def __init__(self, frames: dict, trials: pd.DataFrame, manifests=None, summaries=None, paths=None):
        self.frames, self.trials = dict(frames), trials
        self.manifests, self.summaries, self.paths = manifests or {}, summaries or {}, paths or {}

    def __getattr__(self, name: str) -> pd.DataFrame:
        frames = self.__dict__.get("frames", {})
        if name in frames:
            return frames[name]
        raise AttributeError(f"no frame {name!r} in these runs; frames: {', '.join(frames)}, trials")

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def __repr__(self) -> str:
        lines = [f"Runs: {len(self.paths)} run(s)"]
        frames = {**self.frames, "trials": self.trials}
        for name, path in self.paths.items():
            manifest = self.manifests.get(name) or {}
            counts = {frame: int((rows["run"] == name).sum()) for frame, rows in frames.items()}
            shown = ", ".join(f"{n} {frame}" for frame, n in counts.items() if n) or "no rows"
            lines.append(f"  {name}: {manifest.get('task', '?')} ({path}): {shown}")
        return "\n".join(lines)


def flatten_config(config: dict) -> dict:
    """The manifest config as flat `cfg_*` columns (nested keys joined by `_`; lists kept as text)."""
    flat = pd.json_normalize(config or {}, sep="_").to_dict("records")
    out = {}
    for key, value in (flat[0] if flat else {}).items():
        out[f"cfg_{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return out


def _frame(records: list[dict], columns: list[str], run: str, manifest: dict) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records)
    for column in ["method", "config_id", *columns]:
        if column not in frame.columns:
            frame[column] = None
    frame.insert(0, "run", run)
    settings = flatten_config(manifest.get("config", {}))
    frame = frame.assign(**{k: v for k, v in settings.items() if k not in frame.columns})
    first = KEYS + [c for c in columns if c not in KEYS]
    return frame[first + [c for c in frame.columns if c not in first]]


def read_trials(folder: Path, run: str, manifest: dict) -> pd.DataFrame:
    """`trials.csv` of a sweep (config columns, ppl, books_done, seconds, status, loads), or an empty frame."""
    path = folder / TRIALS
    if not path.exists():
        return pd.DataFrame(columns=KEYS + TRIAL_RESULTS)
    trials = pd.read_csv(path)
    for column in ("method", "config_id", *TRIAL_RESULTS):
        if column not in trials.columns:
            trials[column] = None
    trials.insert(0, "run", run)
    settings = flatten_config(manifest.get("config", {}))
    trials = trials.assign(**{k: v for k, v in settings.items() if k not in trials.columns})
    return trials[KEYS + [c for c in trials.columns if c not in KEYS]]


def load_run(folder: str | Path, name: str | None = None) -> Runs:
    """One run folder as a `Runs` of tidy frames."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist: pass the folder a run wrote (its --output)")
    run = name or folder.name
    manifest = read_manifest(folder) or {}
    summary = read_json(folder / SUMMARY) or {}
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for row in iter_rows(folder):
        by_kind[row.get("kind")].append(row)
    known = kinds()
    frames = {frame: _frame(by_kind.pop(kind, []), columns, run, manifest) for kind, (frame, columns) in known.items()}
    for kind in ELSEWHERE:
        by_kind.pop(kind, None)
    if by_kind:
        warnings.warn(f"{folder}: rows of kind(s) {', '.join(map(str, by_kind))} that no registered task knows "
                      f"(locas.tasks): they are in `{OTHER}`", stacklevel=2)
    frames[OTHER] = _frame([r for rows in by_kind.values() for r in rows], ["kind"], run, manifest)
    return Runs(frames, read_trials(folder, run, manifest), manifests={run: manifest}, summaries={run: summary},
                paths={run: folder})


def _is_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (MANIFEST, ROWS, TRIALS))


def _folders(spec: str | Path | Iterable[str | Path], base: Path) -> list[Path]:
    if isinstance(spec, (str, Path)):
        spec = [part.strip() for part in str(spec).split(",") if part.strip()]
    folders = []
    for item in spec:
        folder = base / Path(item).expanduser()
        children = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() and not _is_run(folder) else []
        folders.extend([c for c in children if _is_run(c)] or [folder])
    return folders


def load_runs(spec: str | Path | Iterable[str | Path], base: str | Path | None = None,
              names: list[str] | None = None) -> Runs:
    """Many runs: a folder, a comma-separated list of folders, a list, or a parent folder of runs (a study's
    folder). Relative paths resolve against `base` (default: the current folder).

    Run names are `names` (one per folder) or the folder names (with the parent's name prepended when two
    folders share a name)."""
    folders = _folders(spec, Path(base) if base is not None else Path.cwd())
    if not folders:
        raise FileNotFoundError(f"no run folder in {spec!r}")
    if names is None:
        names = [f.name for f in folders]
        names = [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]
    if len(names) != len(folders):
        raise ValueError(f"{len(names)} names for {len(folders)} run folders")
    loaded = [load_run(folder, name) for folder, name in zip(folders, names)]

    def concat(attr: str) -> pd.DataFrame:
        frames = [getattr(r, attr) for r in loaded]
        nonempty = [f for f in frames if len(f)]
        return pd.concat(nonempty, ignore_index=True) if nonempty else frames[0]

    merged = {frame: concat(frame) for frame in loaded[0].frames}
    return Runs(merged, concat("trials"), manifests={k: v for r in loaded for k, v in r.manifests.items()},
                summaries={k: v for r in loaded for k, v in r.summaries.items()},
                paths={k: v for r in loaded for k, v in r.paths.items()})


def launch_folder() -> Path:
    """The folder the user launched from: a Jupyter kernel runs in the notebook's folder but inherits the
    launching shell's `PWD`, so `LOCAS_RUN=runs/x jupyter lab analysis/notebooks/pg19.ipynb` finds runs/x."""
    return Path(os.environ.get("PWD") or os.getcwd())
