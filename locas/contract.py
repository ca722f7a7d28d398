"""The contract every layer shares, at the bottom of the stack (standard library only): what names a unit and
its rows, how ids are hashed, the ledger's statuses and when a unit failed, the PPL rule and the depth buckets.

The writer (`orchestration`), the readers (`analysis`), sweeps and studies import these; nothing restates
them (docs/design.md). The run folder's format is its sibling, `locas.run_folder`.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from locas.errors import LocasError, one_line

# --- ids ------------------------------------------------------------------------------------------------


def content_id(obj) -> str:
    """The one hash of a config (a setting's `config_id`, a run's `run_id`, a sweep folder's id): the first
    12 hex digits of the SHA-256 of its canonical JSON (sorted keys; what JSON cannot hold as its text)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def unit_id(task: str, item_id: str, run_id: str) -> str:
    """One item of work in one run: the ledger's key, what makes resume exact."""
    return f"{task}:{item_id}:{run_id}"


def trial_unit_id(config_id: str) -> str:
    """A sweep's unit: one setting (every dev book of its trial), in the sweep's run folder."""
    return unit_id("sweep", "pg19", config_id)


# --- units and the fields every row carries -------------------------------------------------------------

UNIT_KEYS = ("unit_id", "task", "config_id", "method")
"""What every row of a unit carries to name it (stamped by the worker)."""
WHERE = ("node", "device")
"""Where a unit ran (stamped by the worker; None when no worker answered)."""
KEYS = ["run", "method", "config_id"]
"""What keys every frame and table of the results (`run`: the run folder's name)."""


@dataclass(frozen=True)
class Unit:
    """One item of work under one run's config: `payload` is what the task's runner needs (the item itself, the
    adaptation config as a dict, the task options), so workers need no data path. `size` orders units (longest
    first); `config_id` and `method` name the setting in the results."""

    unit_id: str
    task: str
    item_id: str
    size: int
    payload: dict = field(default_factory=dict)
    config_id: str | None = None
    method: str | None = None
    run_id: str | None = None  # the run whose folder its rows go to
    spec: object = None  # the locas.config.ModelSpec it needs (None: the worker's own)
    steps: int = 1  # estimated window steps, for batch sizing (orchestration.policy)
    batch: int = 1  # at most this many units of its batch key adapted at once

    def __post_init__(self):
        if not isinstance(self.unit_id, str) or not self.unit_id:
            raise LocasError(f"a unit needs a non-empty string unit_id, got {self.unit_id!r}")
        if not isinstance(self.size, int) or self.size < 0:
            raise LocasError(f"unit {self.unit_id}: size must be a non-negative int, got {self.size!r}")

    @property
    def batch_key(self) -> tuple:
        """Units that may share a batch: the same model, task and adaptation config."""
        return self.spec, self.task, self.config_id


def row_keys(unit: Unit) -> dict:
    """What every row of a unit carries to name it, and `batch_size`: the batch it ran in (at most this many
    units adapted at once per actor; costs are compared only at equal batch sizes, docs/protocols.md)."""
    return {**{key: getattr(unit, key) for key in UNIT_KEYS}, "batch_size": unit.batch}


# --- the error row and the failed-unit rule -------------------------------------------------------------

ERROR = "error"
ERROR_FIELDS = ["task", "unit_id", "error", "attempts", "traceback"]


def error_row(error: BaseException | str, **keys) -> dict:
    """The row a failed item (a book, a question, a whole unit) leaves in the results: kind "error", the keys
    that name the item, and the failure in one line."""
    return {"kind": ERROR, **keys, "error": one_line(error)}


def unit_error_rows(unit: Unit, error: BaseException | str, attempts: int, where: dict,
                    traceback: str | None = None) -> list[dict]:
    """A whole unit that failed, as its one row: its keys, its attempts, where it ran (`where`: node and
    device, None where no worker answered) and, from a worker, the full traceback (the store keeps it in a
    file, the row its path)."""
    extra = {} if traceback is None else {"traceback": traceback}
    return [{**error_row(error, item_id=unit.item_id), "attempts": attempts, **extra, **row_keys(unit),
             **{key: where.get(key) for key in WHERE}}]


DONE, FAILED = "done", "failed"
STATUSES = (DONE, FAILED)
"""A unit's ledger status."""


def row_failed(row: dict) -> bool:
    """An error row, or a row that says its item stopped with an error (a PG-19 book cut short)."""
    return row.get("kind") == ERROR or bool(row.get("error"))


def unit_status(rows: list[dict]) -> str:
    """The ledger status of a unit's rows: failed when any of them failed (`--retry_failed` runs it again)."""
    return FAILED if any(row_failed(r) for r in rows) else DONE


# --- figures ---------------------------------------------------------------------------------------------

BUCKET_WIDTH = 50_000
"""Window NLL sums are kept split at every multiple of this position (a row's `cuts`), so PPL@N for N a
multiple counts exactly the scored tokens before N, and depth buckets are this wide (docs/protocols.md)."""


def ppl(nll_sum: float | None, scored_tokens: float | None) -> float:
    """The PPL rule: exp(Σ NLL / Σ scored tokens); NaN when nothing is scored or the NLL is NaN."""
    if not scored_tokens or nll_sum is None or math.isnan(nll_sum):
        return math.nan
    return math.exp(nll_sum / scored_tokens)
