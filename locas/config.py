"""Frozen, self-validating configs: what loads (`ModelSpec`) and how a document is adapted to (`AdaptConfig`).

Each field carries its flag's help text (and aliases, choices) as metadata, so the command line is derived
from these classes (`orchestration/flags.py`) and `--help` shows every default. `AdaptConfig` holds the
fields every method reads, and gathers each registered method's and loss's own options (`locas.methods`,
`locas.objectives`): a method or a loss with a new setting brings it itself. A config hashes to a stable id:
an adaptation config's `config_id` names a setting across runs and studies (docs/design.md).
"""
from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, fields

from locas.errors import LocasError
from locas.expansion import check_expansion
from locas.methods import METHODS
from locas.objectives import LOSSES, loss_aliases
from locas.settings import Settings, choice, option

__all__ = ["AdaptConfig", "ModelSpec", "Settings", "option"]

DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
READ_BY_ALL = ("method", "window_size", "overlap", "max_tokens", "seed")  # whichever the method
READ_WHEN_TRAINED = ("loss", "lr", "steps_per_window")  # by a method that trains (with its loss's options)


def _owners() -> tuple:
    """Every registered method and loss class (each may declare options of its own)."""
    return (*METHODS.values(), *LOSSES.values())


def _with_options(cls):
    """`cls` as a frozen dataclass with the registered methods' and losses' options as fields of its own."""
    declared: dict = {}
    for owner in _owners():
        hints = typing.get_type_hints(owner.options) if owner.options else {}  # resolved where they are declared
        for f in fields(owner.options) if owner.options else ():
            if f.name in cls.__annotations__ or (f.name in declared and declared[f.name][1] is not f):
                raise LocasError(f"{owner.__name__} declares option {f.name!r}, which is another's already")
            declared[f.name] = (hints[f.name], f)
    for name, (annotation, f) in declared.items():
        cls.__annotations__[name] = annotation
        setattr(cls, name, copy.copy(f))
    return dataclass(frozen=True)(cls)


def _method_help() -> str:
    return ", ".join(f"{name} ({cls.description})" for name, cls in METHODS.items())


def _loss_help() -> str:
    return "test-time loss: " + ", ".join(f"{name} ({cls.description}{''.join(f'; alias {a}' for a in cls.aliases)})"
                                          for name, cls in LOSSES.items())


def _defaults_help(attribute: str) -> str:
    return ", ".join(f"{name} {getattr(cls, attribute):g}" for name, cls in METHODS.items() if cls.trains)


