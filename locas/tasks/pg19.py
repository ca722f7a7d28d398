"""PG-19 online adaptation (SPEC §6): a book in, per-window rows and a per-book summary row out."""
from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch

from locas.adapt import Document, DocumentResult, adapt_documents, sliding_windows
from locas.config import AdaptConfig
from locas.data.pg19 import Book
from locas.errors import LocasError
from locas.metrics import book_summary
from locas.model import CausalLMWithMemory


def book_tokens(tokenizer, book: Book, max_tokens: int | None = None) -> torch.Tensor:
    """The whole book tokenized without special tokens (Qwen3 adds no BOS), optionally truncated."""
    ids = tokenizer(book.text, add_special_tokens=False).input_ids
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise LocasError(f"book {book.book_id} has {len(ids)} token(s): too short to score")
    return torch.tensor(ids, dtype=torch.long)


def book_document(tokenizer, book: Book, cfg: AdaptConfig) -> Document:
    tokens = book_tokens(tokenizer, book, cfg.max_tokens)
    return Document(book.book_id, tokens, sliding_windows(len(tokens), cfg.window_size, cfg.overlap))


def book_rows(result: DocumentResult, book: Book, cfg: AdaptConfig) -> list[dict]:
    """Per-window rows and one `book` row (tokens, PPL, PPL@N, seconds, trainable parameters, error)."""
    common = {"task": "pg19", "method": cfg.method, "book_id": book.book_id}
    windows = [{"kind": "window", **common, "window": w.window, "start": w.start, "scored_tokens": w.scored_tokens,
                "nll_sum": w.nll_sum, "train_loss": w.train_loss, "seconds": w.seconds} for w in result.windows]
    scored, nll = result.scored_tokens, result.nll_sum
    summary = {k: v for k, v in book_summary(windows).items() if k != "ppl"}
    book_row = {"kind": "book", **common, "title": book.title, "tokens": len(result.doc.tokens),
                "scored_tokens": scored, "nll_sum": nll,
                "ppl": math.exp(nll / scored) if scored and math.isfinite(nll) else None,
                "seconds": result.seconds, "trainable_params": result.trainable_params,
                "error": result.error, **summary}
    return windows + [book_row]


def run_pg19_books(model: CausalLMWithMemory, tokenizer, books: Iterable[Book], cfg: AdaptConfig,
                   batch_size: int = 1) -> Iterator[tuple[Book, list[dict]]]:
    """Adapt to each book online, `batch_size` books at a time; yields (book, rows) as each finishes.

    A book that cannot be scored (too short) yields one `error` row at once and the others go on."""
    by_id, documents = {}, []
    for book in books:
        try:
            documents.append(book_document(tokenizer, book, cfg))
        except LocasError as e:
            yield book, [{"kind": "error", "task": "pg19", "method": cfg.method, "book_id": book.book_id,
                          "error": str(e)}]
            continue
        by_id[book.book_id] = book
    for result in adapt_documents(model, documents, cfg, batch_size):
        book = by_id.pop(result.doc.doc_id)
        yield book, book_rows(result, book, cfg)


def run_pg19_book(model: CausalLMWithMemory, tokenizer, book: Book, cfg: AdaptConfig) -> list[dict]:
    """One book, usable from a notebook: `rows = run_pg19_book(model, tokenizer, book, AdaptConfig(...))`."""
    return next(run_pg19_books(model, tokenizer, [book], cfg))[1]
