"""A smoke test of the GPU path, where CUDA exists: bf16 weights, SDPA attention, a compiled backbone, one
window of locas adaptation, against the same step in eager mode."""
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_one_compiled_bf16_window_on_the_gpu(tiny_path):
    from locas.adapt import Adapter
    from locas.config import AdaptConfig, ModelSpec
    from locas.documents import Document, sliding_windows
    from locas.loading import load_for_worker
    from locas.methods import make_method
    from locas.tiny import sample_text

    cfg = AdaptConfig(window_size=128, memory_width=16)
    losses = {}
    for compiled in (False, True):
        model = load_for_worker(ModelSpec(model=str(tiny_path), dtype="bfloat16", device="cuda", compile=compiled,
                                          attn_implementation="sdpa"))
        ids = model.tokenizer(sample_text(300), add_special_tokens=False).input_ids[:128]
        doc = Document("d", torch.tensor(ids), sliding_windows(len(ids), 128, 1))
        result = next(Adapter(model, make_method(model, cfg), cfg).run([doc]))
        assert result.error is None and model.model.dtype == torch.bfloat16 and model.device.type == "cuda"
        losses[compiled] = result.windows[0].nll_sum
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)
