"""The run folder's format and its one reader: standard library only, the contract's side of the stack, used
by the run store (to resume) and by `analysis.load` (to read results), so both trust exactly the same rows
(docs/design.md).

```
OUT/manifest.json   the run's config, ids, versions, resources (JSON object)
OUT/rows.jsonl      append-only, one JSON row per line
OUT/ledger.jsonl    one line {"unit_id", "status": "done"|"failed", "rows": n} per finished unit, after its rows
OUT/summary.json    the run's headline figures
OUT/tracebacks/     one file per failed unit: its full traceback
OUT/trials.csv      a sweep's trials, best first
```
- A unit is finished when its ledger line exists. Its rows are the last `n` rows carrying its `unit_id` (n
  from the ledger): the partial rows of an earlier attempt cut short between its rows and its ledger line
  are dropped, and a rerun of the unit never counts twice.
- A torn last line (a crash mid-write) is skipped. Any other line that is not a JSON object is refused:
  the folder is damaged or not a run store. JSON only: nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from locas.contract import STATUSES

MANIFEST, ROWS, LEDGER, SUMMARY = "manifest.json", "rows.jsonl", "ledger.jsonl", "summary.json"
TRACEBACKS, TRIALS = "tracebacks", "trials.csv"


class StoreError(ValueError):
    """A run folder that cannot be read as one: the message names the file and what to do."""


def parse_line(raw: bytes) -> dict | None:
    """The JSON object on one line, or None when the line is not one (strict JSON: no NaN)."""
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _no_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def read_jsonl(path: Path) -> Iterator[dict]:
    """The JSON objects of a .jsonl file; a torn last line is skipped, any other bad line refused."""
    if not path.exists():
        return
    lines = path.read_bytes().split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline; else an unterminated (torn) line
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        obj = parse_line(raw)
        if obj is None:
            raise StoreError(f"{path} line {number} is not a JSON object: the file is corrupt or not a run store "
                             "written by this code; move it away and rerun")
        yield obj
    if torn.strip():
        obj = parse_line(torn)
        if obj is not None:  # a complete line that only lacks its newline
            yield obj


def read_json(path: Path) -> dict | None:
    """A JSON object file of the run folder (manifest, summary), or None when there is none."""
    if not path.exists():
        return None
    obj = parse_line(path.read_bytes().replace(b"\n", b" "))
    if obj is None:
        raise StoreError(f"{path} is not valid JSON object text; it is not a run store written by this code")
    return obj


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of the run folder at `path`, or None when there is none."""
    return read_json(Path(path) / MANIFEST)


def read_ledger(path: str | os.PathLike) -> dict[str, dict]:
    """unit_id → its ledger entry {"unit_id", "status", "rows"} (the last entry of a unit wins)."""
    ledger = {}
    for entry in read_jsonl(Path(path) / LEDGER):
        uid, status, n = entry.get("unit_id"), entry.get("status"), entry.get("rows")
        if not isinstance(uid, str) or status not in STATUSES or not isinstance(n, int) or n < 0:
            raise StoreError(f"{Path(path) / LEDGER} has a malformed entry {entry!r}; it is not a run store "
                             "written by this code")
        ledger[uid] = entry
    return ledger


def iter_rows(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of ledgered units, in file order: for each unit, the last `n` rows with its unit_id."""
    path = Path(path)
    ledger = read_ledger(path)
    if not ledger:
        return
    counts: dict[str, int] = {}
    for row in read_jsonl(path / ROWS):
        uid = row.get("unit_id")
        if uid in ledger:
            counts[uid] = counts.get(uid, 0) + 1
    for uid, entry in ledger.items():
        if counts.get(uid, 0) < entry["rows"]:
            raise StoreError(f"{path / LEDGER}: unit {uid} has {entry['rows']} rows in the ledger but "
                             f"{counts.get(uid, 0)} in {ROWS}; the run folder is damaged")
    seen: dict[str, int] = {}
    for row in read_jsonl(path / ROWS):
        uid = row.get("unit_id")
        if uid not in ledger:
            continue
        i = seen.get(uid, 0)
        seen[uid] = i + 1
        if i >= counts[uid] - ledger[uid]["rows"]:
            yield row


def read_rows(path: str | os.PathLike) -> list[dict]:
    """All trusted rows of the run folder at `path` (see iter_rows); [] when there is none."""
    return list(iter_rows(path))
