"""The toy task's summary and printed table (pandas only)."""
from __future__ import annotations

from analysis.frames import number
from locas.contract import ppl

__all__ = ["text_summary", "text_table"]


def text_summary(runs) -> dict:
    """Documents scored, errors, and the pooled PPL over every scored token."""
    texts = runs.texts
    return {"texts": len(texts), "errors": len(runs.errors),
            "ppl": number(ppl(float(texts["nll_sum"].sum()), float(texts["scored_tokens"].sum())))}


def text_table(runs):
    return runs.texts[["doc_id", "method", "tokens", "ppl"]]
