"""Methods behind one small interface: the adaptation loop calls these and never asks which method it has.

A method holds the trainable state of up to `max_slots` documents at once (slot = index along the memory's
batch axis), resets a slot for a new document, runs forwards with a slot subset's state, steps its optimizer,
and exports a slot's state as a plain model.
"""
from __future__ import annotations

import contextlib
import copy

import torch

from locas.config import AdaptConfig
from locas.errors import LocasError
from locas.model import CausalLMWithMemory
from locas.optim import SlotAdamW


class NoAdaptation:
    """`none`: the frozen model on the same windows (context truncation)."""

    max_slots = None
    deterministic_training = True

    def __init__(self, model: CausalLMWithMemory, cfg: AdaptConfig):
        self.model, self.cfg = model, cfg

    def start(self, num_slots: int) -> None:
        pass

    def reset(self, slot: int, first_window: torch.Tensor) -> None:
        pass

    def forward_context(self, slots: torch.Tensor):
        return contextlib.nullcontext()

    def base_context(self):
        """Forwards inside run the frozen base alone (the SD teacher, the GRPO reference)."""
        return contextlib.nullcontext()

    def train_context(self):
        return contextlib.nullcontext()

    def before_window(self, batch) -> None:
        """Called before each window step (`WindowBatch`): an expanding memory grows here."""

    def step(self, slots: torch.Tensor) -> None:
        """One optimizer step for `slots` (those whose loss had support in this window)."""

    def trainable_parameters(self) -> int:
        return 0

    def annotate(self, result) -> None:
        """Add to a finished document's result what its rows record of the state (an expanding memory's widths)."""

    def export(self, slot: int):
        """A plain model carrying the slot's state (the frozen model itself for `none`)."""
        return self.model.model

    def finish(self) -> None:
        pass


class LocasMemory(NoAdaptation):
    """`locas`: one memory per slot, memorized on the document's first window, trained with per-slot AdamW."""

    def start(self, num_slots: int) -> None:
        m = self.model
        if self.cfg.memory_width > m.intermediate_size:
            raise LocasError(f"memory_width={self.cfg.memory_width} is larger than the model's MLP "
                             f"({m.intermediate_size} units)")
        self.memory = torch.zeros(m.num_layers, num_slots, self.cfg.memory_width, m.hidden_size, 3,
                                  device=m.device, requires_grad=True)  # (L, S, r, d, 3)
        self.optimizer = SlotAdamW(self.memory, lr=self.cfg.learning_rate)

    def reset(self, slot: int, first_window: torch.Tensor) -> None:
        fresh = self.model.memorize(first_window, keep_top=self.cfg.memory_width,
                                    memory_init=self.cfg.memory_init, seed=self.cfg.seed)
        with torch.no_grad():
            self.memory[:, slot, :fresh.shape[2]] = fresh[:, 0]
            self.memory[:, slot, fresh.shape[2]:] = 0  # rows an expanding memory had added for the last document
        self.optimizer.reset(slot)

    def slot_memory(self, slots: torch.Tensor) -> torch.Tensor:
        if len(slots) == self.memory.shape[1]:
            return self.memory  # every slot, in order: no gather
        return self.memory[:, slots]

    def forward_context(self, slots: torch.Tensor):
        return self.model.use_memory(self.slot_memory(slots))

    def step(self, slots: torch.Tensor) -> None:
        self.optimizer.step(slots)

    def trainable_parameters(self) -> int:
        return self.model.parameter_count(self.memory)

    def export(self, slot: int):
        return self.model.to_dense(self.memory.detach(), batch_index=slot)


class TempLoRA(NoAdaptation):
    """`lora`: a TempLoRA-style peft adapter on every linear layer, fresh for each document (one slot)."""

    max_slots = 1
    TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    @property
    def deterministic_training(self) -> bool:
        return self.cfg.lora_dropout == 0

    def start(self, num_slots: int) -> None:
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        config = LoraConfig(r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_alpha,
                            lora_dropout=self.cfg.lora_dropout, target_modules=list(self.TARGETS))
        self.lora = LoraModel(self.model.model, config, "templora")  # injects in place; `finish` removes it
        self.params = [p for n, p in self.model.model.named_parameters() if "lora_" in n]
        for p in self.params:  # fp32 adapter on a bf16 base, as PeftModel does: lr 5e-5 updates vanish in bf16
            p.data = p.data.float()
        self.model.model.eval()

    def reset(self, slot: int, first_window: torch.Tensor) -> None:
        from peft.tuners.lora import LoraLayer

        torch.manual_seed(self.cfg.seed)
        for module in self.model.model.modules():
            if isinstance(module, LoraLayer):
                module.reset_lora_parameters("templora", init_lora_weights=True)
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.learning_rate, weight_decay=0.0)

    @contextlib.contextmanager
    def base_context(self):
        self.lora.disable_adapter_layers()
        try:
            yield
        finally:
            self.lora.enable_adapter_layers()

    @contextlib.contextmanager
    def train_context(self):
        """LoRA dropout is active while training, off while scoring."""
        self.model.model.train()
        try:
            yield
        finally:
            self.model.model.eval()

    def step(self, slots: torch.Tensor) -> None:
        if len(slots):  # an empty `slots`: the loss had no support, so Adam's state and step count stay
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def export(self, slot: int):
        return copy.deepcopy(self.lora).merge_and_unload()

    def finish(self) -> None:
        self.lora.unload()


METHOD_CLASSES = {"none": NoAdaptation, "locas": LocasMemory, "lora": TempLoRA}


def make_method(model: CausalLMWithMemory, cfg: AdaptConfig):
    method_class = METHOD_CLASSES[cfg.method]
    if method_class is LocasMemory and cfg.expand_every is not None:
        from locas.expanding_memory import ExpandingMemory

        method_class = ExpandingMemory
    return method_class(model, cfg)
