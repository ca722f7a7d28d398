"""The online loop (SPEC §6, docs/method.md): memorize on window 0, then per window evaluate, then update.

The NLL recorded for a window is always the pre-update one; with one step per window (a deterministic
training forward, and a loss whose training forward gives the NLL: `Loss.shares_scoring_forward`) the
scoring forward and the training forward are one computation. The loop never asks which method or loss it
runs: both are objects from their registries (`locas.methods`, `locas.objectives`).
Documents run in slots along the memory's batch axis; a finished document's slot is refilled at once.

The accelerator is never waited on per window: each token's NLL stays on the device until its document
ends, step times are CUDA events read then, and the only per-window read is the previous window's
"non-finite?" flags, copied to the host behind the current step (pipelined by one window).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from locas.checks import check_model_config
from locas.config import AdaptConfig
from locas.documents import Document, DocumentResult, Progress, Source, sliding_windows
from locas.errors import LocasError
from locas.methods import make_method
from locas.model import CausalLMWithMemory
from locas.objectives import make_loss, window_nll
from locas.slots import HostFlags, Slot, Step, StepClock, WindowBatch


@dataclass
class StepOutput:
    """One window step's results per slot (S): the pre-update NLL of every target position (S, T−1), zero
    outside the scored ones, and the training loss (S,), or None when nothing trains."""

    token_nll: torch.Tensor
    train_loss: torch.Tensor | None


class Adapter:
    """Runs documents through a method with a loss; see `adapt_documents`. Refuses a model that cannot take
    `cfg` (`locas.checks`) before anything runs."""

    def __init__(self, model: CausalLMWithMemory, method, cfg: AdaptConfig):
        check_model_config(model.config, cfg)
        self.model, self.method, self.cfg = model, method, cfg
        self.loss = make_loss(model, method, cfg)
        self.width = cfg.window_size
        self.shared_forward = cfg.steps == 1 and self.loss.shares_scoring_forward and method.deterministic_training
        # a compiled model gets every window right-padded to the window size (one graph); an eager one not
        self.static_shapes = model.compiled

    def _train_step(self, loss: torch.Tensor, batch: WindowBatch, support: list[bool]) -> None:
        """Backward, then an optimizer step for the slots whose loss has support; the others keep their
        state and their Adam step count."""
        loss.sum().backward()
        supported = [s for s, ok in zip(batch.slot_ids, support) if ok]
        self.method.step(batch.slots if len(supported) == len(support) else
                         torch.tensor(supported, dtype=torch.long, device=batch.slots.device))

    # ---- one window for every active slot ---------------------------------------------------------------
    def step_window(self, batch: WindowBatch) -> StepOutput:
        """Record each slot's pre-update NLL, then train (see StepOutput)."""
        cfg, method, loss = self.cfg, self.method, self.loss
        if not cfg.steps:
            with torch.no_grad():
                return StepOutput(window_nll(self.model, method, batch) * batch.score, None)
        prepared = loss.prepare(batch)
        if self.shared_forward:
            with method.train_context():
                out = loss(batch, prepared, 0)
            self._train_step(out.loss, batch, out.support)
            return StepOutput(out.nll.detach() * batch.score, out.loss.detach())
        with torch.no_grad():
            nll = window_nll(self.model, method, batch) * batch.score
        train_loss = None
        for step in range(cfg.steps):
            with method.train_context():
                out = loss(batch, prepared, step)
            self._train_step(out.loss, batch, out.support)
            train_loss = out.loss.detach() if train_loss is None else train_loss
        return StepOutput(nll, train_loss)

    # ---- the loop ---------------------------------------------------------------------------------------
    def run(self, documents: Iterable[Document] | Source, batch_size: int = 1,
            progress: Progress | None = None) -> Iterator[DocumentResult]:
        """Yield each document's result as it finishes (see DocumentResult). `documents` is a list or a
        Source whose documents may arrive while it runs: a free slot takes the next one at once. `progress`
        (a Progress callback) hears after each step, per document, its windows done and tokens read."""
        method, device = self.method, self.model.device
        num_slots = max(1, min(batch_size, method.max_slots or batch_size))
        method.start(num_slots)
        source = Source.of(documents)
        clock = StepClock(device)
        slots: list[Slot | None] = [None] * num_slots
        previous: list[tuple[Slot, int]] = []  # the last step's (slot, window) pairs whose flags are pending
        previous_flags = None
        try:
            while self._fill(slots, source, clock):
                active = [s for s in slots if s is not None]
                batch = WindowBatch(active, self.width, device, pad=self.static_shapes)
                started = clock.mark()
                method.before_window(batch)
                out = self.step_window(batch)
                step = Step(started, clock.mark(), len(active))
                flags = HostFlags(_non_finite(out))
                for k, slot in enumerate(active):
                    slot.record(out.token_nll[k], None if out.train_loss is None else out.train_loss[k], step)
                if progress is not None:
                    for slot in active:
                        windows = slot.doc.windows
                        progress(slot.doc.doc_id, windows=(slot.next_window, len(windows)),
                                 tokens=windows[slot.next_window - 1].end)
                bad = {}  # slot index → its first non-finite window
                if previous_flags is not None:  # read while this step runs
                    bad = {s.index: w for (s, w), flag in zip(previous, previous_flags.read())
                           if flag and slots[s.index] is s}
                if any(s.last_window and s.index not in bad for s in active):  # a document ends: read now
                    bad.update({s.index: s.next_window - 1 for s, flag in zip(active, flags.read())
                                if flag and s.index not in bad})
                    previous, previous_flags = [], None
                else:
                    previous, previous_flags = [(s, s.next_window - 1) for s in active], flags
                for slot in active:
                    if slot.index in bad or slot.last_window:
                        result = slot.finish(bad.get(slot.index))
                        method.annotate(result)
                        yield result  # the slot still holds this document's state
                        slots[slot.index] = None
        finally:
            method.finish()

    def _fill(self, slots: list[Slot | None], source: Source, clock: StepClock) -> bool:
        """Give every free slot the next document that is there; with none running, wait for one. Returns
        whether any slot is busy (False: the source is done)."""
        for index in range(len(slots)):
            if slots[index] is None:
                doc = source.take(wait=not any(slots))
                if doc is None:
                    break
                slots[index] = self._start(index, doc, clock)
        return any(slots)

    def _start(self, index: int, doc: Document, clock: StepClock) -> Slot:
        if not doc.windows:
            raise LocasError(f"document {doc.doc_id} has no window to score")
        first = doc.windows[0]
        started = clock.mark()
        self.method.reset(index, doc.tokens[first.start:first.end].unsqueeze(0).to(self.model.device))
        memorize = Step(started, clock.mark(), 1)
        return Slot(index, doc, memorize, self.method.trainable_parameters(), self.model.device)


