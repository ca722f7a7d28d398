"""What a checkpoint must be for Locas, and for one adaptation config, checked on its HF config alone: the
model wrapper and the adaptation loop check these, and the command line checks them before anything runs.

A message names a setting as the caller knows it: `memory_width=999` (a config) or `--memory_width 999` (a
flag, `as_flags=True`).
"""
from __future__ import annotations

from pathlib import Path

from locas.data import is_folder_source
from locas.errors import LocasError

SILU_NAMES = ("silu", "swish")


def _as_field(name: str, value) -> str:
    return f"{name}={value}"


def _as_flag(name: str, value) -> str:
    return f"--{name} {value}"


def check_model_config(config, cfg=None, *, model: str | None = None, as_flags: bool = False) -> None:
    """Refuse a model (its HF config) without a gated SiLU MLP, or one that cannot take `cfg` (an AdaptConfig):
    what its method checks (a memory no wider than the MLP) and a window, plus the text its loss's teacher
    reads before it, within the model's positions."""
    width, act = getattr(config, "intermediate_size", None), getattr(config, "hidden_act", None)
    if width is None or act not in SILU_NAMES:
        name = model or getattr(config, "name_or_path", "") or type(config).__name__
        raise LocasError(f"model {name!r} ({config.model_type}) has no gated SiLU MLP (activation {act!r}), "
                         "which Locas needs")
    if cfg is None:
        return
    name = _as_flag if as_flags else _as_field
    cfg.method_class.check_model(config, cfg, name)
    positions = getattr(config, "max_position_embeddings", None)
    loss = cfg.loss_class
    teacher = loss.teacher_tokens(cfg) if loss.needs_teacher and cfg.steps else 0
    if positions is not None and cfg.window_size + teacher > positions:
        reads = f" plus the {cfg.loss} teacher's {teacher} tokens before it" if teacher else ""
        raise LocasError(f"{name('window_size', cfg.window_size)}{reads} is more than the model's {positions} "
                         f"positions: use a smaller window (or {'--' if as_flags else ''}teacher_context)")


def checkpoint_config(model: str, trust_remote_code: bool = False):
    """The HF config of a checkpoint (a local folder or a hub id), or one line saying it cannot be found."""
    path = Path(model).expanduser()
    looks_local = is_folder_source(model)
    if looks_local and not (path / "config.json").is_file():
        raise LocasError(f"model not found: {path} is not a checkpoint folder (no config.json)")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path) if looks_local else model, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any failure to resolve the id is the same user error
        raise LocasError(f"model {model!r} could not be found locally or on the hub: "
                         f"{str(e).splitlines()[0]}") from None


def check_model(spec, *cfgs, as_flags: bool = False) -> None:
    """Before anything loads or is written: the checkpoint of `spec` (a ModelSpec) exists, has a gated SiLU MLP
    and can take each adaptation config of `cfgs`."""
    config = checkpoint_config(spec.model, spec.trust_remote_code)
    for cfg in cfgs or (None,):
        check_model_config(config, cfg, model=spec.model, as_flags=as_flags)
