"""Tiny random checkpoints and built-in sample text: what tests, `--demo` and CPU benchmarks run on.

A checkpoint is written with `save_pretrained` and read back with `from_pretrained`, exactly like a real
one, so every code path a real model takes is the one exercised here.
"""
from __future__ import annotations

import random
from pathlib import Path

SPECIAL = "<|endoftext|>"
_WORDS = (
    "the old ship sailed across a grey sea while the captain wrote letters to his daughter in the city "
    "morning light fell on the harbour and the sailors sang of islands they had never seen "
    "her garden grew roses and bitter herbs beside the wall where the river bent toward the mill "
    "a stranger came to the village with a lantern and a book of maps that no one could read "
    "they spoke of war and bread and the price of wool at the market in the autumn rain"
).split()


def sample_text(num_words: int = 2000, seed: int = 0) -> str:
    """Deterministic English-like prose: sentences of words drawn from a small vocabulary."""
    rng = random.Random(seed)
    sentences, count = [], 0
    while count < num_words:
        n = rng.randint(6, 16)
        words = [rng.choice(_WORDS) for _ in range(n)]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", ".", "!", "?"]))
        count += n
    paragraphs = [" ".join(sentences[i:i + 5]) for i in range(0, len(sentences), 5)]
    return "\n\n".join(paragraphs)


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on the sample text; `<|endoftext|>` (id 0) is EOS and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([sample_text(3000, seed=s) for s in range(3)], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIAL, pad_token=SPECIAL)


def build_tiny_checkpoint(path, arch: str = "qwen3", hidden_size: int = 64, intermediate_size: int = 128,
                          num_layers: int = 2, seed: int = 0, with_tokenizer: bool = True) -> Path:
    """Save a randomly initialised causal LM (qwen3, qwen2 or llama) and, optionally, its tokenizer."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    families = {"qwen3": (Qwen3Config, Qwen3ForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                "llama": (LlamaConfig, LlamaForCausalLM)}
    config_cls, model_cls = families[arch]
    tokenizer = build_tokenizer() if with_tokenizer else None
    config = config_cls(
        vocab_size=len(tokenizer) if tokenizer else 512, hidden_size=hidden_size,
        intermediate_size=intermediate_size, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=hidden_size // 4, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    torch.manual_seed(seed)
    path = Path(path)
    model_cls(config).save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
