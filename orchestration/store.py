"""The run store: one folder per run, written by the driver alone, read by anyone (`locas.run_folder` reads).

The format and the reading rules are in `locas/run_folder.py` (docs/design.md). Writing:
- A unit's rows are appended (flushed and fsynced), then its ledger line.
- A torn last line (a crash mid-write) is cut off when the store is reopened for writing, so the next
  append starts on a fresh line.
- JSON only, never pickle. Rows must be JSON-able: plain numbers, strings, booleans, None, lists and
  dicts (numpy/torch scalars are converted with `.item()`). Non-finite floats (NaN, ±inf) are written as
  `null`: strict JSON has no NaN, and pandas reads null back as NaN. Anything else is refused with a
  LocasError.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from locas.contract import DONE, FAILED, STATUSES
from locas.errors import LocasError
from locas.run_folder import (
    LEDGER,
    MANIFEST,
    ROWS,
    SUMMARY,
    TRACEBACKS,
    iter_rows,
    parse_line,
    read_ledger,
    read_manifest,
)

PACKAGES = ("torch", "transformers", "peft", "ray", "datasets", "pandas", "locas")


# --------------------------------------------------------------------------- JSON in and out

def to_json_value(value: Any, where: str = "value") -> Any:
    """A JSON-safe copy of `value`: non-finite floats → None, tuples → lists, scalars with .item() unwrapped."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise LocasError(f"{where} has a key {k!r} of type {type(k).__name__}; JSON keys must be strings")
            out[k] = to_json_value(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return to_json_value(item(), where)
    raise LocasError(f"{where} is a {type(value).__name__}, which is not JSON; "
                     "return plain numbers, strings, booleans, None, lists or dicts")


def dumps_line(obj: Any, where: str = "row") -> bytes:
    """One strict-JSON line (no NaN), newline-terminated, UTF-8."""
    return (json.dumps(to_json_value(obj, where), allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")


def _cut_torn_tail(path: Path) -> None:
    """End the file on a newline so the next append starts on a line of its own.

    An unterminated last line is cut off, unless it is a whole JSON object missing only its newline (readers
    already trust that one, see locas.run_folder.read_jsonl), which gets its newline.
    """
    if not path.exists():
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # walk back to the last newline (files are small; read in chunks from the end)
        pos, chunk = size, 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            block = f.read(pos - start)
            i = block.rfind(b"\n")
            if i >= 0:
                cut = start + i + 1
                break
            pos = start
        else:
            cut = 0
        f.seek(cut)
        if parse_line(f.read()) is not None:
            f.write(b"\n")  # a whole line that only lacks its newline: readers trust it, so keep it
        else:
            f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())


def _write_json_atomic(path: Path, obj: Any, where: str) -> None:
    text = json.dumps(to_json_value(obj, where), allow_nan=False, indent=2, ensure_ascii=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`--flag: old -> new` for every setting that differs between two run configs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# --------------------------------------------------------------------------- provenance

def code_version() -> str:
    """`<git commit>` (+ "-dirty" when tracked files changed) of this checkout, else `locas <version>`."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        if sha:
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"locas {importlib.metadata.version('locas')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the store

class RunStore:
    """A run's output folder. Only the driver writes (open, append, write_summary); anyone may read."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._finished: set[str] | None = None
        self.manifest: dict | None = None

    @property
    def rows_path(self) -> Path:
        return self.path / ROWS

    @property
    def ledger_path(self) -> Path:
        return self.path / LEDGER

    def open(self, task: str, config: dict, run_id: str, resources: dict | None = None,
             retry_failed: bool = False) -> "RunStore":
        """Create the store, or resume it when it holds the same task and run_id; refuse anything else.
        With `retry_failed`, units ledgered as failed count as unfinished: a rerun runs them again (their new
        rows and ledger line supersede the old)."""
        old = self.refuse_other(task, config, run_id)
        if old is not None:
            _cut_torn_tail(self.rows_path)
            _cut_torn_tail(self.ledger_path)
            old.setdefault("resumes", []).append(
                {"time": _now(), "code_version": code_version(), "resources": resources or {}})
            self.manifest = old
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.manifest = {
                "task": task,
                "config": config,
                "run_id": run_id,
                "code_version": code_version(),
                "packages": package_versions(),
                "resources": resources or {},
                "created": _now(),
                "resumes": [],
            }
        _write_json_atomic(self.path / MANIFEST, self.manifest, "config")
        self._finished = {uid for uid, entry in read_ledger(self.path).items()
                          if not (retry_failed and entry["status"] == FAILED)}
        return self

    def refuse_other(self, task: str, config: dict, run_id: str) -> dict | None:
        """The folder's manifest when it holds this run (None: a new one), or the LocasError of a folder that
        holds something else; reads only, so a run checks its folder before it starts Ray."""
        if self.path.exists() and not self.path.is_dir():
            raise LocasError(f"output {self.path} is a file, not a folder; choose another --output")
        old = read_manifest(self.path)
        if old is None and (self.rows_path.exists() or self.ledger_path.exists()):
            raise LocasError(f"{self.path} holds rows but no {MANIFEST}; it is not a run store this code can "
                             "resume: choose another --output or move it away")
        if old is not None and (old.get("run_id") != run_id or old.get("task") != task):
            changed = "; ".join(_differences({**(old.get("config") or {}), "task": old.get("task")},
                                             {**config, "task": task})) or f"run id {old.get('run_id')}"
            raise LocasError(f"{self.path} holds another run ({changed}): use another --output folder (or "
                             "delete that one) to start a new run")
        return old

    def finished(self) -> set[str]:
        """Unit ids a rerun skips: those with a ledger line (but the failed ones, with retry_failed)."""
        if self._finished is None:
            raise RuntimeError("RunStore.open(...) must be called before finished")
        return set(self._finished)

    def append(self, unit_id: str, rows: list[dict], status: str = DONE) -> None:
        """Append a finished unit: its rows (flushed and fsynced), then its ledger line."""
        if self.manifest is None:
            raise RuntimeError("RunStore.open(...) must be called before append")
        if status not in STATUSES:
            raise LocasError(f"status must be one of {STATUSES}, not {status!r}")
        if unit_id in self._finished:
            raise LocasError(f"unit {unit_id} is already in the ledger of {self.path}; it must not run twice")
        lines = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise LocasError(f"unit {unit_id}: row {i} is a {type(row).__name__}, not a dict")
            if row.get("unit_id", unit_id) != unit_id:
                raise LocasError(f"unit {unit_id}: row {i} carries unit_id {row['unit_id']!r}")
            if row.get("traceback"):
                row = {**row, "traceback": self._keep_traceback(unit_id, row["traceback"])}
            lines.append(dumps_line({**row, "unit_id": unit_id}, f"unit {unit_id} row {i}"))
        if lines:
            _append(self.rows_path, b"".join(lines))
        _append(self.ledger_path, dumps_line({"unit_id": unit_id, "status": status, "rows": len(lines)}))
        self._finished.add(unit_id)

    def _keep_traceback(self, unit_id: str, text: str) -> str:
        """Write a failed unit's full traceback to OUT/tracebacks/ (its error row keeps one line and this
        file's path, relative to OUT)."""
        name = Path(TRACEBACKS) / ("".join(c if c.isalnum() or c in "-_." else "_" for c in unit_id) + ".txt")
        (self.path / TRACEBACKS).mkdir(exist_ok=True)
        (self.path / name).write_text(str(text), encoding="utf-8")
        return str(name)

    def rows(self) -> Iterator[dict]:
        """Rows of ledgered units only (torn last lines and rows of unledgered units dropped)."""
        return iter_rows(self.path)

    def update_manifest(self, **fields) -> None:
        """Add run-level facts learnt while running (e.g. the workers' nodes and devices) to the manifest."""
        if self.manifest is None:
            raise RuntimeError("RunStore.open(...) must be called before update_manifest")
        self.manifest.update(fields)
        _write_json_atomic(self.path / MANIFEST, self.manifest, "manifest")

    def write_summary(self, summary: dict) -> Path:
        """Write summary.json atomically (non-finite floats become null)."""
        path = self.path / SUMMARY
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(path, summary, "summary")
        return path
