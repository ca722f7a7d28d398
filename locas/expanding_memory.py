"""An expanding Locas memory (issue 23): the memory of each slot grows by a block memorized on the window ahead,
on the schedule of `locas/expansion.py`, with τ kept at the first block's rank so that the output does not
change when a block (whose values are 0) is appended.

Slots share one tensor (L, S, R, d, 3) whose width R is the widest slot's: a narrower slot's rows past its own
width are all zero, and stay so. With K = G = V = 0 a row adds SiLU(0)·0 = 0 to the output and gets zero
gradients (dL/dV ∝ SiLU(g·a)(k·a) = 0, dL/dK and dL/dG ∝ V = 0), so AdamW (no weight decay) never moves it:
documents batched together grow at different times, and a slot pays for the widest slot's rows. The optimizer's
moments grow with the tensor (new rows start at zero) and each slot keeps its own step count.
"""
from __future__ import annotations

import torch

from locas.expansion import block_width, grows_before
from locas.methods import LocasMemory


class ExpandingMemory(LocasMemory):
    """`locas` with `expand_every` set: see the module docstring."""

    def start(self, num_slots: int) -> None:
        super().start(num_slots)
        self.widths = [self.cfg.memory_width] * num_slots  # rows in force per slot
        self.blocks = [0] * num_slots  # blocks appended to the slot's document so far
        self.trace: list[list[int]] = [[] for _ in range(num_slots)]  # per window stepped: the rows in force

    def reset(self, slot: int, first_window: torch.Tensor) -> None:
        super().reset(slot, first_window)
        with torch.no_grad():
            self.memory[:, slot, self.cfg.memory_width:] = 0  # the rows it grew for its last document
        self.widths[slot], self.blocks[slot], self.trace[slot] = self.cfg.memory_width, 0, []
        self._resize(max(self.widths))  # rows no slot uses any more are dropped

    def before_window(self, batch) -> None:
        """Append a block to every slot whose schedule says so before this window; note each slot's width."""
        for slot, doc, k, window in zip(batch.slot_ids, batch.docs, batch.window_indices, batch.windows):
            rows = block_width(self.cfg, self.widths[slot])
            if rows and grows_before(self.cfg, doc, k):
                tokens = doc.tokens[window.start:window.end].unsqueeze(0).to(self.model.device)
                self.blocks[slot] += 1
                block = self.model.memorize(tokens, keep_top=rows, memory_init=self.cfg.memory_init,
                                            seed=self.cfg.seed + self.blocks[slot])
                self.append(slot, block[:, 0])
            self.trace[slot].append(self.widths[slot])

    def append(self, slot: int, block: torch.Tensor) -> None:
        """Write `block` (L, rows, d, 3) after the slot's rows, widening the shared tensor if it must."""
        start = self.widths[slot]
        end = start + block.shape[1]
        if end > self.memory.shape[2]:
            self._resize(end)
        with torch.no_grad():
            self.memory[:, slot, start:end] = block
        self.widths[slot] = end

    def _resize(self, width: int) -> None:
        """The shared tensor and the optimizer's moments at `width` rows (kept rows unchanged, new ones 0)."""
        if width == self.memory.shape[2]:
            return
        kept = min(width, self.memory.shape[2])
        resized = self.memory.new_zeros(*self.memory.shape[:2], width, *self.memory.shape[3:])
        resized[:, :, :kept] = self.memory.detach()[:, :, :kept]
        self.memory = resized.requires_grad_(True)
        self.optimizer.resize(self.memory)

    def forward_context(self, slots: torch.Tensor):
        return self.model.use_memory(self.slot_memory(slots), base_rank=self.cfg.memory_width)

    def annotate(self, result) -> None:
        """The widths in force per window kept, and the trainable parameters at the last of them."""
        result.widths = self.trace[result.slot][:len(result.windows)]
        result.trainable_params = self.model.parameter_count(self.memory[:, :1, :result.widths[-1]])

    def export(self, slot: int):
        memory = self.memory.detach()[:, slot:slot + 1, :self.widths[slot]]
        return self.model.to_dense(memory, base_rank=self.cfg.memory_width)
