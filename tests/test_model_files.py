"""Memories on disk and models the wrapper refuses or takes (SPEC §1-3): save and load, another model's memory,
a pickle that is never unpickled, one clear error per bad input, other gated-MLP families."""
import pickle

import pytest
import torch
from model_inputs import ids, trained_like

from locas import CausalLMWithMemory, LocasError, load_memory, save_memory
from locas.tiny import build_tiny_checkpoint


def test_memory_save_and_load(tiny_model, tmp_path):
    memory = trained_like(tiny_model.memorize(ids(), keep_top=8))
    save_memory(tmp_path / "m.safetensors", memory, tiny_model, base_rank=6)
    loaded, base_rank = load_memory(tmp_path / "m.safetensors", tiny_model)
    assert torch.equal(loaded, memory) and base_rank == 6


def test_memory_for_another_model_is_refused(tiny_model, tmp_path):
    other = CausalLMWithMemory.from_pretrained(
        build_tiny_checkpoint(tmp_path / "wide", hidden_size=32, with_tokenizer=False))
    memory = other.memorize(ids(), keep_top=4)
    save_memory(tmp_path / "other.safetensors", memory, other)
    with pytest.raises(LocasError, match="model of shape"):
        load_memory(tmp_path / "other.safetensors", tiny_model)
    with pytest.raises(LocasError, match="does not fit"):
        tiny_model(ids(), memory=memory)


def test_pickle_file_is_not_loaded_as_memory(tiny_model, tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"memory": Boom()}))
    with pytest.raises(LocasError, match="not a Locas memory"):
        load_memory(path, tiny_model)


@pytest.mark.parametrize("call,message", [
    (lambda m: m.memorize(ids(), keep_top=129), "keep_top=129"),
    (lambda m: m.memorize(ids(), keep_top=0), "keep_top=0"),
    (lambda m: m.memorize(ids(), keep_top=4, memory_init="biggest"), "unknown memory_init"),
    (lambda m: m.memorize(torch.zeros(1, 0, dtype=torch.long), keep_top=4), "empty"),
    (lambda m: m(ids(), memory=torch.zeros(2, 1, 4, 64)), "does not fit"),
    (lambda m: m(ids(batch=3), memory=torch.zeros(2, 2, 4, 64, 3)), "batch"),
    (lambda m: m.to_dense(torch.zeros(2, 1, 4, 64, 3), batch_index=1), "batch_index"),
])
def test_bad_input_gets_one_clear_error(tiny_model, call, message):
    with pytest.raises(LocasError, match=message):
        call(tiny_model)


def test_model_without_gated_mlp_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(LocasError, match="not a supported causal LM|gated"):
        CausalLMWithMemory(gpt2)


def test_missing_model_path_is_one_clear_error(tmp_path):
    with pytest.raises(LocasError, match="could not load model"):
        CausalLMWithMemory.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_other_gated_families(arch, tmp_path):
    model = CausalLMWithMemory.from_pretrained(build_tiny_checkpoint(tmp_path / arch, arch=arch,
                                                                     with_tokenizer=False))
    x = ids(batch=1)
    memory = trained_like(model.memorize(x, keep_top=8))
    with torch.no_grad():
        expected = model(x, memory=memory).logits
        assert (model.to_dense(memory)(x).logits - expected).abs().max() <= 1e-4
