"""PG-19 as a registered task: its flags, its units (one per book), its runner (books batched, a freed slot
taking the next book at once), its summary and its demo inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from locas.expansion import without_sessions
from locas.settings import Settings, option
from locas.tasks import Task, adapt_config, lazy, make_unit, split_list, sum_of
from locas.tasks.pg19.data import TEXT_NORMALIZATION


@dataclass(frozen=True)
class PG19Options(Settings):
    data: str = option("emozilla/pg19", "a folder of .txt books, a local dataset folder, or a hub dataset id")
    split: str = option("test", "the split: validation to tune on, test for headline figures")
    book_ids: str | None = option(None, "comma-separated book ids (default: all)", selects=True)
    max_books: int | None = option(None, "only the first N books", selects=True)


def pg19_units(options: PG19Options, cfg, run_id: str) -> list:
    from locas.tasks.pg19.data import load_books

    books = load_books(options.data, split=options.split, ids=split_list(options.book_ids),
                       max_books=options.max_books)
    return [make_unit("pg19", book.book_id, len(book.text), cfg, run_id, book) for book in books]


def run_pg19(model, units, slots: int = 1, progress=None) -> Iterator[tuple[str, list[dict]]]:
    """Books of one config, `slots` at a time; a finished book's slot takes the next book at once."""
    from locas.tasks.pg19.run import run_pg19_books

    by_book: dict = {}

    def book(unit):
        by_book[unit.payload["item"].book_id] = unit
        return unit.payload["item"]

    heard = None if progress is None else lambda book_id, **counts: progress(by_book[book_id].unit_id, **counts)
    for done, rows in run_pg19_books(model, model.tokenizer, units.map(book), adapt_config(units.head), slots,
                                     heard):
        yield by_book.pop(done.book_id).unit_id, rows


def pg19_latency(model, unit, batch_sizes) -> dict[int, float]:
    from locas.adapt import step_latency

    return step_latency(model, adapt_config(unit), batch_sizes)


run_pg19.latency = pg19_latency  # the step-latency model its batches are sized with

TASK = Task("pg19", PG19Options, pg19_units, run_pg19, lazy("locas.tasks.pg19.tables", "pg19_summary"),
            lazy("locas.tasks.pg19.tables", "book_table"), "books", "tokens", sum_of("book", "tokens"),
            lazy("locas.tasks.pg19.demo", "demo_inputs"), without_sessions, batches=True, text=TEXT_NORMALIZATION)
