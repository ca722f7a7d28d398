"""Scoring a document as PG-19 scores a book: sliding windows, each evaluated then adapted on (torch, locas)."""
from __future__ import annotations

import torch

from locas.adapt import adapt_documents
from locas.contract import ppl
from locas.documents import Document, sliding_windows


def run_text(model, tokenizer, text, cfg) -> list[dict]:
    """One `text` row: the document's tokens, its scored tokens, their NLL sum and PPL."""
    ids = tokenizer(text.text, add_special_tokens=False).input_ids[:cfg.max_tokens]
    tokens = torch.tensor(ids, dtype=torch.long)
    document = Document(text.doc_id, tokens, sliding_windows(len(tokens), cfg.window_size, cfg.overlap))
    (result,) = adapt_documents(model, [document], cfg)
    return [{"kind": "text", "doc_id": text.doc_id, "tokens": len(tokens), "scored_tokens": result.scored_tokens,
             "nll_sum": result.nll_sum, "ppl": ppl(result.nll_sum, result.scored_tokens), "error": result.error}]
