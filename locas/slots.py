"""Documents in flight: a slot's results kept on the device until its document ends, the batch of the
slots' current windows, and step times and flags read without waiting for the accelerator."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from locas.documents import Document, DocumentResult, WindowResult


class StepClock:
    """Accelerator time of a step without waiting for it: CUDA events on a GPU (read once the document
    ends, when its results are copied back anyway), the wall clock on a CPU, whose ops finish before
    they return."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    @staticmethod
    def seconds(start, end) -> float:
        return end - start if isinstance(start, float) else start.elapsed_time(end) / 1000


@dataclass
class Step:
    """One window step shared by `size` documents, between two clock marks."""

    start: object
    end: object
    size: int

    def share(self) -> float:
        return StepClock.seconds(self.start, self.end) / self.size


class HostFlags:
    """Per-slot booleans on their way to the host: on a GPU a non-blocking copy into pinned memory and an
    event, so reading them waits for the step that made them and not for the steps queued behind it."""

    def __init__(self, flags: torch.Tensor):
        self.event = None
        if flags.is_cuda:
            self.host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
            self.host.copy_(flags, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = flags

    def read(self) -> list[bool]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


class Slot:
    """A document in a slot: which window comes next, and its results so far, kept on the device."""

    def __init__(self, index: int, doc: Document, memorize: Step, trainable_params: int, device):
        self.index, self.doc, self.memorize, self.trainable_params = index, doc, memorize, trainable_params
        self.next_window = 0
        self.token_nll = torch.zeros(len(doc.tokens) - 1, device=device)  # (N−1,)
        self.train_losses = torch.zeros(len(doc.windows), device=device)  # (windows,)
        self.trained: list[bool] = []  # per window: whether a training loss was recorded
        self.steps: list[Step] = []

    @property
    def last_window(self) -> bool:
        return self.next_window == len(self.doc.windows)

    def record(self, token_nll: torch.Tensor, train_loss: torch.Tensor | None, step: Step) -> None:
        """Keep window `next_window`'s scored NLL (from (T−1,)) and training loss (0-dim) on the device."""
        w = self.doc.windows[self.next_window]
        self.token_nll[w.scored_from - 1:w.end - 1] = token_nll[w.scored_from - w.start - 1:w.end - w.start - 1]
        if train_loss is not None:
            self.train_losses[self.next_window] = train_loss
        self.trained.append(train_loss is not None)
        self.steps.append(step)
        self.next_window += 1

    def finish(self, bad_window: int | None = None) -> DocumentResult:
        """Copy the results back (the one wait of a document). A document stopped at `bad_window` (a
        non-finite loss) keeps the windows up to that one: the loop notices one window late."""
        kept = len(self.steps) if bad_window is None else bad_window + 1
        token_nll, train_losses = self.token_nll.cpu(), self.train_losses.cpu().tolist()
        windows = []
        for k, w in enumerate(self.doc.windows[:kept]):
            nll = float(token_nll[w.scored_from - 1:w.end - 1].double().sum())
            windows.append(WindowResult(k, w.scored_from, w.end - w.scored_from, nll,
                                        train_losses[k] if self.trained[k] else None, self.steps[k].share()))
        error = None if bad_window is None else f"non-finite loss at window {bad_window}: the document was stopped"
        return DocumentResult(self.doc, self.index, windows, token_nll[:self.doc.windows[kept - 1].end - 1], error,
                              self.memorize.share(), self.trainable_params)


class WindowBatch:
    """The current window of each active slot, right-padded to the window size (static shapes: one compiled
    graph), or with `pad=False` only to the batch's longest window (eager: a document's last window is short).
    Attention is causal and padding comes last, so no attention mask is needed: padding never reaches a real
    position, and the score mask zeroes the padded targets."""

    def __init__(self, slots: list[Slot], width: int, device, pad: bool = True):
        self.window_indices = [s.next_window for s in slots]
        self.windows = [s.doc.windows[k] for s, k in zip(slots, self.window_indices)]
        if not pad:
            width = max(w.end - w.start for w in self.windows)
        self.width = width
        ids = torch.zeros(len(slots), width, dtype=torch.long)
        score = torch.zeros(len(slots), width - 1)
        self.docs = [s.doc for s in slots]
        self.slot_ids = [s.index for s in slots]
        for i, (slot, w) in enumerate(zip(slots, self.windows)):
            n = w.end - w.start
            ids[i, :n] = slot.doc.tokens[w.start:w.end]
            score[i, w.scored_from - w.start - 1:n - 1] = 1  # position j predicts token start + j + 1
        self.ids, self.score = ids.to(device), score.to(device)
        self.slots = torch.tensor(self.slot_ids, device=device)
