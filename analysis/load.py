"""Read run stores (docs/design.md) into tidy pandas DataFrames.

A run folder holds `manifest.json`, `rows.jsonl`, `ledger.jsonl` (and `summary.json`; a sweep adds
`trials.csv`). Only the rows of ledgered units are kept: for a unit whose ledger line says it wrote n
rows, the *last* n rows with its `unit_id` are its rows, so the partial rows of an earlier, unledgered
attempt at the same unit are dropped. A torn last line (in rows or ledger) is skipped silently; an
unreadable line elsewhere is skipped with a warning.

    from analysis.load import load_runs
    runs = load_runs("runs/pg19-none,runs/pg19-locas")   # or one folder, a list, or a parent folder
    runs.windows, runs.books, runs.qa, runs.mmlu, runs.errors, runs.trials

Every frame is keyed by `run` (the folder's name), `method` and `config_id`, and carries the run's
manifest config flattened into `cfg_*` columns. pandas only: no torch, no ray.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

KEYS = ["run", "method", "config_id"]

# kind -> the frame it goes to and the columns it always has (beyond the keys), in design.md order.
KINDS = {
    "window": ("windows", ["book_id", "window", "start", "scored_tokens", "nll_sum", "train_loss", "seconds"]),
    "book": ("books", ["book_id", "title", "tokens", "scored_tokens", "nll_sum", "ppl", "seconds",
                       "trainable_params", "error"]),
    "qa": ("qa", ["conversation_id", "question_id", "category", "question", "gold", "prediction", "f1",
                  "f1_adversarial_report", "seconds"]),
    "mmlu": ("mmlu", ["book_id", "variant", "subject", "question_id", "answer", "prediction", "correct"]),
    "error": ("errors", ["task", "unit_id", "error", "attempts"]),
}
FRAMES = [frame for frame, _ in KINDS.values()]
TRIAL_RESULTS = ["ppl", "books_done", "seconds", "status", "loads"]


@dataclass
class Runs:
    """The tidy frames of one or many runs; `manifests` and `summaries` are keyed by run name."""

    windows: pd.DataFrame
    books: pd.DataFrame
    qa: pd.DataFrame
    mmlu: pd.DataFrame
    errors: pd.DataFrame
    trials: pd.DataFrame
    manifests: dict = field(default_factory=dict)
    summaries: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.paths)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of `path`, skipping a torn last line (and warning about bad lines elsewhere)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                warnings.warn(f"{path}:{number}: unreadable line skipped", stacklevel=2)
    return records


def ledgered_rows(rows: list[dict], ledger: list[dict]) -> list[dict]:
    """The rows of finished units: per ledgered unit, its last `rows` rows (all of them when unset)."""
    counts = {}
    for entry in ledger:  # the last ledger line of a unit wins
        if "unit_id" in entry:
            counts[entry["unit_id"]] = entry.get("rows")
    kept: dict[str, deque] = defaultdict(deque)
    for index, row in enumerate(rows):
        unit = row.get("unit_id")
        if unit in counts:
            n = counts[unit]
            kept[unit].append(index)
            if n is not None and len(kept[unit]) > n:
                kept[unit].popleft()
    for unit, n in counts.items():
        if n is not None and len(kept.get(unit, ())) < n:
            warnings.warn(f"unit {unit}: ledger says {n} rows, the rows file has {len(kept.get(unit, ()))}",
                          stacklevel=2)
    return [rows[index] for index in sorted(i for indices in kept.values() for i in indices)]


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
    if frame["config_id"].isna().all() and manifest.get("config_id"):
        frame["config_id"] = manifest["config_id"]
    for key, value in flatten_config(manifest.get("config", {})).items():
        if key not in frame.columns:
            frame[key] = value
    first = KEYS + [c for c in columns if c not in KEYS]
    return frame[first + [c for c in frame.columns if c not in first]]


def read_trials(folder: Path, run: str, manifest: dict) -> pd.DataFrame:
    """`trials.csv` of a sweep (config columns, ppl, books_done, seconds, status, loads), or an empty frame.

    Ray Tune's `config/` prefix is dropped from column names."""
    path = folder / "trials.csv"
    if not path.exists():
        return pd.DataFrame(columns=KEYS + TRIAL_RESULTS)
    trials = pd.read_csv(path)
    trials.columns = [c[len("config/"):] if c.startswith("config/") else c for c in trials.columns]
    if "method" not in trials.columns:
        trials["method"] = (manifest.get("config") or {}).get("method")
    if "config_id" not in trials.columns:
        trials["config_id"] = None
    for column in TRIAL_RESULTS:
        if column not in trials.columns:
            trials[column] = None
    trials.insert(0, "run", run)
    for key, value in flatten_config(manifest.get("config", {})).items():
        if key not in trials.columns:
            trials[key] = value
    return trials[KEYS + [c for c in trials.columns if c not in KEYS]]


def load_run(folder: str | Path, name: str | None = None) -> Runs:
    """One run folder as a `Runs` of tidy frames."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist: pass the folder a run wrote (OUT)")
    run = name or folder.name
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    rows = ledgered_rows(read_jsonl(folder / "rows.jsonl"), read_jsonl(folder / "ledger.jsonl"))
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_kind[row.get("kind")].append(row)
    frames = {frame: _frame(by_kind.get(kind, []), columns, run, manifest) for kind, (frame, columns) in KINDS.items()}
    return Runs(**frames, trials=read_trials(folder, run, manifest), manifests={run: manifest},
                summaries={run: summary}, paths={run: folder})


def _folders(spec: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(spec, (str, Path)):
        spec = [part.strip() for part in str(spec).split(",") if part.strip()]
    folders = []
    for item in spec:
        folder = Path(item).expanduser()
        is_run = any((folder / name).exists() for name in ("manifest.json", "rows.jsonl", "trials.csv"))
        children = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() and not is_run else []
        runs = [c for c in children if (c / "manifest.json").exists() or (c / "trials.csv").exists()]
        folders.extend(runs or [folder])
    return folders


def load_runs(spec: str | Path | Iterable[str | Path]) -> Runs:
    """Many runs: a folder, a comma-separated list of folders, a list, or a parent folder of runs.

    Run names are the folder names (with the parent's name prepended when two folders share a name)."""
    folders = _folders(spec)
    if not folders:
        raise FileNotFoundError(f"no run folder in {spec!r}")
    names = [f.name for f in folders]
    names = [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]
    loaded = [load_run(folder, name) for folder, name in zip(folders, names)]

    def concat(attr: str) -> pd.DataFrame:
        frames = [getattr(r, attr) for r in loaded]
        nonempty = [f for f in frames if len(f)]
        return pd.concat(nonempty, ignore_index=True) if nonempty else frames[0]

    merged = {attr: concat(attr) for attr in FRAMES + ["trials"]}
    return Runs(**merged, manifests={k: v for r in loaded for k, v in r.manifests.items()},
                summaries={k: v for r in loaded for k, v in r.summaries.items()},
                paths={k: v for r in loaded for k, v in r.paths.items()})
