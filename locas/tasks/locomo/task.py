"""LoCoMo as a registered task: its flags, its units (one per conversation), its runner, summary and demo."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from locas.errors import LocasError
from locas.settings import Settings, option
from locas.tasks import Task, adapt_config, lazy, make_unit, sum_of, unit_progress


@dataclass(frozen=True)
class LocomoOptions(Settings):
    data: str | None = option(None, "a locomo10.json-shaped file (required)")
    answer_context: str = option("full", "full: the conversation precedes each question; none: answers come "
                                 "from the memory alone", choices=("full", "none"))
    context_mode: str = option("date_split", "how the conversation is cut for training", choices=("date_split",))
    max_questions: int | None = option(None, "answer only the first N questions of each conversation")
    max_conversations: int | None = option(None, "only the first N conversations", selects=True)


def locomo_units(options: LocomoOptions, cfg, run_id: str) -> list:
    from locas.tasks.locomo.data import load_locomo

    if not options.data:
        raise LocasError("--data is required: a locomo10.json-shaped file")
    conversations = load_locomo(options.data, strict=False)[:options.max_conversations]
    knobs = {"answer_context": options.answer_context, "context_mode": options.context_mode,
             "max_questions": options.max_questions, "seed": cfg.seed}
    return [make_unit("locomo", c.sample_id, sum(len(t.text) for s in c.sessions for t in s.turns), cfg, run_id, c,
                      **knobs) for c in conversations]


def run_locomo(model, units, slots: int = 1, progress=None) -> Iterator[tuple[str, list[dict]]]:
    from locas.tasks.locomo.run import run_locomo_conversation

    for unit in units:
        yield unit.unit_id, run_locomo_conversation(model, model.tokenizer, unit.payload["item"], adapt_config(unit),
                                                    **unit.payload["options"],
                                                    progress=unit_progress(unit, progress))


TASK = Task("locomo", LocomoOptions, locomo_units, run_locomo, lazy("locas.tasks.locomo.tables", "locomo_summary"),
            lazy("locas.tasks.locomo.tables", "locomo_table"), "conversations", "tokens",
            sum_of("conversation", "tokens"), lazy("locas.tasks.locomo.demo", "demo_inputs"),
            lazy("locas.tasks.locomo.run", "locomo_config"))
