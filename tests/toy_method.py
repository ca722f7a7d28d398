"""A method added the way docs/design.md says, in this one file: a memory trained by plain SGD with momentum,
with two options of its own. Imported before `locas.config` (test_registries.py runs it in a fresh process),
so that AdaptConfig, the flags and the sweep normalization gather its options."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from locas.errors import LocasError
from locas.methods import Method, register_method
from locas.settings import Settings, option


@dataclass(frozen=True)
class SGDOptions(Settings):
    sgd_rows: int = option(8, "memory rows per layer of the SGD toy")
    sgd_momentum: float = option(0.0, "SGD momentum of the toy")

    def __post_init__(self):
        if self.sgd_rows < 1 or not 0 <= self.sgd_momentum < 1:
            raise LocasError("sgd_rows must be >= 1 and sgd_momentum within [0, 1)")


class SGDMemory(Method):
    """One memory (one document at a time), memorized on the first window, trained with torch's SGD."""

    name, description = "sgd", "toy: memory under SGD"
    default_lr, default_steps = 0.05, 1
    options = SGDOptions
    max_slots = 1

    def start(self, num_slots: int) -> None:
        m = self.model
        self.memory = torch.zeros(m.num_layers, 1, self.cfg.sgd_rows, m.hidden_size, 3, requires_grad=True)

    def reset(self, slot: int, first_window: torch.Tensor) -> None:
        with torch.no_grad():
            self.memory.copy_(self.model.memorize(first_window, keep_top=self.cfg.sgd_rows))
        self.optimizer = torch.optim.SGD([self.memory], lr=self.cfg.learning_rate, momentum=self.cfg.sgd_momentum)

    def forward_context(self, slots: torch.Tensor):
        return self.model.use_memory(self.memory)

    def step(self, slots: torch.Tensor) -> None:
        if len(slots):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def trainable_parameters(self) -> int:
        return self.model.parameter_count(self.memory)


register_method(SGDMemory)
