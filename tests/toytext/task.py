"""The toy task registered: its flag, its units (one per document), its runner, summary and demo inputs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from locas.settings import Settings, option
from locas.tasks import Task, adapt_config, lazy, make_unit, sum_of


@dataclass(frozen=True)
class TextOptions(Settings):
    data: str | None = option(None, "a folder of .txt documents")


def text_units(options: TextOptions, cfg, run_id: str) -> list:
    from tests.toytext.data import load_texts

    return [make_unit("toytext", t.doc_id, len(t.text), cfg, run_id, t) for t in load_texts(options.data)]


def run_texts(model, units, slots: int = 1, progress=None):
    from tests.toytext.run import run_text

    for unit in units:
        yield unit.unit_id, run_text(model, model.tokenizer, unit.payload["item"], adapt_config(unit))


def demo_inputs(root) -> dict:
    from locas.tiny import sample_text

    folder = Path(root) / "texts"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        (folder / f"text{i}.txt").write_text(sample_text(400, seed=i))
    return {"data": str(folder)}


TASK = Task("toytext", TextOptions, text_units, run_texts, lazy("tests.toytext.tables", "text_summary"),
            lazy("tests.toytext.tables", "text_table"), "texts", "tokens", sum_of("text", "tokens"), demo_inputs)
