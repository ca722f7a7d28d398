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
    def resize(self, param: torch.Tensor) -> None:
        """Go on with `param`, a resized copy of the parameter (same slots): the moments of entries it keeps stay,
        those of new entries start at zero (an expanding memory's new rows)."""
        def fit(state):
            out = torch.zeros_like(param)
            kept = tuple(slice(0, min(a, b)) for a, b in zip(state.shape, param.shape))
            out[kept] = state[kept]
            return out

        self.param, self.exp_avg, self.exp_avg_sq = param, fit(self.exp_avg), fit(self.exp_avg_sq)

    @torch.no_grad()
    def step(self, slots: torch.Tensor) -> None:
        """One AdamW update of the given slots (LongTensor of slot indices); the other slots are untouched."""
        if len(slots) == self.param.shape[1]:  # every slot: the state is updated where it lies
            self.step_count += 1
            self._update(self.param, self.param.grad, self.exp_avg, self.exp_avg_sq, self.step_count)
        else:  # a subset: gathered (copies), updated, scattered back
            self.step_count[slots] += 1
            param, exp_avg, exp_avg_sq = self.param[:, slots], self.exp_avg[:, slots], self.exp_avg_sq[:, slots]
            self._update(param, self.param.grad[:, slots], exp_avg, exp_avg_sq, self.step_count[slots])
            self.param[:, slots], self.exp_avg[:, slots], self.exp_avg_sq[:, slots] = param, exp_avg, exp_avg_sq
        self.param.grad = None

    def _update(self, param, grad, exp_avg, exp_avg_sq, steps: torch.Tensor) -> None:
        """AdamW in place on these tensors (slots on axis 1), `steps` (S,) each slot's step count after this step."""
        beta1, beta2 = self.betas
        view = (1, -1, *([1] * (param.dim() - 2)))
        bias1 = (1 - beta1 ** steps).view(view)
        bias2_sqrt = (1 - beta2 ** steps).sqrt().view(view)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if self.weight_decay:
            param.mul_(1 - self.lr * self.weight_decay)
        denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
        param.addcdiv_(exp_avg / bias1, denom, value=-self.lr)
