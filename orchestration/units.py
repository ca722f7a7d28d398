"""A unit of work: one item (a book, a conversation, an MMLU check) under one run's config (docs/design.md).

`unit_id = f"{task}:{item_id}:{run_id}"` is what makes resume exact: the run store's ledger is keyed by it.
`config_id` (the adaptation config's hash) and `method` name the setting in the results; the worker stamps
them, with the unit id and the task, on every row (`row_keys`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from locas.config import ModelSpec
from locas.errors import LocasError


@dataclass(frozen=True)
class Unit:
    """One item of work; `payload` is what the task's runner needs (the item itself, the adaptation config
    as a dict, the task options), so workers need no data path. `size` orders units (longest first)."""

    unit_id: str
    task: str
    item_id: str
    size: int
    payload: dict = field(default_factory=dict)
    config_id: str | None = None
    method: str | None = None
    run_id: str | None = None  # the run whose folder its rows go to
    spec: ModelSpec | None = None  # the model it needs (None: the worker's own)
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
    """What every row of a unit carries to name it, and the batch it ran in: `batch_size`, at most this many
    units adapted at once per actor (costs are compared only at equal batch sizes, docs/protocols.md)."""
    return {"unit_id": unit.unit_id, "task": unit.task, "config_id": unit.config_id, "method": unit.method,
            "batch_size": unit.batch}
