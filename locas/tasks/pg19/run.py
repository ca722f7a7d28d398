"""PG-19 online adaptation (SPEC §6, docs/protocols.md): a book in, per-window rows and a book row out."""
from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch

from locas.adapt import adapt_documents
from locas.config import AdaptConfig
from locas.contract import BUCKET_WIDTH, error_row, ppl
from locas.documents import Document, DocumentResult, Progress, Source, WindowResult, sliding_windows
from locas.errors import LocasError
from locas.expansion import final_width, window_width
from locas.model import CausalLMWithMemory
from locas.tasks.pg19.data import Book


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts a text with its BOS by default (Llama-style; Qwen3 adds none)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def book_tokens(tokenizer, book: Book, max_tokens: int | None = None) -> torch.Tensor:
    """The whole book's tokens, led by the BOS where the tokenizer adds one (never scored: the first token
    of a book has nothing before it), optionally truncated."""
    ids = tokenizer(book.text, add_special_tokens=False).input_ids
    if adds_bos(tokenizer):
        ids = [tokenizer.bos_token_id] + ids
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise LocasError(f"book {book.book_id} has {len(ids)} token(s): too short to score")
    return torch.tensor(ids, dtype=torch.long)


def book_document(tokenizer, book: Book, cfg: AdaptConfig) -> Document:
    tokens = book_tokens(tokenizer, book, cfg.max_tokens)
    return Document(book.book_id, tokens, sliding_windows(len(tokens), cfg.window_size, cfg.overlap))


def window_cuts(token_nll: torch.Tensor, window: WindowResult) -> list[list]:
    """[[N, NLL sum of the window's scored tokens before N], ...] for each multiple N of BUCKET_WIDTH strictly
    inside the window's scored positions [start, start + scored_tokens); token_nll[p − 1] is token p's."""
    first = (window.start // BUCKET_WIDTH + 1) * BUCKET_WIDTH
    return [[n, float(token_nll[window.start - 1:n - 1].double().sum())]
            for n in range(first, window.start + window.scored_tokens, BUCKET_WIDTH)]


def book_rows(result: DocumentResult, book: Book) -> list[dict]:
    """Per-window rows and one `book` row (docs/design.md). `seconds` are accelerator time: a window's is
    its share of the batched step, a book's is its memorize plus its windows'."""
    windows = [{"kind": "window", "book_id": book.book_id, "window": w.window, "start": w.start,
                "scored_tokens": w.scored_tokens, "nll_sum": w.nll_sum, "cuts": window_cuts(result.token_nll, w),
                "train_loss": w.train_loss, "seconds": w.seconds, **window_width(result, w.window)}
               for w in result.windows]
    scored, nll = result.scored_tokens, result.nll_sum
    book_row = {"kind": "book", "book_id": book.book_id, "title": book.title, "tokens": len(result.doc.tokens),
                "scored_tokens": scored, "nll_sum": nll,
                "ppl": ppl(nll, scored) if scored and math.isfinite(nll) else None,
                "seconds": result.seconds, "memorize_seconds": result.memorize_seconds,
                "trainable_params": result.trainable_params, "error": result.error, **final_width(result)}
    return windows + [book_row]


class _BookDocuments(Source):
    """The documents of the books a source gives, tokenized as they are taken. A book too short to score
    becomes an error row and the taking pauses there (None), so the loop answers it before it waits for
    more books (on a worker, more books come only once every book given is answered)."""

    def __init__(self, books: Source, tokenizer, cfg: AdaptConfig):
        self.books, self.tokenizer, self.cfg = books, tokenizer, cfg
        self.by_id: dict[str, Book] = {}
        self.failed: list[tuple[Book, list[dict]]] = []
        self.done = False  # the source said there will be no more books

    def take(self, wait: bool) -> Document | None:
        book = self.books.take(wait)
        if book is None:
            self.done = wait
            return None
        try:
            doc = book_document(self.tokenizer, book, self.cfg)
        except LocasError as e:
            self.failed.append((book, [error_row(e, book_id=book.book_id)]))
            return None
        self.by_id[book.book_id] = book
        return doc

    def flush(self) -> list[tuple[Book, list[dict]]]:
        failed, self.failed = self.failed, []
        return failed


def run_pg19_books(model: CausalLMWithMemory, tokenizer, books: Iterable[Book] | Source, cfg: AdaptConfig,
                   batch_size: int = 1, progress: Progress | None = None) -> Iterator[tuple[Book, list[dict]]]:
    """Adapt to each book online, `batch_size` books at a time; yields (book, rows) as each finishes. `books`
    is a list or a Source whose books may arrive while it runs (a free slot takes the next one at once).
    `progress` hears each book's windows and tokens as they are read.

    A book that cannot be scored (too short) yields one `error` row and the others go on."""
    documents = _BookDocuments(Source.of(books), tokenizer, cfg)
    while not documents.done:  # a loop ends at the end of the books, or paused at a book that failed
        for result in adapt_documents(model, documents, cfg, batch_size, progress):
            yield from documents.flush()
            book = documents.by_id.pop(result.doc.doc_id)
            yield book, book_rows(result, book)
        yield from documents.flush()


def run_pg19_book(model: CausalLMWithMemory, tokenizer, book: Book, cfg: AdaptConfig) -> list[dict]:
    """One book, usable from a notebook: `rows = run_pg19_book(model, tokenizer, book, AdaptConfig(...))`."""
    return next(run_pg19_books(model, tokenizer, [book], cfg))[1]
