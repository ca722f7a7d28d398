"""The online adaptation loop: evaluate, then update, window by window, several documents at once.

A document is a token stream cut into windows. Each window's NLL is recorded under the state *before*
that window's update; with one step per window (and no dropout) the scoring forward is the training forward.
Documents run in slots along the memory's batch axis; a finished document's slot is refilled at once.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

from locas import losses
from locas.config import AdaptConfig
from locas.errors import LocasError
from locas.model import CausalLMWithMemory, token_nll


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


@dataclass
class WindowResult:
    window: int
    start: int  # position of the first scored token
    scored_tokens: int
    nll_sum: float
    train_loss: float | None
    seconds: float


@dataclass
class DocumentResult:
    """A finished document. While it is being handled, the method's state in `slot` is still its state."""

    doc: Document
    slot: int
    windows: list[WindowResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    trainable_params: int = 0

    @property
    def scored_tokens(self) -> int:
        return sum(w.scored_tokens for w in self.windows)

    @property
    def nll_sum(self) -> float:
        return sum(w.nll_sum for w in self.windows)


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


@dataclass
class _Slot:
    doc: Document
    result: DocumentResult
    next_window: int = 0
    started: float = field(default_factory=time.perf_counter)


class _Batch:
    """The current window of each active slot, right-padded to the window size (static shapes)."""

    def __init__(self, slots: list[_Slot], width: int, device):
        S = len(slots)
        self.ids = torch.zeros(S, width, dtype=torch.long)
        self.mask = torch.zeros(S, width, dtype=torch.long)
        self.score = torch.zeros(S, width - 1)
        self.windows = [s.doc.windows[s.next_window] for s in slots]
        for i, (slot, w) in enumerate(zip(slots, self.windows)):
            n = w.end - w.start
            self.ids[i, :n] = slot.doc.tokens[w.start:w.end]
            self.mask[i, :n] = 1
            self.score[i, w.scored_from - w.start - 1:n - 1] = 1  # position j predicts token start + j + 1
        self.ids, self.mask, self.score = self.ids.to(device), self.mask.to(device), self.score.to(device)


class Adapter:
    """Runs documents through a method with a loss; see `adapt_documents`."""

    def __init__(self, model: CausalLMWithMemory, method, cfg: AdaptConfig):
        self.model, self.method, self.cfg = model, method, cfg
        self.width = cfg.window_size
        self.shared_forward = cfg.steps == 1 and cfg.loss != "GRPO" and method.deterministic_training

    # ---- forwards --------------------------------------------------------------------------------------
    def _logits(self, batch: _Batch, slots: torch.Tensor, ids=None, mask=None):
        with self.method.forward_context(slots):
            return self.model(batch.ids if ids is None else ids,
                              attention_mask=batch.mask if mask is None else mask).logits

    @torch.no_grad()
    def _teacher_logits(self, batch: _Batch, docs: list[Document]):
        """Frozen base, memory off, reading up to `teacher_tokens` preceding tokens plus the window."""
        out = torch.zeros(len(docs), self.width, self.model.config.vocab_size, device=self.model.device,
                          dtype=self.model.model.dtype)  # (S, T, V) in the model's dtype: fp32 would double it
        has_context = torch.zeros(len(docs), 1, device=self.model.device)
        with self.method.base_context():
            for i, (doc, w) in enumerate(zip(docs, batch.windows)):
                lo = max(0, w.start - self.cfg.teacher_tokens)
                if lo == w.start:
                    continue  # nothing precedes: the teacher would equal the student
                ids = doc.tokens[lo:w.end].unsqueeze(0).to(self.model.device)
                logits = self.model(ids).logits[0]
                out[i, :w.end - w.start] = logits[w.start - lo:]
                has_context[i] = 1
        return out, has_context

    def _window_loss(self, logits, nll, batch: _Batch, teacher):
        cfg = self.cfg
        if cfg.loss == "NTP":
            return losses.ntp(nll, batch.score)
        teacher_logits, has_context = teacher
        sd = losses.self_distillation(logits, teacher_logits, batch.score * has_context, cfg.temperature)
        if cfg.loss == "SD":
            return sd
        return cfg.mix_lambda * losses.ntp(nll, batch.score) + (1 - cfg.mix_lambda) * sd

    def _grpo_loss(self, batch: _Batch, slots: torch.Tensor, step: int) -> torch.Tensor:
        """Per slot: sample G continuations of the window's prefix, reward token-F1 against the truth."""
        cfg, model, device = self.cfg, self.model, self.model.device
        per_slot = []
        for i, w in enumerate(batch.windows):
            n = w.end - w.start
            length = min(cfg.grpo_length, n - 1)
            prefix, truth = batch.ids[i, :n - length], batch.ids[i, n - length:n].tolist()
            slot = slots[i:i + 1]
            torch.manual_seed(cfg.seed * 1_000_003 + w.start * 31 + step)
            with torch.no_grad(), self.method.forward_context(slot):
                prompts = prefix.expand(cfg.grpo_group, -1)
                samples = model.model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                               max_new_tokens=length, min_new_tokens=length,
                                               pad_token_id=_pad_id(model.config))
            continuation = samples[:, prefix.shape[0]:]  # (G, length)
            rewards = torch.tensor([losses.token_f1(c.tolist(), truth) for c in continuation], device=device)
            advantages = losses.group_advantages(rewards)
            logprobs = self._sample_logprobs(samples, prefix.shape[0], slot)
            reference = None
            if cfg.grpo_beta:
                with torch.no_grad(), self.method.base_context():
                    reference = self._sample_logprobs(samples, prefix.shape[0], None)
            per_slot.append(losses.grpo(logprobs, torch.ones_like(logprobs), advantages, reference, cfg.grpo_beta))
        return torch.stack(per_slot)

    def _sample_logprobs(self, samples, prefix_len, slot):
        ctx = self.method.forward_context(slot) if slot is not None else contextlib.nullcontext()
        with ctx:
            logits = self.model.model(input_ids=samples).logits[:, prefix_len - 1:-1].float()
        return torch.log_softmax(logits, -1).gather(-1, samples[:, prefix_len:, None])[..., 0]  # (G, length)

    # ---- one window for every active slot ---------------------------------------------------------------
    def step_window(self, batch: _Batch, slots: torch.Tensor, docs: list[Document]):
        """Record each slot's pre-update NLL sum, then train; returns (nll sums (S,), train losses (S,) | None)."""
        cfg, method = self.cfg, self.method
        teacher = self._teacher_logits(batch, docs) if cfg.loss in ("SD", "MIX") and cfg.steps else None
        train_loss = None
        if self.shared_forward:
            with method.train_context():
                logits = self._logits(batch, slots)
            nll = token_nll(logits.detach() if cfg.loss == "SD" else logits, batch.ids, batch.mask)
            nll_sum = (nll.detach() * batch.score).sum(1)
            loss = self._window_loss(logits, nll, batch, teacher)
            loss.sum().backward()
            method.step(slots)
            return nll_sum, loss.detach()
        with torch.no_grad():
            nll_sum = (token_nll(self._logits(batch, slots), batch.ids, batch.mask) * batch.score).sum(1)
        for step in range(cfg.steps):
            with method.train_context():
                if cfg.loss == "GRPO":
                    loss = self._grpo_loss(batch, slots, step)
                else:
                    logits = self._logits(batch, slots)
                    loss = self._window_loss(logits, token_nll(logits, batch.ids, batch.mask), batch, teacher)
            loss.sum().backward()
            method.step(slots)
            train_loss = loss.detach() if train_loss is None else train_loss
        return nll_sum, train_loss

    # ---- the loop ---------------------------------------------------------------------------------------
    def run(self, documents: Iterable[Document], batch_size: int = 1) -> Iterator[DocumentResult]:
        method = self.method
        num_slots = max(1, min(batch_size, method.max_slots or batch_size))
        method.start(num_slots)
        queue = iter(documents)
        slots: list[_Slot | None] = [None] * num_slots
        try:
            for i in range(num_slots):
                slots[i] = self._fill(i, queue)
            while any(slots):
                active = [i for i, s in enumerate(slots) if s is not None]
                batch = _Batch([slots[i] for i in active], self.width, self.model.device)
                started = time.perf_counter()
                nll_sums, train_losses = self.step_window(batch, torch.tensor(active, device=self.model.device),
                                                          [slots[i].doc for i in active])
                nll_sums = nll_sums.tolist()
                train_losses = [None] * len(active) if train_losses is None else train_losses.tolist()
                seconds = (time.perf_counter() - started) / len(active)
                for k, i in enumerate(active):
                    slot, w = slots[i], batch.windows[k]
                    slot.result.windows.append(WindowResult(slot.next_window, w.scored_from, w.end - w.scored_from,
                                                            nll_sums[k], train_losses[k], seconds))
                    slot.next_window += 1
                    bad = [v for v in (nll_sums[k], train_losses[k]) if v is not None and not math.isfinite(v)]
                    if bad:
                        slot.result.error = f"non-finite loss at window {slot.next_window - 1}: the document was stopped"
                    if bad or slot.next_window == len(slot.doc.windows):
                        slot.result.seconds = time.perf_counter() - slot.started
                        yield slot.result  # the slot still holds this document's state
                        slots[i] = self._fill(i, queue)
        finally:
            method.finish()

    def _fill(self, slot: int, queue) -> _Slot | None:
        doc = next(queue, None)
        if doc is None:
            return None
        if not doc.windows:
            raise LocasError(f"document {doc.doc_id} has no window to score")
        first = doc.windows[0]
        self.method.reset(slot, doc.tokens[first.start:first.end].unsqueeze(0).to(self.model.device))
        result = DocumentResult(doc, slot, trainable_params=self.method.trainable_parameters())
        return _Slot(doc, result)


def _pad_id(config) -> int:
    """A pad id for sampling: the model's pad token, else its (first) EOS token, else 0."""
    for candidate in (getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return candidate
    return 0


def adapt_documents(model: CausalLMWithMemory, documents: Iterable[Document], cfg: AdaptConfig,
                    batch_size: int = 1) -> Iterator[DocumentResult]:
    """Adapt to each document online (evaluate, then update), `batch_size` documents at a time."""
    from locas.methods import make_method

    return Adapter(model, make_method(model, cfg), cfg).run(documents, batch_size)
