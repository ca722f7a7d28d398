"""The one registry of tasks. A task is its options (its flags), how the driver turns data into units, how a
worker runs a list of units, its summary, and what its progress bar counts.

Adding a task means a data loader (`locas/data/`), a task function (`locas/tasks/`) and an entry in `TASKS`
(docs/design.md shows the files touched); every entry script, study and tool then knows it.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from locas.config import AdaptConfig, ModelSpec, Settings, option
from locas.documents import Source
from locas.errors import LocasError
from locas.expansion import without_sessions
from orchestration.units import Unit

Rows = list[dict]
Runner = Callable[[object, Source, int, object], Iterator[tuple[str, Rows]]]  # (model, units, slots, progress)
"""A runner takes the units of one group (one model, task and config: `units.head` says which) as slots free,
and yields (unit_id, rows) as each finishes; `units` is an orchestration.worker.Taken source."""


# --- options: each field is a flag of the task's script -------------------------------------------------


@dataclass(frozen=True)
class PG19Options(Settings):
    data: str = option("emozilla/pg19", "a folder of .txt books, a local dataset folder, or a hub dataset id")
    split: str = option("test", "the split: validation to tune on, test for headline figures")
    book_ids: str | None = option(None, "comma-separated book ids (default: all)", selects=True)
    max_books: int | None = option(None, "only the first N books", selects=True)


@dataclass(frozen=True)
class LocomoOptions(Settings):
    data: str | None = option(None, "a locomo10.json-shaped file (required)")
    answer_context: str = option("full", "full: the conversation precedes each question; none: answers come "
                                 "from the memory alone", choices=("full", "none"))
    context_mode: str = option("date_split", "how the conversation is cut for training", choices=("date_split",))
    max_questions: int | None = option(None, "answer only the first N questions of each conversation")
    max_conversations: int | None = option(None, "only the first N conversations", selects=True)


@dataclass(frozen=True)
class MMLUOptions(Settings):
    data: str = option("cais/mmlu", "a hub id, a local copy of its files, or a folder of {subject}_test.csv")
    subjects: str | None = option(None, "comma-separated subjects (default: all)")
    shots: int = option(0, "k-shot examples from the dev split")
    books: str = option("emozilla/pg19", "the PG-19 source of the books to adapt on")
    split: str = option("test", "the PG-19 split of --books")
    after_book: str | None = option(None, "comma-separated ids of the books to adapt on", selects=True)
    max_books: int | None = option(None, "only the first N books", selects=True)


# --- the registry ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    name: str
    options: type[Settings]
    units: Callable[[Settings, AdaptConfig, str], list[Unit]]  # (options, cfg, run_id), on the driver
    run: Runner  # on a worker: yields (unit_id, rows) as each unit finishes
    summary: Callable  # analysis.tables.*_summary of the run's frames
    table: Callable  # the table printed at the end of a run, from the run's frames
    things: str  # what its units are, for the progress bar
    counts: str  # what the progress bar's rate counts
    amount: Callable[[Rows], int]  # how many of those a finished unit's rows hold
    configure: Callable[[AdaptConfig], AdaptConfig] = lambda cfg: cfg  # the task's own defaults


def split_list(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def resolved(options: Settings) -> Settings:
    """Local data paths as absolute paths: actors and Ray jobs run in other folders."""
    changes = {}
    for name in ("data", "books"):
        value = getattr(options, name, None)
        if value is not None and Path(value).expanduser().exists():
            changes[name] = str(Path(value).expanduser().resolve())
    return options.replace(**changes)


def run_config(task: str, spec: ModelSpec, cfg: AdaptConfig, options: Settings) -> tuple[dict, str]:
    """What decides every unit's rows (the options that only select units are left out, so a run can be
    extended), and its hash: the run id."""
    from dataclasses import fields

    kept = {f.name: getattr(options, f.name) for f in fields(options) if not f.metadata.get("selects")}
    config = {"task": task, "model": spec.to_dict(), "adapt": cfg.to_dict(), "options": kept}
    if task in ("pg19", "mmlu"):
        from locas.data.pg19 import TEXT_NORMALIZATION

        config["text"] = TEXT_NORMALIZATION
    run_id = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return config, run_id


CHARS_PER_TOKEN = 4.3
"""English text per Qwen3-style token, to size units in windows before any tokenizer is loaded."""


def make_unit(task: str, item_id: str, size: int, cfg: AdaptConfig, run_id: str, item, **options) -> Unit:
    """`size` in characters; the unit's estimated window steps follow from it."""
    steps = math.ceil(size / CHARS_PER_TOKEN / (cfg.window_size - cfg.overlap))
    return Unit(unit_id=f"{task}:{item_id}:{run_id}", task=task, item_id=str(item_id), size=int(size),
                payload={"item": item, "adapt": cfg.to_dict(), "options": options}, config_id=cfg.config_id,
                method=cfg.method, run_id=run_id, steps=max(1, steps))


def _adapt(unit: Unit) -> AdaptConfig:
    return AdaptConfig.from_dict(unit.payload["adapt"])


# --- PG-19 ------------------------------------------------------------------------------------------------