def _non_finite(out: StepOutput) -> torch.Tensor:
    """(S,) bool on the device: a slot whose window NLL or training loss is not finite."""
    bad = ~torch.isfinite(out.token_nll.sum(1))
    return bad if out.train_loss is None else bad | ~torch.isfinite(out.train_loss)


def adapt_documents(model: CausalLMWithMemory, documents: Iterable[Document], cfg: AdaptConfig,
                    batch_size: int = 1, progress: Progress | None = None) -> Iterator[DocumentResult]:
    """Adapt to each document online (evaluate, then update), `batch_size` documents at a time."""
    return Adapter(model, make_method(model, cfg), cfg).run(documents, batch_size, progress)


@contextlib.contextmanager
def adapted(model: CausalLMWithMemory, document: Document, cfg: AdaptConfig, progress: Progress | None = None):
    """Adapt to one document, then hold its adapted state: inside the block every forward of `model` (and
    `generate`) runs with it, without gradients. Yields (result, method); `method.export(result.slot)` is
    the state as a plain model. A non-finite loss raises LocasError: answers under a broken state mean
    nothing. `progress` hears the windows trained on."""
    method = make_method(model, cfg)
    with contextlib.closing(Adapter(model, method, cfg).run([document], progress=progress)) as results:
        result = next(results)
        if result.error:
            raise LocasError(f"adaptation on {document.doc_id} failed ({result.error})")
        with torch.no_grad(), method.forward_context(torch.tensor([result.slot], device=model.device)):
            yield result, method


def step_latency(model: CausalLMWithMemory, cfg: AdaptConfig, batch_sizes, steps: int = 3) -> dict[int, float]:
    """Median seconds of one window step with `b` documents batched, for each `b`, measured here on random
    tokens (a warm-up step first): the latency model the scheduler sizes batches with."""
    generator = torch.Generator().manual_seed(0)
    latency = {}
    for b in batch_sizes:
        length = (cfg.window_size - cfg.overlap) * (steps + 1) + 1
        docs = [Document(f"probe{i}", torch.randint(1, model.config.vocab_size, (length,), generator=generator),
                         sliding_windows(length, cfg.window_size, cfg.overlap)) for i in range(b)]
        results = list(adapt_documents(model, docs, cfg, batch_size=b))
        shares = sorted(w.seconds * b for r in results[:1] for w in r.windows[1:])
        latency[b] = shares[len(shares) // 2]
    return latency
