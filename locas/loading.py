"""Loading the model a worker serves: its dtype and attention implementation for the device it runs on."""
from __future__ import annotations

from pathlib import Path

import torch

from locas.model import CausalLMWithMemory


def load_for_worker(spec) -> CausalLMWithMemory:
    """Load the model a worker serves (`spec`: a ModelSpec), with its tokenizer as `.tokenizer`. `spec.device`
    is "cpu" or "cuda" here (the worker resolves "auto")."""
    from transformers import AutoTokenizer

    dtype = getattr(torch, spec.on(spec.device == "cuda").dtype)
    path = spec.model
    if Path(path).expanduser().exists():
        path = str(Path(path).expanduser())
    attn = spec.attn_implementation or default_attention(spec.device, dtype)
    model = CausalLMWithMemory.from_pretrained(path, dtype=dtype, device=spec.device,
                                               trust_remote_code=spec.trust_remote_code, attn_implementation=attn)
    model.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    if spec.compile:
        model.model.compile(dynamic=False)
    return model


def default_attention(device, dtype) -> str:
    """flash-attn when installed, on a GPU, in half precision (it refuses fp32); else PyTorch's SDPA."""
    import importlib.util

    usable = str(device).startswith("cuda") and dtype in (torch.bfloat16, torch.float16)
    return "flash_attention_2" if usable and importlib.util.find_spec("flash_attn") else "sdpa"
