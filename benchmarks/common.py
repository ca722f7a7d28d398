"""Shared by the benchmarks: model presets, a synthetic book, a timer that synchronises the device."""
from __future__ import annotations

import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PRESETS = {
    # name: (hidden, intermediate, layers, heads, kv heads, head_dim, vocab)
    "tiny": (64, 128, 2, 4, 2, 16, 512),
    "small": (256, 1024, 8, 4, 2, 64, 8192),  # the shape of ../shared/models/tinylm-pg19
    "qwen3-1.7b": (2048, 6144, 28, 16, 8, 128, 151936),
}


def build_model(preset: str, device: str, dtype: str, attn: str = "sdpa"):
    """A random-weight Qwen3 of the preset's shape, wrapped for memory (weights do not change timings)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from locas import CausalLMWithMemory

    hidden, inter, layers, heads, kv, head_dim, vocab = PRESETS[preset]
    config = Qwen3Config(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, vocab_size=vocab,
                         max_position_embeddings=32768, tie_word_embeddings=preset != "qwen3-1.7b")
    config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(getattr(torch, dtype))
    return CausalLMWithMemory(model)


def synthetic_tokens(num_tokens: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab, (num_tokens,), generator=torch.Generator().manual_seed(seed))


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds of `fn()` over `repeats` runs after `warmup` runs, device synchronised."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def device_name(device) -> str:
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
