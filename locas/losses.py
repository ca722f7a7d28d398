"""Test-time losses (SPEC §4). Each returns one loss per document slot, shape (S,): their sum gives every
document its one-at-a-time gradient, since the memory's slots never mix."""
from __future__ import annotations

import threading
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


# ---- next-token NLL from the final hidden states, without keeping (T, V) logits -------------------------
LOGIT_ELEMENTS_PER_CHUNK = 1 << 25  # logits computed at once: rows = this // vocabulary (128 MB of fp32)


class _LogitsWorkspace(threading.local):
    """CPU logits buffers kept from call to call, per thread: a fresh (T, V) tensor per window costs the CPU
    thousands of page faults, as the allocator hands blocks of that size back to the system when freed."""

    def __init__(self):
        super().__init__()
        self.buffers: dict = {}

    def get(self, rows: int, cols: int, dtype: torch.dtype, use: str) -> torch.Tensor:
        buffer = self.buffers.get((dtype, use))
        if buffer is None or buffer.numel() < rows * cols:
            buffer = self.buffers[(dtype, use)] = torch.empty(rows * cols, dtype=dtype)
        return buffer[:rows * cols].view(rows, cols)


_WORKSPACE = _LogitsWorkspace()


def _log_probs(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 log-softmax of `hidden @ weight.T` (rows, V); on the CPU (eager) into the reused workspace."""
    if hidden.device.type != "cpu" or torch.compiler.is_compiling():
        return torch.log_softmax((hidden @ weight.t()).float(), 1)
    rows, vocab = hidden.shape[0], weight.shape[0]
    logits = torch.mm(hidden, weight.t(), out=_WORKSPACE.get(rows, vocab, hidden.dtype, "logits"))
    if logits.dtype != torch.float32:
        logits = _WORKSPACE.get(rows, vocab, torch.float32, "fp32 logits").copy_(logits)
    return torch.log_softmax(logits, 1, out=_WORKSPACE.get(rows, vocab, torch.float32, "log-probs"))


class _LinearNLL(torch.autograd.Function):
    """nll_i = −log_softmax(h_i Wᵀ)[y_i] per row, in fp32 over the vocabulary, a chunk of rows at a time.

    When h needs a gradient, the forward also computes G_i = (softmax(h_i Wᵀ) − e_{y_i}) W: the upstream
    gradient of row i is one number, so the backward is just grad_i · G_i, and no logits outlive the forward
    nor are recomputed (as checkpointed chunks would). W gets no gradient: the head is frozen."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        need_grad = ctx.needs_input_grad[0]
        n = hidden.shape[0]
        rows = max(1, min(n, LOGIT_ELEMENTS_PER_CHUNK // weight.shape[0]))
        nll = torch.empty(n, device=hidden.device, dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            log_probs, y = _log_probs(hidden[lo:hi], weight), targets[lo:hi, None]
            nll[lo:hi] = -log_probs.gather(1, y)[:, 0]
            if need_grad:
                probs = log_probs.exp_()
                probs.scatter_add_(1, y, torch.full(y.shape, -1.0, device=y.device))  # softmax − one-hot
                grad_hidden[lo:hi] = torch.mm(probs.to(weight.dtype), weight)
        if need_grad:
            ctx.save_for_backward(grad_hidden)
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        (grad_hidden,) = ctx.saved_tensors
        return grad_nll.to(grad_hidden.dtype)[:, None] * grad_hidden, None, None


def linear_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """NLL (...) of `targets` (...) under logits `hidden @ weight.T`; hidden (..., d), weight (V, d) frozen.
    Equal to cross-entropy over the whole logits; differentiable once, in `hidden` only."""
    shape = targets.shape
    return _LinearNLL.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1)).view(shape)


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """NLL (B, T−1) of each next token given logits (B, T, V); targets under a zero mask get 0."""
    def chunk_nll(chunk_logits, targets):
        return F.cross_entropy(chunk_logits.float().transpose(1, 2), targets, reduction="none")

    nll = over_positions(chunk_nll, logits[:, :-1], input_ids[:, 1:])
    return nll if attention_mask is None else nll * attention_mask[:, 1:].to(nll.dtype)
