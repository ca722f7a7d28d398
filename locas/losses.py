"""Test-time losses (SPEC §4). Each returns one loss per document slot, shape (S,): their sum gives every
document its one-at-a-time gradient, since the memory's slots never mix."""
from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

POSITIONS_PER_CHUNK = 512


def over_positions(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """fn over chunks of positions (axis 1), concatenated. Under autograd each chunk is checkpointed, so the
    fp32 (S, chunk, vocab) temporaries of a log-softmax are never all alive, in forward or backward: at
    Qwen3's 152K vocabulary a whole (8, 2048, V) fp32 tensor is 10 GB."""
    length = tensors[0].shape[1]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    pieces = []
    for start in range(0, length, POSITIONS_PER_CHUNK):
        chunk = [t[:, start:start + POSITIONS_PER_CHUNK] for t in tensors]
        pieces.append(checkpoint(fn, *chunk, use_reentrant=False) if grad else fn(*chunk))
    return torch.cat(pieces, dim=1)


def ntp(nll: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over the scored tokens: nll, score_mask (S, T−1) → (S,)."""
    return (nll * score_mask).sum(1) / score_mask.sum(1).clamp_min(1)


def self_distillation(student_logits, teacher_logits, score_mask, temperature: float = 1.0) -> torch.Tensor:
    """t² · mean over scored tokens of KL(p_teacher ‖ p_student), both at temperature t.

    student_logits, teacher_logits (S, T, V) aligned on the window's positions; score_mask (S, T−1) is zero
    for a slot whose teacher read no more than the student (window 0), which therefore gets no gradient."""
    t = temperature

    def kl(student, teacher):  # (S, n, V) → (S, n)
        log_student = F.log_softmax(student.float() / t, dim=-1)
        log_teacher = F.log_softmax(teacher.float() / t, dim=-1)
        return (log_teacher.exp() * (log_teacher - log_student)).sum(-1)

    per_token = over_positions(kl, student_logits[:, :-1], teacher_logits[:, :-1])  # (S, T−1)
    return t * t * (per_token * score_mask).sum(1) / score_mask.sum(1).clamp_min(1)


def token_f1(prediction: list[int], reference: list[int]) -> float:
    """Bag-of-tokens F1 between two token id sequences (the GRPO reward)."""
    common = sum((Counter(prediction) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Rewards standardized within the group; all zero when every reward is the same."""
    std = rewards.std()
    if not std > 0:
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean()) / std


def grpo(logprobs: torch.Tensor, sample_mask: torch.Tensor, advantages: torch.Tensor,
         ref_logprobs: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
    """−mean(advantage · mean token log-prob) + β·KL to the reference (k3 estimator); logprobs (G, n)."""
    counts = sample_mask.sum(1).clamp_min(1)
    loss = -(advantages * (logprobs * sample_mask).sum(1) / counts).mean()
    if beta and ref_logprobs is not None:
        log_ratio = ref_logprobs - logprobs
        k3 = (log_ratio.exp() - log_ratio - 1) * sample_mask
        loss = loss + beta * (k3.sum(1) / counts).mean()
    return loss
