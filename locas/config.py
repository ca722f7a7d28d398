"""Frozen, self-validating configs. A config hashes to a stable id: a unit's id is (task, item, config id).

Per-method defaults (SPEC §4-5) resolve here, so `method="lora"` never trains at Locas's learning rate.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields

from locas.errors import LocasError

METHODS = ("none", "locas", "lora")
LOSSES = ("NTP", "SD", "MIX", "GRPO")
LOSS_ALIASES = {"ST": "SD"}
MEMORY_INITS = ("highest", "lowest", "random_index", "random")
DTYPES = ("float32", "bfloat16", "float16")
METHOD_DEFAULTS = {  # (learning rate, steps per window)
    "none": (0.0, 0),
    "locas": (4e-3, 1),
    "lora": (5e-5, 2),
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
        return dataclasses.asdict(self)

    @property
    def config_id(self) -> str:
        text = json.dumps({"type": type(self).__name__, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class AdaptConfig(Settings):
    """How one document is adapted to: method, loss, memory, optimizer, windows (SPEC §2, §4-6)."""

    method: str = "locas"
    loss: str = "NTP"
    memory_width: int = 64
    memory_init: str = "highest"
    lr: float | None = None  # None: the method's default
    steps_per_window: int | None = None  # None: the method's default
    window_size: int = 2048
    overlap: int = 1
    max_tokens: int | None = None
    teacher_context: int | None = None  # SD teacher's extra tokens; None: one window
    temperature: float = 1.0
    mix_lambda: float = 0.5
    grpo_group: int = 4
    grpo_length: int = 64
    grpo_beta: float = 0.0
    lora_rank: int = 64
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    seed: int = 0

    INTS = ("memory_width", "steps_per_window", "window_size", "overlap", "max_tokens", "teacher_context",
            "grpo_group", "grpo_length", "lora_rank", "lora_alpha", "seed")
    FLOATS = ("lr", "temperature", "mix_lambda", "grpo_beta", "lora_dropout")

    def _check_types(self):
        for name in self.INTS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise LocasError(f"{name}={value!r} must be a whole number")
        for name in self.FLOATS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LocasError(f"{name}={value!r} must be a finite number")

    def __post_init__(self):
        self._check_types()
        object.__setattr__(self, "loss", LOSS_ALIASES.get(self.loss, self.loss))
        _choice("method", self.method, METHODS)
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

    @property
    def learning_rate(self) -> float:
        return METHOD_DEFAULTS[self.method][0] if self.lr is None else self.lr

    @property
    def steps(self) -> int:
        if self.method == "none":
            return 0
        return METHOD_DEFAULTS[self.method][1] if self.steps_per_window is None else self.steps_per_window

    @property
    def teacher_tokens(self) -> int:
        return self.window_size if self.teacher_context is None else self.teacher_context


@dataclass(frozen=True)
class ModelSpec(Settings):
    """Which checkpoint a worker loads, and how."""

    model: str = "Qwen/Qwen3-1.7B-Base"
    dtype: str = "bfloat16"
    device: str = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None  # None: flash_attention_2 when installed on CUDA, else sdpa
    compile: bool = False  # torch.compile the backbone (static window shapes: compiled once per run)

    def __post_init__(self):
        _choice("dtype", self.dtype, DTYPES)

