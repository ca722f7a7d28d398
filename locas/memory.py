"""The memory tensor and its math: row clipping, the memory branch, shape checks, safe save/load.

A memory is a float32 tensor of shape (L, B, r, d, 3): per layer and sample, r rows of key (an `up_proj`
row), gate (a `gate_proj` row) and value (a `down_proj` column), in that order (SPEC §1).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from locas.errors import LocasError

KEY, GATE, VALUE = 0, 1, 2
MEMORY_INITS = ("highest", "lowest", "random_index", "random")  # which MLP units seed a memory (`memorize`)
MEMORY_FORMAT = "locas-memory/1"


def clip_rows(w: torch.Tensor) -> torch.Tensor:
    """c(w) = w / max(||w||, 1) over the last axis; vector_norm's subgradient at 0 is 0, so V = 0 stays finite."""
    return w / torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min(1.0)


def prepare_memory(memory: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's clipped rows at once, laid out for the branch's two matmuls (once per forward, not per
    layer): key_gate (L, Bm, 2r, d) = [c(K); c(G)] and values (L, Bm, r, d) = τ_l c(V), from memory
    (L, Bm, r, d, 3) and τ per layer (L,)."""
    L, Bm, r, d, _ = memory.shape
    clipped = clip_rows(memory.movedim(-1, 2).contiguous())  # (L, Bm, 3, r, d)
    key_gate = clipped[:, :, KEY:GATE + 1].reshape(L, Bm, 2 * r, d)  # a view: KEY = 0, GATE = 1
    values = clipped[:, :, VALUE] * scales.view(L, 1, 1, 1).to(clipped.dtype)
    return key_gate, values


def prepared_branch(a: torch.Tensor, key_gate: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """o = τ (SiLU(a c(G)ᵀ) ⊙ (a c(K)ᵀ)) c(V) for one layer of `prepare_memory`.

    a: (B, T, d) post-attention-norm activations; key_gate (Bm, 2r, d), values (Bm, r, d) with Bm = B or 1.
    Returns (B, T, d) in a's dtype."""
    r = values.shape[-2]
    if key_gate.shape[0] == 1:  # one memory for the whole batch: plain matmuls over (B·T, d)
        key_gate, values = key_gate[0], values[0]
    key, gate = (a @ key_gate.to(a.dtype).transpose(-1, -2)).split(r, dim=-1)  # (B, T, r) each
    return (F.silu(gate) * key) @ values.to(a.dtype)  # (B, T, d)


def memory_branch(a: torch.Tensor, layer_memory: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The branch of one layer from its memory (Bm, r, d, 3) and τ (0-dim): `prepared_branch` of one layer."""
    key_gate, values = prepare_memory(layer_memory[None], scale.reshape(1))
    return prepared_branch(a, key_gate[0], values[0])


def check_memory(memory, num_layers: int, hidden_size: int, batch: int | None = None) -> None:
    """Refuse a memory that does not fit the model (or the batch) with one clear line."""
    expected = f"(L={num_layers}, B, r, d={hidden_size}, 3)"
    if not isinstance(memory, torch.Tensor):
        raise LocasError(f"memory must be a torch.Tensor of shape {expected}, got {type(memory).__name__}")
    shape = tuple(memory.shape)
    if memory.dim() != 5 or shape[0] != num_layers or shape[3] != hidden_size or shape[4] != 3 or shape[2] < 1:
        raise LocasError(f"memory of shape {shape} does not fit this model: expected {expected}")
    if batch is not None and shape[1] not in (1, batch):
        raise LocasError(f"memory batch {shape[1]} does not match input batch {batch}: use B = 1 or B = {batch}")
    if not memory.is_floating_point():
        raise LocasError(f"memory must be floating point, got {memory.dtype}")


def save_memory(path, memory: torch.Tensor, model, base_rank: int | None = None) -> None:
    """Write a memory as safetensors with the model's shape and τ's base rank recorded (no pickle)."""
    model.check_memory(memory)
    meta = {
        "format": MEMORY_FORMAT,
        "shape": model.shape_signature(),
        "base_rank": str(base_rank or memory.shape[2]),
    }
    save_file({"memory": memory.detach().float().contiguous().cpu()}, str(path),
              metadata={k: json.dumps(v) if isinstance(v, dict) else v for k, v in meta.items()})


def load_memory(path, model=None, device=None) -> tuple[torch.Tensor, int]:
    """Read a saved memory; returns (memory, base_rank). With a model, refuse one saved for another shape."""
    path = Path(path)
    if not path.is_file():
        raise LocasError(f"memory file not found: {path}")
    try:
        target = device or (model.device if model is not None else "cpu")
        tensors = load_file(str(path), device=str(target))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise LocasError(f"{path} is not a Locas memory file (safetensors expected): {e}") from None
    if meta.get("format") != MEMORY_FORMAT or "memory" not in tensors:
        raise LocasError(f"{path} is not a Locas memory file (format {meta.get('format')!r})")
    memory, base_rank = tensors["memory"], int(meta["base_rank"])
    if model is not None:
        saved = json.loads(meta["shape"])
        if saved != model.shape_signature():
            raise LocasError(f"{path} holds a memory for a model of shape {saved}, not {model.shape_signature()}")
        model.check_memory(memory)
    return memory, base_rank


def check_input_ids(input_ids, attention_mask=None) -> None:
    """Token ids a memory can be read from or applied to: (batch, tokens), non-empty, each row with a token."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise LocasError("input_ids must be a (batch, tokens) tensor, e.g. tokenizer(..., return_tensors='pt')")
    if input_ids.numel() == 0:
        raise LocasError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give at least one token per sequence")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise LocasError(f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}")
        if (attention_mask.sum(dim=1) == 0).any():
            raise LocasError("a sequence in the batch has no tokens under attention_mask")
