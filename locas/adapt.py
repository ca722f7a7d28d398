"""The online loop (SPEC §6, docs/method.md): memorize on window 0, then per window evaluate, then update.

The NLL recorded for a window is always the pre-update one; with one step per window (and a
deterministic training forward) the scoring forward and the training forward are one computation.
Documents run in slots along the memory's batch axis; a finished document's slot is refilled at once.

The accelerator is never waited on per window: each token's NLL stays on the device until its document
ends, step times are CUDA events read then, and the only per-window read is the previous window's
"non-finite?" flags, copied to the host behind the current step (pipelined by one window).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from locas import losses
from locas.config import AdaptConfig
from locas.documents import Document, DocumentResult, Source, WindowResult, sliding_windows
from locas.errors import LocasError
from locas.methods import make_method
from locas.model import CausalLMWithMemory, token_nll


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
    """The current window of each active slot, right-padded to the window size (static shapes)."""

    def __init__(self, slots: list[Slot], width: int, device):
        S = len(slots)
        ids = torch.zeros(S, width, dtype=torch.long)
        mask = torch.zeros(S, width, dtype=torch.long)
        score = torch.zeros(S, width - 1)
        self.docs = [s.doc for s in slots]
        self.slot_ids = [s.index for s in slots]
        self.windows = [s.doc.windows[s.next_window] for s in slots]
        for i, (slot, w) in enumerate(zip(slots, self.windows)):
            n = w.end - w.start
            ids[i, :n] = slot.doc.tokens[w.start:w.end]
            mask[i, :n] = 1
            score[i, w.scored_from - w.start - 1:n - 1] = 1  # position j predicts token start + j + 1
        self.ids, self.mask, self.score = ids.to(device), mask.to(device), score.to(device)
        self.slots = torch.tensor(self.slot_ids, device=device)


@dataclass
class StepOutput:
    """One window step's results per slot (S): the pre-update NLL of every target position (S, T−1), zero
    outside the scored ones, and the training loss (S,), or None when nothing trains."""

    token_nll: torch.Tensor
    train_loss: torch.Tensor | None


class Adapter:
    """Runs documents through a method with a loss; see `adapt_documents`."""

    def __init__(self, model: CausalLMWithMemory, method, cfg: AdaptConfig):
        self.model, self.method, self.cfg = model, method, cfg
        self.width = cfg.window_size
        self.shared_forward = cfg.steps == 1 and cfg.loss != "GRPO" and method.deterministic_training

    # ---- forwards --------------------------------------------------------------------------------------
    def _logits(self, batch: WindowBatch, slots: torch.Tensor | None = None):
        with self.method.forward_context(batch.slots if slots is None else slots):
            return self.model(batch.ids, attention_mask=batch.mask).logits

    def _teacher_starts(self, batch: WindowBatch) -> list[int]:
        """Per slot, the first token the SD teacher reads: up to `teacher_tokens` before the window."""
        return [max(0, w.start - self.cfg.teacher_tokens) for w in batch.windows]

    @torch.no_grad()
    def _teacher_logits(self, batch: WindowBatch, starts: list[int]):
        """Frozen base, memory off, reading the preceding tokens plus the window."""
        out = torch.zeros(len(starts), self.width, self.model.config.vocab_size, device=self.model.device,
                          dtype=self.model.model.dtype)  # (S, T, V) in the model's dtype: fp32 would double it
        has_context = torch.zeros(len(starts), 1, device=self.model.device)
        with self.method.base_context():
            for i, (doc, w, lo) in enumerate(zip(batch.docs, batch.windows, starts)):
                if lo == w.start:
                    continue  # nothing precedes: the teacher would equal the student
                ids = doc.tokens[lo:w.end].unsqueeze(0).to(self.model.device)
                logits = self.model(ids).logits[0]
                out[i, :w.end - w.start] = logits[w.start - lo:]
                has_context[i] = 1
        return out, has_context

    def _support(self, batch: WindowBatch, starts: list[int]) -> list[bool]:
        """Whether each slot's loss can have a gradient at all: SD needs text before the window (window 0 has
        none), MIX either part. A slot without support takes no optimizer step (docs/method.md)."""
        cfg = self.cfg
        sd = [lo < w.start for w, lo in zip(batch.windows, starts)]
        if cfg.loss == "SD":
            return sd
        if cfg.loss == "MIX":
            return [cfg.mix_lambda > 0 or (cfg.mix_lambda < 1 and has) for has in sd]
        return [True] * len(sd)

    def _window_loss(self, logits, nll, batch: WindowBatch, teacher):
        cfg = self.cfg
        if cfg.loss == "NTP":
            return losses.ntp(nll, batch.score)
        teacher_logits, has_context = teacher
        sd = losses.self_distillation(logits, teacher_logits, batch.score * has_context, cfg.temperature)
        if cfg.loss == "SD":
            return sd
        return cfg.mix_lambda * losses.ntp(nll, batch.score) + (1 - cfg.mix_lambda) * sd

    def _grpo_loss(self, batch: WindowBatch, step: int) -> tuple[torch.Tensor, list[bool]]:
        """Per slot: sample G continuations of the window's prefix (temperature 1, no top-k or top-p
        truncation), reward token-F1 against the truth. A group of equal rewards has no advantage and,
        without a KL term, no support."""
        cfg, model, device = self.cfg, self.model, self.model.device
        per_slot, support = [], []
        for i, w in enumerate(batch.windows):
            n = w.end - w.start
            length = min(cfg.grpo_length, n - 1)
            prefix, truth = batch.ids[i, :n - length], batch.ids[i, n - length:n].tolist()
            slot = batch.slots[i:i + 1]
            torch.manual_seed(cfg.seed * 1_000_003 + w.start * 31 + step)
            with torch.no_grad(), self.method.forward_context(slot):
                prompts = prefix.expand(cfg.grpo_group, -1)
                samples = model.model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                               temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=length,
                                               min_new_tokens=length, pad_token_id=_pad_id(model.config))
            continuation = samples[:, prefix.shape[0]:]  # (G, length)
            rewards = [losses.token_f1(c.tolist(), truth) for c in continuation]
            advantages = losses.group_advantages(torch.tensor(rewards, device=device))
            logprobs = self._sample_logprobs(samples, prefix.shape[0], slot)
            reference = None
            if cfg.grpo_beta:
                with torch.no_grad(), self.method.base_context():
                    reference = self._sample_logprobs(samples, prefix.shape[0], None)
            per_slot.append(losses.grpo(logprobs, torch.ones_like(logprobs), advantages, reference, cfg.grpo_beta))
            support.append(len(set(rewards)) > 1 or cfg.grpo_beta > 0)
        return torch.stack(per_slot), support

    def _sample_logprobs(self, samples, prefix_len, slot):
        ctx = self.method.forward_context(slot) if slot is not None else contextlib.nullcontext()
        with ctx:
            logits = self.model.model(input_ids=samples).logits[:, prefix_len - 1:-1].float()
        return torch.log_softmax(logits, -1).gather(-1, samples[:, prefix_len:, None])[..., 0]  # (G, length)

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
        cfg, method = self.cfg, self.method
        if not cfg.steps:
            with torch.no_grad():
                return StepOutput(token_nll(self._logits(batch), batch.ids, batch.mask) * batch.score, None)
        starts = self._teacher_starts(batch)
        teacher = self._teacher_logits(batch, starts) if cfg.loss in ("SD", "MIX") else None
        support = self._support(batch, starts)
        if self.shared_forward:
            with method.train_context():
                logits = self._logits(batch)
            nll = token_nll(logits.detach() if cfg.loss == "SD" else logits, batch.ids, batch.mask)
            loss = self._window_loss(logits, nll, batch, teacher)
            self._train_step(loss, batch, support)
            return StepOutput(nll.detach() * batch.score, loss.detach())
        with torch.no_grad():
            nll = token_nll(self._logits(batch), batch.ids, batch.mask) * batch.score
        train_loss = None
        for step in range(cfg.steps):
            with method.train_context():
                if cfg.loss == "GRPO":
                    loss, support = self._grpo_loss(batch, step)
                else:
                    logits = self._logits(batch)
                    loss = self._window_loss(logits, token_nll(logits, batch.ids, batch.mask), batch, teacher)
            self._train_step(loss, batch, support)
            train_loss = loss.detach() if train_loss is None else train_loss
        return StepOutput(nll, train_loss)

    # ---- the loop ---------------------------------------------------------------------------------------
    def run(self, documents: Iterable[Document] | Source, batch_size: int = 1, progress=None) -> Iterator[DocumentResult]:
        """Yield each document's result as it finishes (see DocumentResult). `documents` is a list or a
        Source whose documents may arrive while it runs: a free slot takes the next one at once. `progress`
        (a tqdm-like bar) advances by one per document window."""
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
                batch = WindowBatch(active, self.width, device)
                started = clock.mark()
                out = self.step_window(batch)
                step = Step(started, clock.mark(), len(active))
                flags = HostFlags(_non_finite(out))
                for k, slot in enumerate(active):
                    slot.record(out.token_nll[k], None if out.train_loss is None else out.train_loss[k], step)
                if progress is not None:
                    progress.update(len(active))
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
                        yield slot.finish(bad.get(slot.index))  # the slot still holds this document's state
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
    return Adapter(model, make_method(model, cfg), cfg).run(documents, batch_size)


@contextlib.contextmanager
def adapted(model: CausalLMWithMemory, document: Document, cfg: AdaptConfig, progress=None, desc: str = "adapting"):
    """Adapt to one document, then hold its adapted state: inside the block every forward of `model` (and
    `generate`) runs with it, without gradients. Yields (result, method); `method.export(result.slot)` is
    the state as a plain model. A non-finite loss raises LocasError: answers under a broken state mean
    nothing. `progress` (a tqdm-like class) shows the windows trained on."""
    method = make_method(model, cfg)
    bar = progress(total=len(document.windows), desc=desc, unit="window") if progress else None
    with contextlib.closing(Adapter(model, method, cfg).run([document], progress=bar)) as results:
        result = next(results)
        if bar is not None:
            bar.close()
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
