"""Units per task, and the runners a worker calls on them: the only place a payload is built and read.

A runner is `runner(model, unit) -> rows`, with the worker's model (a CausalLMWithMemory carrying its
`.tokenizer`). A batch runner takes several units of one task and yields (unit_id, rows) as each finishes,
so a worker with several slots adapts that many documents at once along the memory's batch axis.
"""
from __future__ import annotations

from typing import Iterator

from locas.config import AdaptConfig
from orchestration.scheduler import Unit


def make_unit(task: str, item_id: str, size: int, cfg: AdaptConfig, config_id: str, item, **options) -> Unit:
    """`unit_id = task:item:config_id`; the payload carries the item itself, so workers need no data path."""
    return Unit(unit_id=f"{task}:{item_id}:{config_id}", task=task, item_id=str(item_id), size=int(size),
                payload={"item": item, "adapt": cfg.to_dict(), "config_id": config_id, "method": cfg.method,
                         "options": options})


def _tagged(unit: Unit, rows: list[dict]) -> list[dict]:
    return [{**row, "config_id": unit.payload["config_id"]} for row in rows]


def run_pg19_units(model, units: list[Unit]) -> Iterator[tuple[str, list[dict]]]:
    """Books of one config, adapted `len(units)` at a time (one slot each)."""
    from locas.tasks.pg19 import run_pg19_books

    by_book = {u.payload["item"].book_id: u for u in units}
    cfg = AdaptConfig.from_dict(units[0].payload["adapt"])
    books = [u.payload["item"] for u in units]
    for book, rows in run_pg19_books(model, model.tokenizer, books, cfg, batch_size=len(units)):
        unit = by_book[book.book_id]
        yield unit.unit_id, _tagged(unit, rows)


def run_pg19_unit(model, unit: Unit) -> list[dict]:
    return next(run_pg19_units(model, [unit]))[1]


def run_locomo_unit(model, unit: Unit) -> list[dict]:
    from locas.tasks.locomo import run_locomo_conversation

    options = unit.payload["options"]
    rows = run_locomo_conversation(model, model.tokenizer, unit.payload["item"],
                                   AdaptConfig.from_dict(unit.payload["adapt"]), **options)
    return _tagged(unit, rows)


def run_mmlu_unit(model, unit: Unit) -> list[dict]:
    """`item` is (book or None, questions, dev): None scores the frozen base once per run."""
    from locas.tasks.mmlu import run_mmlu_base, run_mmlu_retention

    book, questions, dev = unit.payload["item"]
    options = unit.payload["options"]
    if book is None:
        rows = run_mmlu_base(model, model.tokenizer, questions, dev=dev, **options)
    else:
        rows = run_mmlu_retention(model, model.tokenizer, book, questions,
                                  AdaptConfig.from_dict(unit.payload["adapt"]), dev=dev, **options)
    return _tagged(unit, rows)


RUNNERS = {"pg19": run_pg19_unit, "locomo": run_locomo_unit, "mmlu": run_mmlu_unit}
BATCH_RUNNERS = {"pg19": run_pg19_units}
