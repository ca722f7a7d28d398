"""The test-time losses as objects the adaptation loop calls (SPEC §4), and their registry.

A loss class carries its name (and aliases), its own config fields (`options`: `locas.config.AdaptConfig`
gathers them), whether it needs a teacher (the frozen base reading text before the window), whether its
training forward also gives the window's pre-update NLL (then one deterministic step per window scores and
trains in one forward), how many documents one GPU adapts at once under it, and it computes its loss. The
math is in `locas.losses`. Adding a loss is one class here and its entry in the registry line at the
bottom (docs/design.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch

from locas import losses
from locas.errors import LocasError
from locas.losses import token_nll
from locas.settings import Settings, option


class LossOutput(NamedTuple):
    loss: torch.Tensor  # (S,) one loss per slot
    nll: torch.Tensor | None  # (S, T−1) the window's pre-update NLL, when this forward gave it
    support: list[bool]  # per slot: whether its loss can have a gradient (a slot without takes no step)


def window_nll(model, method, batch) -> torch.Tensor:
    """Per-token NLL (S, T−1) of the batch's windows under the slots' state; for a plain output head no
    (S, T, V) logits are kept (`compute_nll`)."""
    with method.forward_context(batch.slots):
        return model.compute_nll(batch.ids)


class Loss:
    """What a loss declares (override in a subclass) and the interface the loop calls."""

    name: str  # its --loss value
    description: str  # a few words for --loss's help
    aliases: tuple[str, ...] = ()  # other --loss values meaning this one
    options: type[Settings] | None = None  # its own AdaptConfig fields: a frozen Settings that checks them
    needs_teacher = False  # True: it reads the frozen base on `teacher_tokens(cfg)` tokens before each window
    shares_scoring_forward = True  # False: the loop scores each window in a forward of its own
    gpu_batch = 8  # documents adapted at once on one GPU (PG-19) under this loss: batch 1 is launch-bound

    def __init__(self, model, method, cfg):
        self.model, self.method, self.cfg = model, method, cfg

    def prepare(self, batch):
        """What every step of this window shares, computed once per window (None: nothing)."""

    def __call__(self, batch, prepared, step: int) -> LossOutput:
        raise NotImplementedError


class NextToken(Loss):
    name, description = "NTP", "next-token prediction"

    def __call__(self, batch, prepared, step: int) -> LossOutput:
        nll = window_nll(self.model, self.method, batch)
        return LossOutput(losses.ntp(nll, batch.score), nll, [True] * len(batch.windows))


@dataclass(frozen=True)
class TeacherOptions(Settings):
    teacher_context: int | None = option(None, "tokens before the window the SD teacher reads; unset: one window")
    temperature: float = option(1.0, "SD softening temperature t")

    def __post_init__(self):
        if self.temperature <= 0 or (self.teacher_context or 0) < 0:
            raise LocasError("temperature must be > 0 and teacher_context >= 0")


@dataclass
class Teacher:
    logits: torch.Tensor  # (S, T, V) the frozen base on each window, having read the text before it
    has_context: torch.Tensor  # (S, 1) 1 where the teacher read more than the window
    support: list[bool]


class SelfDistillation(Loss):
    """SD: KL from the frozen base that reads up to `teacher_context` tokens before the window."""

    name, description, aliases = "SD", "self-distillation", ("ST",)  # ST: the seed's name
    options = TeacherOptions
    needs_teacher = True
    gpu_batch = 4  # the teacher's (S, T, V) logits are held

    @classmethod
    def teacher_tokens(cls, cfg) -> int:
        """Tokens before a window the teacher reads."""
        return cfg.window_size if cfg.teacher_context is None else cfg.teacher_context

    @torch.no_grad()
    def prepare(self, batch) -> Teacher:
        """Frozen base, memory off, reading the preceding tokens plus the window. A slot with nothing before
        its window (window 0) has no support: the teacher would equal the student."""
        model, span = self.model, self.teacher_tokens(self.cfg)
        starts = [max(0, w.start - span) for w in batch.windows]
        out = torch.zeros(len(starts), batch.width, model.config.vocab_size, device=model.device,
                          dtype=model.model.dtype)  # (S, T, V) in the model's dtype: fp32 would double it
        has_context = torch.zeros(len(starts), 1, device=model.device)
        with self.method.base_context():
            for i, (doc, w, lo) in enumerate(zip(batch.docs, batch.windows, starts)):
                if lo == w.start:
                    continue
                ids = doc.tokens[lo:w.end].unsqueeze(0).to(model.device)
                out[i, :w.end - w.start] = model(ids).logits[0][w.start - lo:]
                has_context[i] = 1
        return Teacher(out, has_context, [lo < w.start for w, lo in zip(batch.windows, starts)])

    def distill(self, batch, teacher: Teacher, detach_nll: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(SD loss (S,), per-token NLL (S, T−1)) from one forward of the student."""
        with self.method.forward_context(batch.slots):
            logits = self.model(batch.ids).logits
        nll = token_nll(logits.detach() if detach_nll else logits, batch.ids)
        score = batch.score * teacher.has_context
        return losses.self_distillation(logits, teacher.logits, score, self.cfg.temperature), nll

    def __call__(self, batch, teacher: Teacher, step: int) -> LossOutput:
        sd, nll = self.distill(batch, teacher, detach_nll=True)
        return LossOutput(sd, nll, teacher.support)