@_with_options
class AdaptConfig(Settings):
    """How one document is adapted to: method, loss, optimizer, windows, and the registered methods' and
    losses' own options (SPEC §2, §4-6)."""

    method: str = option("locas", _method_help(), aliases=("memory_type",), choices=tuple(METHODS), sweep=True)
    loss: str = option("NTP", _loss_help(), aliases=("loss_function", "ttt_loss"),
                       choices=(*LOSSES, *loss_aliases()), sweep=True)
    lr: float | None = option(None, f"learning rate; unset: the method's own ({_defaults_help('default_lr')})",
                              sweep=True)
    steps_per_window: int | None = option(None, "optimizer steps per window (LoCoMo: per session); unset: the "
                                          f"method's own ({_defaults_help('default_steps')}; LoCoMo 2 for every "
                                          "method)", aliases=("steps",), sweep=True)
    window_size: int = option(2048, "tokens per window", sweep=True)
    overlap: int = option(1, "tokens a window shares with the one before (context, not scored)")
    max_tokens: int | None = option(None, "truncate each document to this many tokens")
    seed: int = option(0, "seed of random memory inits, GRPO sampling, LoRA init and LoCoMo's option order")

    def __post_init__(self):
        self._check_types()
        object.__setattr__(self, "loss", loss_aliases().get(self.loss, self.loss))
        choice("method", self.method, tuple(METHODS))
        choice("loss_function", self.loss, (*LOSSES, *loss_aliases()))
        if self.window_size < 2:
            raise LocasError(f"window_size={self.window_size} is too short: a window needs at least 2 tokens")
        if not 1 <= self.overlap < self.window_size:
            raise LocasError(f"overlap={self.overlap} must satisfy 1 <= overlap < window_size ({self.window_size})")
        if self.lr is not None and not self.lr >= 0:
            raise LocasError(f"lr={self.lr} must be a non-negative number")
        if self.steps_per_window is not None and self.steps_per_window < 0:
            raise LocasError(f"steps_per_window={self.steps_per_window} must be 0 or more")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise LocasError(f"max_tokens={self.max_tokens} must be at least 2")
        for owner in _owners():  # every option is checked, whichever method and loss read it
            if owner.options is not None:
                owner.options(**{f.name: self._option(owner, f.name) for f in fields(owner.options)})
        object.__setattr__(self, "expand_every", check_expansion(self))  # needs the window: checked here

    def _option(self, owner, name: str):
        if not hasattr(self, name):
            raise LocasError(f"{owner.__name__} was registered after AdaptConfig was built, so its option {name!r} "
                             "is no config field: register it before importing locas.config")
        return getattr(self, name)

    @property
    def method_class(self):
        return METHODS[self.method]

    @property
    def loss_class(self):
        return LOSSES[self.loss]

    @property
    def learning_rate(self) -> float:
        return self.method_class.default_lr if self.lr is None else self.lr

    @property
    def steps(self) -> int:
        method = self.method_class
        if not method.trains:
            return 0
        return method.default_steps if self.steps_per_window is None else self.steps_per_window

    def read_fields(self) -> set[str]:
        """The fields this config's method (and, when it trains, its loss) ever reads."""
        trains = self.method_class.trains
        read = {*READ_BY_ALL, *(READ_WHEN_TRAINED if trains else ())}
        for owner in (self.method_class, self.loss_class) if trains else (self.method_class,):
            read.update(f.name for f in (fields(owner.options) if owner.options else ()))
        return read

    def normalized(self, base: AdaptConfig) -> AdaptConfig:
        """This config with the settings its method and loss never read taken from `base`, so two settings
        that can only give the same results share one config_id (a sweep runs them once)."""
        read = self.read_fields()
        return self.replace(**{f.name: getattr(base, f.name) for f in fields(self) if f.name not in read})

    def batch_on_gpu(self) -> int:
        return self.method_class.batch_on_gpu(self.loss_class)


@dataclass(frozen=True)
class ModelSpec(Settings):
    """Which checkpoint a worker loads, and how."""

    model: str = option("Qwen/Qwen3-1.7B-Base", "a local checkpoint folder or a hub id")
    dtype: str | None = option(None, "weights' dtype; unset: float32 on CPU actors (bfloat16 there is about 20x "
                               "slower), bfloat16 on GPUs", choices=DTYPES)
    device: str = option("auto", "auto: CUDA where the actor has a GPU; cpu: force the CPU (tests)",
                         choices=DEVICES)
    trust_remote_code: bool = option(False, "allow code shipped with the checkpoint")
    attn_implementation: str | None = option(None, "unset: flash_attention_2 when installed on CUDA in half "
                                             "precision, else sdpa")
    compile: bool = option(False, "torch.compile the backbone (static window shapes: compiled once per run)")

    def __post_init__(self):
        if self.dtype is not None:
            choice("dtype", self.dtype, DTYPES)
        choice("device", self.device, DEVICES)

    def on(self, gpu: bool) -> ModelSpec:
        """This spec with its dtype decided for the device it runs on (an unset one: bfloat16 on a GPU,
        float32 on a CPU, where bfloat16 is far slower), so the run's config records the dtype used."""
        if self.dtype is not None:
            return self
        return self.replace(dtype="bfloat16" if gpu and self.device != "cpu" else "float32")