def pg19_units(options: PG19Options, cfg: AdaptConfig, run_id: str) -> list[Unit]:
    from locas.data.pg19 import load_books

    books = load_books(options.data, split=options.split, ids=split_list(options.book_ids),
                       max_books=options.max_books)
    return [make_unit("pg19", book.book_id, len(book.text), cfg, run_id, book) for book in books]


def run_pg19(model, units, slots: int = 1, progress=None) -> Iterator[tuple[str, Rows]]:
    """Books of one config, `slots` at a time; a finished book's slot takes the next book at once."""
    from locas.tasks.pg19 import run_pg19_books

    by_book: dict[str, Unit] = {}

    def book(unit: Unit):
        by_book[unit.payload["item"].book_id] = unit
        return unit.payload["item"]

    for done, rows in run_pg19_books(model, model.tokenizer, units.map(book), _adapt(units.head), batch_size=slots):
        yield by_book.pop(done.book_id).unit_id, rows


def pg19_latency(model, unit: Unit, batch_sizes) -> dict[int, float]:
    from locas.adapt import step_latency

    return step_latency(model, _adapt(unit), batch_sizes)


run_pg19.latency = pg19_latency  # the step-latency model its batches are sized with

# --- LoCoMo -----------------------------------------------------------------------------------------------


def locomo_units(options: LocomoOptions, cfg: AdaptConfig, run_id: str) -> list[Unit]:
    from locas.data.locomo import load_locomo

    if not options.data:
        raise LocasError("--data is required: a locomo10.json-shaped file")
    conversations = load_locomo(options.data, strict=False)[:options.max_conversations]
    knobs = {"answer_context": options.answer_context, "context_mode": options.context_mode,
             "max_questions": options.max_questions, "seed": cfg.seed}
    return [make_unit("locomo", c.sample_id, sum(len(t.text) for s in c.sessions for t in s.turns), cfg, run_id, c,
                      **knobs) for c in conversations]


def run_locomo(model, units, slots: int = 1, progress=None) -> Iterator[tuple[str, Rows]]:
    from locas.tasks.locomo import run_locomo_conversation

    for unit in units:
        yield unit.unit_id, run_locomo_conversation(model, model.tokenizer, unit.payload["item"], _adapt(unit),
                                                    **unit.payload["options"], progress=progress)


def configure_locomo(cfg: AdaptConfig) -> AdaptConfig:
    from locas.tasks.locomo import locomo_config

    return locomo_config(cfg)


# --- MMLU -------------------------------------------------------------------------------------------------


def mmlu_units(options: MMLUOptions, cfg: AdaptConfig, run_id: str) -> list[Unit]:
    """One unit scores the frozen base once; one unit per book adapts on it and scores every question."""
    from locas.data.mmlu import load_mmlu
    from locas.data.pg19 import load_books

    subjects = split_list(options.subjects)
    questions = load_mmlu(options.data, subjects=subjects, split="test")
    dev = load_mmlu(options.data, subjects=subjects, split="dev") if options.shots else []
    books = load_books(options.books, split=options.split, ids=split_list(options.after_book),
                       max_books=options.max_books)
    units = [make_unit("mmlu", "base", len(questions), cfg, run_id, (None, questions, dev), k=options.shots)]
    return units + [make_unit("mmlu", b.book_id, len(b.text), cfg, run_id, (b, questions, dev), k=options.shots)
                    for b in books]


def run_mmlu(model, units, slots: int = 1, progress=None) -> Iterator[tuple[str, Rows]]:
    from locas.tasks.mmlu import run_mmlu_base, run_mmlu_retention

    for unit in units:
        book, questions, dev = unit.payload["item"]
        k = unit.payload["options"]["k"]
        if book is None:
            rows = run_mmlu_base(model, model.tokenizer, questions, dev=dev, k=k)
        else:
            rows = run_mmlu_retention(model, model.tokenizer, book, questions, _adapt(unit), dev=dev, k=k)
        yield unit.unit_id, rows


def _analysis(name: str):
    """`analysis.tables.<name>`, imported when called (workers never need pandas)."""
    def call(runs):
        from analysis import tables

        return getattr(tables, name)(runs)

    return call


def book_table(runs):
    return runs.books[["book_id", "method", "tokens", "ppl", "seconds", "trainable_params", "error"]]


def _sum_of(kind: str, column: str) -> Callable[[Rows], int]:
    return lambda rows: sum(int(r.get(column) or 0) for r in rows if r.get("kind") == kind)


TASKS = {
    "pg19": Task("pg19", PG19Options, pg19_units, run_pg19, _analysis("pg19_summary"), book_table, "books",
                 "tokens", _sum_of("book", "tokens"), without_sessions),
    "locomo": Task("locomo", LocomoOptions, locomo_units, run_locomo, _analysis("locomo_summary"),
                   _analysis("locomo_table"), "conversations", "tokens", _sum_of("conversation", "tokens"),
                   configure_locomo),
    "mmlu": Task("mmlu", MMLUOptions, mmlu_units, run_mmlu, _analysis("mmlu_summary"), _analysis("mmlu_table"),
                 "checks", "questions",
                 lambda rows: sum(r.get("kind") in ("mmlu", "error") and "question_id" in r for r in rows),
                 without_sessions),
}


def runners() -> dict[str, Runner]:
    """task → its worker-side runner."""
    return {name: task.run for name, task in TASKS.items()}