@dataclass(frozen=True)
class MixOptions(TeacherOptions):
    mix_lambda: float = option(0.5, "MIX weight of NTP (1 - it: of SD)")

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.mix_lambda <= 1.0:
            raise LocasError(f"mix_lambda={self.mix_lambda} must be within [0, 1]")


class Mix(SelfDistillation):
    """MIX: λ·NTP + (1 − λ)·SD; a slot has support where either part has."""

    name, description, aliases = "MIX", "NTP and SD mixed", ()
    options = MixOptions

    def prepare(self, batch) -> Teacher:
        teacher, lam = super().prepare(batch), self.cfg.mix_lambda
        return dataclasses.replace(teacher, support=[lam > 0 or (lam < 1 and has) for has in teacher.support])

    def __call__(self, batch, teacher: Teacher, step: int) -> LossOutput:
        sd, nll = self.distill(batch, teacher, detach_nll=False)
        lam = self.cfg.mix_lambda
        return LossOutput(lam * losses.ntp(nll, batch.score) + (1 - lam) * sd, nll, teacher.support)


@dataclass(frozen=True)
class GroupOptions(Settings):
    grpo_group: int = option(4, "GRPO samples per window")
    grpo_length: int = option(64, "GRPO sampled continuation length")
    grpo_beta: float = option(0.0, "GRPO weight of the KL to the base model")

    def __post_init__(self):
        if self.grpo_group < 2 or self.grpo_length < 1 or self.grpo_beta < 0:
            raise LocasError("grpo_group must be >= 2, grpo_length >= 1 and grpo_beta >= 0")


class GroupRelative(Loss):
    """GRPO: per slot, G sampled continuations of the window's prefix (temperature 1, no top-k or top-p
    truncation), rewarded by token F1 against the truth. A group of equal rewards has no advantage and,
    without a KL term, no support."""

    name, description = "GRPO", "group-relative policy optimization"
    options = GroupOptions
    shares_scoring_forward = False
    gpu_batch = 1

    def __call__(self, batch, prepared, step: int) -> LossOutput:
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
            with self.method.forward_context(slot):
                logprobs = self._sample_logprobs(samples, prefix.shape[0])
            reference = None
            if cfg.grpo_beta:
                with torch.no_grad(), self.method.base_context():
                    reference = self._sample_logprobs(samples, prefix.shape[0])
            per_slot.append(losses.grpo(logprobs, torch.ones_like(logprobs), advantages, reference, cfg.grpo_beta))
            support.append(len(set(rewards)) > 1 or cfg.grpo_beta > 0)
        return LossOutput(torch.stack(per_slot), None, support)

    def _sample_logprobs(self, samples, prefix_len):
        logits = self.model.model(input_ids=samples).logits[:, prefix_len - 1:-1].float()
        return torch.log_softmax(logits, -1).gather(-1, samples[:, prefix_len:, None])[..., 0]  # (G, length)


def _pad_id(config) -> int:
    """A pad id for sampling: the model's pad token, else its (first) EOS token, else 0."""
    for candidate in (getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return candidate
    return 0


LOSSES: dict[str, type[Loss]] = {}
"""The registry: --loss value → its class. `locas.config.AdaptConfig` gathers the options of the losses
registered when it is first imported."""


def register_loss(cls: type[Loss]) -> type[Loss]:
    taken = [n for n in (cls.name, *cls.aliases) if n in LOSSES or n in loss_aliases()]
    if taken:
        raise LocasError(f"a loss named {taken[0]!r} is registered already")
    LOSSES[cls.name] = cls
    return cls


def loss_aliases() -> dict[str, str]:
    """Alias → the loss's name."""
    return {alias: name for name, cls in LOSSES.items() for alias in cls.aliases}


for _builtin in (NextToken, SelfDistillation, Mix, GroupRelative):
    register_loss(_builtin)


def make_loss(model, method, cfg) -> Loss:
    return LOSSES[cfg.loss](model, method, cfg)
