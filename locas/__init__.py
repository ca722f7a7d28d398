"""Locas Memory: a trainable memory MLP beside every frozen FFN of a causal LM.

Heavy modules (torch, transformers) load on first use, so `locas.metrics`, `locas.contract` and the data
loaders stay light for analysis code that never touches a model.
"""
from importlib import import_module

_LAZY = {
    "CausalLMWithMemory": "locas.model",
    "Qwen3ForCausalLMWithMemory": "locas.model",
    "save_memory": "locas.memory",
    "load_memory": "locas.memory",
    "LocasError": "locas.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'locas' has no attribute {name!r}")
