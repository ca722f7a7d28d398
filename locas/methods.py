"""Methods behind one small interface: the adaptation loop calls these and never asks which method it has.

A method holds the trainable state of up to `max_slots` documents at once (slot = index along the memory's
batch axis), resets a slot for a new document, runs forwards with a slot subset's state, steps its optimizer,
and exports a slot's state as a plain model.

The class also carries what the rest of the code knows about the method: its defaults, its own config fields
(`options`: `locas.config.AdaptConfig` gathers them), what it checks in a model config, its GPU batch. Adding a
method is one class here and its entry in the registry line at the bottom (docs/design.md).
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from locas.errors import LocasError
from locas.memory import MEMORY_INITS
from locas.optim import SlotAdamW
from locas.settings import Settings, choice, option

if TYPE_CHECKING:
    from locas.config import AdaptConfig
    from locas.model import CausalLMWithMemory

GPU_BATCH = 8  # documents the frozen model reads at once on one GPU (PG-19): batch 1 is launch-bound
Name = Callable[[str, object], str]  # (field, value) → how a message names the setting: `width=8` or `--width 8`


class Method:
    """The interface the loop calls, doing nothing, and what a method declares (override in a subclass)."""

    name: str  # its --method value
    description: str  # a few words for --method's help
    default_lr: float  # the learning rate an unset --lr takes
    default_steps: int  # optimizer steps per window an unset --steps_per_window takes
    trains = True  # False: nothing trains (the loss and the optimizer settings are never read)
    options: type[Settings] | None = None  # its own AdaptConfig fields: a frozen Settings that checks them
    max_slots: int | None = None  # documents it holds at once; None: any number
    deterministic_training = True

    def __init__(self, model: CausalLMWithMemory, cfg: AdaptConfig):
        self.model, self.cfg = model, cfg

    @classmethod
    def create(cls, model: CausalLMWithMemory, cfg: AdaptConfig) -> Method:
        """The method object for `cfg` (a method whose options pick a variant of it overrides this)."""
        return cls(model, cfg)

    @classmethod
    def check_model(cls, config, cfg: AdaptConfig, name: Name) -> None:
        """Refuse, before anything loads, a model (its HF config) that cannot take `cfg`."""

    @classmethod
    def batch_on_gpu(cls, loss) -> int:
        """Documents adapted at once on one GPU (PG-19) under `loss` (a loss class)."""
        batch = loss.gpu_batch if cls.trains else GPU_BATCH
        return min(batch, cls.max_slots or batch)

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


class NoAdaptation(Method):
    """`none`: the frozen model on the same windows (context truncation)."""

    name, description = "none", "frozen model"
    default_lr, default_steps, trains = 0.0, 0, False


@dataclass(frozen=True)
class MemoryOptions(Settings):
    memory_width: int = option(64, "memory rows r per layer (memorize's keep_top)", sweep=True)
    memory_init: str = option("highest", "which MLP units seed the memory", choices=MEMORY_INITS, sweep=True)
    expand_every: str | None = option(None, "grow the memory: 'session' (LoCoMo: before each dated session after "
                                      "the first) or every N tokens (N >= window_size), by a block memorized on the "
                                      "window ahead (locas/expansion.py); unset: a fixed width", added=True)
    expand_width: int | None = option(None, "rows per block the memory grows by; unset: memory_width", added=True)
    expand_max_width: int | None = option(None, "the widest the memory grows, in rows; unset: no limit", added=True)

    def __post_init__(self):
        choice("memory_init", self.memory_init, MEMORY_INITS)
        if self.memory_width < 1:
            raise LocasError(f"memory_width={self.memory_width} must be at least 1")


class LocasMemory(Method):
    """`locas`: one memory per slot, memorized on the document's first window, trained with per-slot AdamW."""

    name, description = "locas", "memory"
    default_lr, default_steps = 4e-3, 1
    options = MemoryOptions

    @classmethod
    def create(cls, model: CausalLMWithMemory, cfg: AdaptConfig) -> Method:
        """With `expand_every` set, its memory grows (locas/expanding_memory.py)."""
        if cfg.expand_every is None:
            return cls(model, cfg)
        from locas.expanding_memory import ExpandingMemory

        return ExpandingMemory(model, cfg)

    @classmethod
    def check_model(cls, config, cfg: AdaptConfig, name: Name) -> None:
        width = config.intermediate_size
        if cfg.memory_width > width:
            raise LocasError(f"{name('memory_width', cfg.memory_width)} is larger than the model's MLP ({width} units)")
        if cfg.expand_width is not None and cfg.expand_width > width:
            raise LocasError(f"{name('expand_width', cfg.expand_width)} is larger than the model's MLP ({width} units)")

    def start(self, num_slots: int) -> None:
        m = self.model
        self.memory = torch.zeros(m.num_layers, num_slots, self.cfg.memory_width, m.hidden_size, 3,
                                  device=m.device, requires_grad=True)  # (L, S, r, d, 3)
        self.optimizer = SlotAdamW(self.memory, lr=self.cfg.learning_rate)

    def reset(self, slot: int, first_window: torch.Tensor) -> None:
        fresh = self.model.memorize(first_window, keep_top=self.cfg.memory_width,
                                    memory_init=self.cfg.memory_init, seed=self.cfg.seed)
        with torch.no_grad():
            self.memory[:, slot, :fresh.shape[2]] = fresh[:, 0]
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


@dataclass(frozen=True)
class LoraOptions(Settings):
    lora_rank: int = option(64, "LoRA rank", sweep=True)
    lora_alpha: int = option(64, "LoRA alpha", sweep=True)
    lora_dropout: float = option(0.05, "LoRA dropout (active while training only)")

    def __post_init__(self):
        if self.lora_rank < 1 or not 0 <= self.lora_dropout < 1:
            raise LocasError("lora_rank must be >= 1 and lora_dropout within [0, 1)")


class TempLoRA(Method):
    """`lora`: a TempLoRA-style peft adapter on every linear layer, fresh for each document (one slot)."""

    name, description = "lora", "TempLoRA baseline"
    default_lr, default_steps = 5e-5, 2
    options = LoraOptions
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


METHODS: dict[str, type[Method]] = {}
"""The registry: --method value → its class. `locas.config.AdaptConfig` gathers the options of the methods
registered when it is first imported."""


def register_method(cls: type[Method]) -> type[Method]:
    if cls.name in METHODS:
        raise LocasError(f"a method named {cls.name!r} is registered already ({METHODS[cls.name].__name__})")
    METHODS[cls.name] = cls
    return cls


for _builtin in (NoAdaptation, LocasMemory, TempLoRA):
    register_method(_builtin)


def make_method(model: CausalLMWithMemory, cfg: AdaptConfig) -> Method:
    return METHODS[cfg.method].create(model, cfg)
