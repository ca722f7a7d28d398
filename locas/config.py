"""Frozen, self-validating configs, and what the rest of the code knows about each method without loading it.

Each field carries its flag's help text (and aliases, choices) as metadata, so the command line is derived
from these classes (`orchestration/flags.py`) and `--help` shows every default. A config hashes to a stable
id: an adaptation config's `config_id` names a setting across runs and studies (docs/design.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields

from locas.errors import LocasError
from locas.expansion import check_expansion

LOSSES = ("NTP", "SD", "MIX", "GRPO")
LOSS_ALIASES = {"ST": "SD"}  # the seed's name for self-distillation
MEMORY_INITS = ("highest", "lowest", "random_index", "random")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


def option(default, help: str, *, aliases: tuple[str, ...] = (), choices=None, selects: bool = False,
           added: bool = False):
    """A config field with its flag: help text, other flag names, allowed values. `selects` marks an option
    that only chooses which units run (more books later extend the same run), not what a unit computes.
    `added` marks a field added after ids were in use: unset (None), it is left out of `to_dict`, so of every
    config and run id, and the ids of earlier runs stay valid."""
    return field(default=default, metadata={"help": help, "aliases": aliases, "choices": choices, "selects": selects,
                                            "added": added})


@dataclass(frozen=True)
class Method:
    """What the rest of the code knows about a method (SPEC §4-5, docs/method.md)."""

    lr: float  # the learning rate an unset --lr takes
    steps: int  # optimizer steps per window an unset --steps_per_window takes
    ignores: tuple[str, ...]  # AdaptConfig fields that never change its results
    gpu_batch: dict  # loss → documents adapted at once on one GPU (PG-19); batch 1 is launch-bound

    def batch_on_gpu(self, loss: str) -> int:
        return self.gpu_batch.get(loss, 1)


_TRAINING = ("loss", "lr", "steps_per_window", "teacher_context", "temperature", "mix_lambda", "grpo_group",
             "grpo_length", "grpo_beta")
_MEMORY = ("memory_width", "memory_init", "expand_every", "expand_width", "expand_max_width")
_LORA = ("lora_rank", "lora_alpha", "lora_dropout")
METHODS = {
    "none": Method(0.0, 0, ignores=_TRAINING + _MEMORY + _LORA, gpu_batch={loss: 8 for loss in LOSSES}),
    "locas": Method(4e-3, 1, ignores=_LORA, gpu_batch={"NTP": 8, "SD": 4, "MIX": 4}),  # SD/MIX hold teacher logits
    "lora": Method(5e-5, 2, ignores=_MEMORY, gpu_batch={}),  # one adapter: one document at a time
}


def _choice(name, value, allowed):
    if value not in allowed:
        raise LocasError(f"unknown {name} {value!r}: choose one of {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class Settings:
    """Base of every config: construction from a dict refuses unknown keys; `config_id` is a stable hash."""

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LocasError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict:
        added = {f.name for f in fields(self) if f.metadata.get("added")}
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in added and v is None)}

    @property
    def config_id(self) -> str:
        text = json.dumps({"type": type(self).__name__, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def _check_types(self):
        """Whole numbers and finite numbers where the annotations say so (a YAML "64" is refused)."""
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if value is None:
                continue
            if kind.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
                raise LocasError(f"{f.name}={value!r} must be a whole number")
            if kind.startswith("float") and (isinstance(value, bool) or not isinstance(value, (int, float))
                                             or not math.isfinite(value)):
                raise LocasError(f"{f.name}={value!r} must be a finite number")


@dataclass(frozen=True)
class AdaptConfig(Settings):
    """How one document is adapted to: method, loss, memory, optimizer, windows (SPEC §2, §4-6)."""

    method: str = option("locas", "none (frozen model), locas (memory) or lora (TempLoRA baseline)",
                         aliases=("memory_type",), choices=tuple(METHODS))
    loss: str = option("NTP", "test-time loss: NTP, SD (alias ST: self-distillation), MIX, GRPO",
                       aliases=("loss_function", "ttt_loss"), choices=LOSSES + tuple(LOSS_ALIASES))
    memory_width: int = option(64, "memory rows r per layer (memorize's keep_top)")
    memory_init: str = option("highest", "which MLP units seed the memory", choices=MEMORY_INITS)
    lr: float | None = option(None, "learning rate; unset: the method's own (locas 4e-3, lora 5e-5)")
    steps_per_window: int | None = option(None, "optimizer steps per window (LoCoMo: per session); unset: the "
                                          "method's own (locas 1, lora 2; LoCoMo 2 for both)", aliases=("steps",))
    window_size: int = option(2048, "tokens per window")
    overlap: int = option(1, "tokens a window shares with the one before (context, not scored)")
    max_tokens: int | None = option(None, "truncate each document to this many tokens")
    teacher_context: int | None = option(None, "tokens before the window the SD teacher reads; unset: one window")
    temperature: float = option(1.0, "SD softening temperature t")
    mix_lambda: float = option(0.5, "MIX weight of NTP (1 - it: of SD)")
    grpo_group: int = option(4, "GRPO samples per window")
    grpo_length: int = option(64, "GRPO sampled continuation length")
    grpo_beta: float = option(0.0, "GRPO weight of the KL to the base model")
    lora_rank: int = option(64, "LoRA rank")
    lora_alpha: int = option(64, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout (active while training only)")
    seed: int = option(0, "seed of random memory inits, GRPO sampling, LoRA init and LoCoMo's option order")
    expand_every: str | None = option(None, "grow the memory (locas): 'session' (LoCoMo: before each dated "
                                      "session after the first) or every N tokens (N >= window_size), by a block "
                                      "memorized on the window ahead; unset: a fixed width", added=True)
    expand_width: int | None = option(None, "rows per block the memory grows by; unset: memory_width", added=True)
    expand_max_width: int | None = option(None, "the widest the memory grows, in rows; unset: no limit", added=True)

    def __post_init__(self):
        self._check_types()
        object.__setattr__(self, "loss", LOSS_ALIASES.get(self.loss, self.loss))
        _choice("method", self.method, tuple(METHODS))
        _choice("loss_function", self.loss, LOSSES + tuple(LOSS_ALIASES))
        _choice("memory_init", self.memory_init, MEMORY_INITS)
        if self.window_size < 2:
            raise LocasError(f"window_size={self.window_size} is too short: a window needs at least 2 tokens")
        if not 1 <= self.overlap < self.window_size:
            raise LocasError(f"overlap={self.overlap} must satisfy 1 <= overlap < window_size ({self.window_size})")
        if self.memory_width < 1:
            raise LocasError(f"memory_width={self.memory_width} must be at least 1")
        if self.lr is not None and not self.lr >= 0:
            raise LocasError(f"lr={self.lr} must be a non-negative number")
        if self.steps_per_window is not None and self.steps_per_window < 0:
            raise LocasError(f"steps_per_window={self.steps_per_window} must be 0 or more")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise LocasError(f"max_tokens={self.max_tokens} must be at least 2")
        if not 0.0 <= self.mix_lambda <= 1.0:
            raise LocasError(f"mix_lambda={self.mix_lambda} must be within [0, 1]")
        if self.temperature <= 0 or self.grpo_group < 2 or self.grpo_length < 1 or self.lora_rank < 1:
            raise LocasError("temperature must be > 0, grpo_group >= 2, grpo_length >= 1 and lora_rank >= 1")
        if self.grpo_beta < 0 or not 0 <= self.lora_dropout < 1 or (self.teacher_context or 0) < 0:
            raise LocasError("grpo_beta must be >= 0, lora_dropout within [0, 1) and teacher_context >= 0")
        object.__setattr__(self, "expand_every", check_expansion(self))

    @property
    def learning_rate(self) -> float:
        return METHODS[self.method].lr if self.lr is None else self.lr

    @property
    def steps(self) -> int:
        if self.method == "none":
            return 0
        return METHODS[self.method].steps if self.steps_per_window is None else self.steps_per_window

    @property
    def teacher_tokens(self) -> int:
        return self.window_size if self.teacher_context is None else self.teacher_context

    def normalized(self, base: "AdaptConfig") -> "AdaptConfig":
        """This config with the settings its method never reads taken from `base`, so two settings that can
        only give the same results share one config_id (a sweep runs them once)."""
        return self.replace(**{name: getattr(base, name) for name in METHODS[self.method].ignores})

    def batch_on_gpu(self) -> int:
        return METHODS[self.method].batch_on_gpu(self.loss)


@dataclass(frozen=True)
class ModelSpec(Settings):
    """Which checkpoint a worker loads, and how."""

    model: str = option("Qwen/Qwen3-1.7B-Base", "a local checkpoint folder or a hub id")
    dtype: str = option("bfloat16", "weights' dtype (float32 on CPUs for exact numbers)", choices=DTYPES)
    device: str = option("auto", "auto: CUDA where the actor has a GPU; cpu: force the CPU (tests)",
                         choices=DEVICES)
    trust_remote_code: bool = option(False, "allow code shipped with the checkpoint")
    attn_implementation: str | None = option(None, "unset: flash_attention_2 when installed on CUDA in half "
                                             "precision, else sdpa")
    compile: bool = option(False, "torch.compile the backbone (static window shapes: compiled once per run)")

    def __post_init__(self):
        _choice("dtype", self.dtype, DTYPES)
        _choice("device", self.device, DEVICES)
