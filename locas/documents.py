"""A document as the online loop sees it: its tokens cut into windows, and what adapting to it gives."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol

import torch

from locas.errors import LocasError


@dataclass(frozen=True)
class Window:
    """Tokens [start, end) of a document; the targets [scored_from, end) are scored (the rest is context)."""

    start: int
    end: int
    scored_from: int


@dataclass
class Document:
    doc_id: str
    tokens: torch.Tensor  # (N,) token ids on the CPU
    windows: list[Window]
    sections: list[int] | None = None  # indices of the windows that begin a section (a LoCoMo session)


@dataclass
class WindowResult:
    window: int
    start: int  # position of the first scored token
    scored_tokens: int
    nll_sum: float
    train_loss: float | None
    seconds: float  # this document's share of the window step: its time / the documents that shared it


@dataclass
class DocumentResult:
    """A finished document. While it is being handled, the method's state in `slot` is still its state."""

    doc: Document
    slot: int
    windows: list[WindowResult] = field(default_factory=list)
    token_nll: torch.Tensor | None = None  # (N−1,) float32 CPU: the NLL of token p at p−1, of scored windows
    error: str | None = None
    memorize_seconds: float = 0.0
    trainable_params: int = 0  # at the end (an expanding memory's grow)
    widths: list[int] | None = None  # an expanding memory's rows in force at each window

    @property
    def scored_tokens(self) -> int:
        return sum(w.scored_tokens for w in self.windows)

    @property
    def nll_sum(self) -> float:
        return sum(w.nll_sum for w in self.windows)

    @property
    def seconds(self) -> float:
        """Accelerator time of this document: its memorize plus its share of every window step."""
        return self.memorize_seconds + sum(w.seconds for w in self.windows)


def sliding_windows(num_tokens: int, window_size: int, overlap: int) -> list[Window]:
    """Windows of `window_size` sharing `overlap` context tokens: every token but the first is scored once."""
    if num_tokens < 2:
        raise LocasError(f"a document of {num_tokens} token(s) is too short: at least 2 are needed to score one")
    windows, start, stride = [Window(0, min(window_size, num_tokens), 1)], 0, window_size - overlap
    while windows[-1].end < num_tokens:
        start += stride
        windows.append(Window(start, min(start + window_size, num_tokens), start + overlap))
    return windows


def chunk_windows(chunk_bounds: list[tuple[int, int]], window_size: int) -> list[Window]:
    """One window per chunk (a LoCoMo session), a chunk longer than a window cut into windows."""
    windows = []
    for lo, hi in chunk_bounds:
        for start in range(lo, hi, window_size):
            end = min(start + window_size, hi)
            if end - start >= 2:
                windows.append(Window(start, end, start + 1))
    return windows


class Progress(Protocol):
    """Where a task says how far it is inside a document, as it goes: `progress(doc_id, **counts)` with
    cumulative counts: `windows=(done, total)`, `tokens=` positions read so far, `questions=(done, total)`.
    The worker passes one on to the driver's progress bar; the library itself never prints."""

    def __call__(self, doc_id: str, **counts) -> None: ...


class Source:
    """Items taken one at a time, as slots free: `take(wait=False)` gives the next item that is there now or
    None; `take(wait=True)` waits for one and gives None only when there will be no more. A list is a source
    whose items are all there (`Source.of`); a worker's inbox is one whose items arrive while it runs."""

    def take(self, wait: bool):
        raise NotImplementedError

    def __iter__(self):
        while (item := self.take(wait=True)) is not None:
            yield item

    def map(self, fn) -> "Source":
        """The same items, each passed through `fn` as it is taken."""
        return _Mapped(self, fn)

    @staticmethod
    def of(items) -> "Source":
        return items if isinstance(items, Source) else _Listed(items)


class _Listed(Source):
    def __init__(self, items: Iterable):
        self._items = iter(items)

    def take(self, wait: bool):
        return next(self._items, None)


class _Mapped(Source):
    def __init__(self, source: Source, fn):
        self.source, self.fn = source, fn

    def take(self, wait: bool):
        item = self.source.take(wait)
        return None if item is None else self.fn(item)
