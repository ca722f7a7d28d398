"""MMLU retention as a registered task: its flags, its units (the frozen base once, then one per book adapted
on), its runner, summary and demo."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from locas.expansion import without_sessions
from locas.settings import Settings, option
from locas.tasks import Task, adapt_config, lazy, make_unit, split_list, unit_progress
from locas.tasks.pg19.data import TEXT_NORMALIZATION


@dataclass(frozen=True)
class MMLUOptions(Settings):
    data: str = option("cais/mmlu", "a hub id, a local copy of its files, or a folder of {subject}_test.csv")
    subjects: str | None = option(None, "comma-separated subjects (default: all)")
    shots: int = option(0, "k-shot examples from the dev split")
    books: str = option("emozilla/pg19", "the PG-19 source of the books to adapt on")
    split: str = option("test", "the PG-19 split of --books")
    after_book: str | None = option(None, "comma-separated ids of the books to adapt on", selects=True)
    max_books: int | None = option(None, "only the first N books", selects=True)


def mmlu_units(options: MMLUOptions, cfg, run_id: str) -> list:
    """One unit scores the frozen base once; one unit per book adapts on it and scores every question."""
    from locas.tasks.mmlu.data import load_mmlu
    from locas.tasks.pg19.data import load_books

    subjects = split_list(options.subjects)
    questions = load_mmlu(options.data, subjects=subjects, split="test")
    dev = load_mmlu(options.data, subjects=subjects, split="dev") if options.shots else []
    books = load_books(options.books, split=options.split, ids=split_list(options.after_book),
                       max_books=options.max_books)
    units = [make_unit("mmlu", "base", len(questions), cfg, run_id, (None, questions, dev), k=options.shots)]
    return units + [make_unit("mmlu", b.book_id, len(b.text), cfg, run_id, (b, questions, dev), k=options.shots)
                    for b in books]


def run_mmlu(model, units, slots: int = 1, progress=None) -> Iterator[tuple[str, list[dict]]]:
    from locas.tasks.mmlu.run import run_mmlu_base, run_mmlu_retention

    for unit in units:
        book, questions, dev = unit.payload["item"]
        k = unit.payload["options"]["k"]
        if book is None:
            rows = run_mmlu_base(model, model.tokenizer, questions, dev=dev, k=k,
                                 progress=unit_progress(unit, progress))
        else:
            rows = run_mmlu_retention(model, model.tokenizer, book, questions, adapt_config(unit), dev=dev, k=k,
                                      progress=unit_progress(unit, progress))
        yield unit.unit_id, rows


def checks_done(rows: list[dict]) -> int:
    """Questions a unit answered (or failed), for the progress bar."""
    return sum(r.get("kind") in ("mmlu", "error") and "question_id" in r for r in rows)


TASK = Task("mmlu", MMLUOptions, mmlu_units, run_mmlu, lazy("locas.tasks.mmlu.tables", "mmlu_summary"),
            lazy("locas.tasks.mmlu.tables", "mmlu_table"), "checks", "questions", checks_done,
            lazy("locas.tasks.mmlu.demo", "demo_inputs"), without_sessions, text=TEXT_NORMALIZATION)
