"""AdamW over a tensor whose axis 1 holds independent documents ("slots").

torch's AdamW keeps one step count per tensor; documents batched along the memory's batch axis each need
their own, reset when a finished document's slot is refilled, so each slot trains as if alone.
"""
from __future__ import annotations

import torch


class SlotAdamW:
    def __init__(self, param: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.param, self.lr, self.betas, self.eps, self.weight_decay = param, lr, betas, eps, weight_decay
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.step_count = torch.zeros(param.shape[1], device=param.device)  # (S,)

    def reset(self, slot: int) -> None:
        self.exp_avg[:, slot] = 0
        self.exp_avg_sq[:, slot] = 0
        self.step_count[slot] = 0

    @torch.no_grad()
    def step(self, slots: torch.Tensor) -> None:
        """One AdamW update of the given slots (LongTensor of slot indices); the other slots are untouched."""
        beta1, beta2 = self.betas
        if len(slots) == self.param.shape[1]:  # every slot (the loop passes them in order): in place
            self._step_all()
            return
        grad = self.param.grad[:, slots]
        self.step_count[slots] += 1
        t = self.step_count[slots].view(1, -1, *([1] * (self.param.dim() - 2)))
        exp_avg = self.exp_avg[:, slots].lerp_(grad, 1 - beta1)
        exp_avg_sq = self.exp_avg_sq[:, slots].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        self.exp_avg[:, slots], self.exp_avg_sq[:, slots] = exp_avg, exp_avg_sq
        denom = (exp_avg_sq / (1 - beta2 ** t)).sqrt_().add_(self.eps)
        update = exp_avg / (1 - beta1 ** t) / denom
        values = self.param[:, slots] * (1 - self.lr * self.weight_decay) - self.lr * update
        self.param[:, slots] = values
        self.param.grad = None

    def _step_all(self) -> None:
        """Every slot at once, in place, without gathering and scattering the state."""
        beta1, beta2 = self.betas
        param, grad = self.param, self.param.grad
        self.step_count += 1
        view = (1, -1, *([1] * (param.dim() - 2)))
        bias1 = (1 - beta1 ** self.step_count).view(view)
        bias2_sqrt = (1 - beta2 ** self.step_count).sqrt_().view(view)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if self.weight_decay:
            param.mul_(1 - self.lr * self.weight_decay)
        denom = (self.exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
        param.addcdiv_(self.exp_avg / bias1, denom, value=-self.lr)
        self.param.grad = None
