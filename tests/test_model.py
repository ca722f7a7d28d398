"""The memory-augmented model against independent computations (SPEC §1-3)."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import PG19_BOOKS, require
from model_inputs import VOCAB, ids, trained_like

from locas import CausalLMWithMemory


def mlp_inputs(model, input_ids, attention_mask=None):
    """The post-attention-norm activation entering each MLP, captured with hooks of the test's own."""
    seen = []
    hooks = [mlp.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach())) for mlp in model.mlps]
    with torch.no_grad():
        model.model(input_ids=input_ids, attention_mask=attention_mask)
    for h in hooks:
        h.remove()
    return seen


def reference_branch(model, layer, a, memory_sample, base_rank):
    """SPEC §1 written out directly: τ_l (SiLU(a c(G)ᵀ) ⊙ (a c(K)ᵀ)) c(V)."""
    def clip(w):
        return w / torch.clamp(w.norm(dim=-1, keepdim=True), min=1.0)

    w_d = model.mlps[layer].down_proj.weight
    tau = w_d.norm(dim=0).mean() / base_rank
    K, G, V = (clip(memory_sample[..., i]) for i in range(3))
    return tau * (F.silu(a @ G.T) * (a @ K.T)) @ V


def test_zero_value_memory_leaves_logits_bit_identical(tiny_model):
    x = ids()
    memory = tiny_model.memorize(x, keep_top=16)
    assert memory.dtype == torch.float32 and memory.shape == (2, 2, 16, 64, 3)
    assert torch.count_nonzero(memory[..., 2]) == 0
    with torch.no_grad():
        assert torch.equal(tiny_model(x).logits, tiny_model(x, memory=memory).logits)


@pytest.mark.parametrize("init,largest", [("highest", True), ("lowest", False)])
def test_memorize_selects_units_ranked_by_independent_importance(tiny_model, init, largest):
    x = ids(tokens=30)
    mask = torch.ones_like(x)
    mask[1, 18:] = 0  # the second sequence is padded: its padding must not count
    memory = tiny_model.memorize(x, keep_top=10, memory_init=init, attention_mask=mask)
    for layer, a in enumerate(mlp_inputs(tiny_model, x, mask)):
        mlp = tiny_model.mlps[layer]
        act = F.silu(a @ mlp.gate_proj.weight.T) * (a @ mlp.up_proj.weight.T)  # (B, T, m)
        for b in range(2):
            valid = mask[b].bool()
            alpha = act[b, valid].abs().mean(0)
            expected = alpha.argsort(descending=largest)[:10]
            torch.testing.assert_close(memory[layer, b, :, :, 0], F.normalize(mlp.up_proj.weight[expected], dim=-1))
            torch.testing.assert_close(memory[layer, b, :, :, 1], F.normalize(mlp.gate_proj.weight[expected], dim=-1))


def test_memory_branch_matches_reference_formula(tiny_model):
    x = ids(batch=1)
    memory = trained_like(tiny_model.memorize(x, keep_top=8))
    a = mlp_inputs(tiny_model, x)[1]
    mlp = tiny_model.mlps[1]
    with torch.no_grad(), tiny_model.use_memory(memory):
        with_memory = mlp(a)
    expected = mlp(a) + reference_branch(tiny_model, 1, a, memory[1, 0], base_rank=8)
    torch.testing.assert_close(with_memory, expected, rtol=1e-5, atol=1e-6)


def test_rows_are_clipped_in_every_forward(tiny_model):
    x = ids(batch=1)
    memory = trained_like(tiny_model.memorize(x, keep_top=8))
    unit = memory.clone()
    unit[..., 2] = F.normalize(memory[..., 2], dim=-1)
    scaled = unit.clone()
    scaled[..., 2] *= 7.0  # norm 7 clips back to norm 1
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(x, memory=scaled).logits, tiny_model(x, memory=unit).logits)


@pytest.mark.slow
def test_to_dense_equals_base_plus_memory_and_leaves_source_untouched(tiny_model, tmp_path):
    x = ids(batch=2)
    memory = trained_like(tiny_model.memorize(x, keep_top=12))
    before = {k: v.clone() for k, v in tiny_model.model.state_dict().items()}
    with torch.no_grad():
        expected = tiny_model(x, memory=memory).logits[1]
    dense = tiny_model.to_dense(memory, batch_index=1)
    assert type(dense).__name__ == "Qwen3ForCausalLM"
    assert dense.config.intermediate_size == tiny_model.intermediate_size + 12
    with torch.no_grad():
        assert (dense(x[1:]).logits[0] - expected).abs().max() <= 1e-4
    assert tiny_model.config.intermediate_size == 128
    after = tiny_model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    dense.save_pretrained(tmp_path / "dense")
    torch.save(x[1:], tmp_path / "ids.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'dense')!r}, dtype=torch.float32)\n"
        f"x = torch.load({str(tmp_path / 'ids.pt')!r})\n"
        f"torch.save(m(x).logits[0].detach(), {str(tmp_path / 'logits.pt')!r})\n"
        "assert not any(name.startswith('locas') for name in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    assert (torch.load(tmp_path / "logits.pt") - expected).abs().max() <= 1e-4


def test_parameter_count(tiny_model):
    memory = tiny_model.memorize(ids(batch=3), keep_top=5)
    assert tiny_model.parameter_count(memory) == 3 * 2 * 64 * 5


def test_batch_of_two_equals_two_single_runs(tiny_model):
    x = ids(batch=2)
    memory = trained_like(tiny_model.memorize(x, keep_top=8))
    with torch.no_grad():
        together = tiny_model.compute_nll(x, memory)
        alone = [tiny_model.compute_nll(x[b:b + 1], memory[:, b:b + 1]) for b in range(2)]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_single_memory_broadcasts_over_batch(tiny_model):
    x = ids(batch=3)
    memory = trained_like(tiny_model.memorize(x[:1], keep_top=8))
    with torch.no_grad():
        together = tiny_model.compute_nll(x, memory)
        alone = torch.cat([tiny_model.compute_nll(x[b:b + 1], memory) for b in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_attention_mask_is_honoured(tiny_model):
    x = ids(batch=2, tokens=20)
    memory = trained_like(tiny_model.memorize(x, keep_top=8))
    mask = torch.ones_like(x)
    mask[0, 12:] = 0
    with torch.no_grad():
        padded = tiny_model.compute_nll(x, memory, attention_mask=mask)
        short = tiny_model.compute_nll(x[:1, :12], memory[:, :1])
    assert padded.shape == (2, 19)
    assert torch.count_nonzero(padded[0, 11:]) == 0
    torch.testing.assert_close(padded[0, :11], short[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grad", [True, False])
def test_nll_from_hidden_states_equals_cross_entropy_over_the_logits(tiny_model, monkeypatch, grad):
    """compute_nll (logits never whole, the gradient made in the forward) against F.cross_entropy over the
    whole logits of the same forward, in value and in the memory's gradient, over several row chunks."""
    from locas import losses

    x = ids(batch=2, tokens=20)
    memory = trained_like(tiny_model.memorize(x, keep_top=8))
    monkeypatch.setattr(losses, "LOGIT_ELEMENTS_PER_CHUNK", 7 * VOCAB)  # 38 rows: 6 chunks, the last short
    weights = torch.rand(2, 19)

    def value_and_grad(nll_of):
        m = memory.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            nll = nll_of(m)
            if grad:
                (nll * weights).sum().backward()
        return nll.detach(), m.grad

    def reference(m):
        logits = tiny_model(x, memory=m).logits[:, :-1]
        return F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")

    got, want = value_and_grad(lambda m: tiny_model.compute_nll(x, m)), value_and_grad(reference)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    if grad:
        torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("init", ["random", "random_index"])
def test_random_inits_are_seeded(tiny_model, init):
    x = ids()
    a = tiny_model.memorize(x, keep_top=6, memory_init=init, seed=3)
    b = tiny_model.memorize(x, keep_top=6, memory_init=init, seed=3)
    c = tiny_model.memorize(x, keep_top=6, memory_init=init, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a[..., :2].norm(dim=-2), torch.ones(a[..., :2].norm(dim=-2).shape))


def test_expansion_leaves_output_unchanged_and_exports_with_first_rank(tiny_model):
    x = ids(batch=1)
    memory = trained_like(tiny_model.memorize(x, keep_top=8))
    expanded = tiny_model.expand_memory(memory, ids(batch=1, seed=5), keep_top=4)
    assert expanded.shape[2] == 12
    with torch.no_grad():
        before = tiny_model(x, memory=memory).logits
        after = tiny_model(x, memory=expanded, base_rank=8).logits
        dense = tiny_model.to_dense(expanded, base_rank=8)(x).logits
    torch.testing.assert_close(after, before)
    assert (dense - before).abs().max() <= 1e-4


def test_gradients_are_finite_at_zero_value(tiny_model):
    x = ids()
    memory = tiny_model.memorize(x, keep_top=8).requires_grad_(True)
    tiny_model.compute_nll(x, memory).mean().backward()
    grad = memory.grad
    assert torch.isfinite(grad).all()
    assert grad[..., 2].abs().sum() > 0
    assert grad[..., :2].abs().sum() == 0  # dL/dK, dL/dG ∝ V = 0 at the first step (SPEC §2)


def test_tau_per_layer(tiny_model):
    for layer, mlp in enumerate(tiny_model.mlps):
        expected = sum(mlp.down_proj.weight[:, j].norm() for j in range(128)) / 128 / 16
        torch.testing.assert_close(tiny_model.memory_scales(16)[layer], expected)


@pytest.mark.slow
def test_real_model_memorize_and_one_ntp_step_lowers_nll(tinylm_path):
    from transformers import AutoTokenizer

    book = sorted(require(PG19_BOOKS).glob("*.txt"))[0]
    tokenizer = AutoTokenizer.from_pretrained(tinylm_path)
    passage = tokenizer(book.read_text()[20_000:26_000], return_tensors="pt").input_ids[:, :512]
    model = CausalLMWithMemory.from_pretrained(tinylm_path, dtype=torch.float32)
    memory = model.memorize(passage, keep_top=64).requires_grad_(True)
    optimizer = torch.optim.AdamW([memory], lr=4e-3, weight_decay=0.0)
    before = model.compute_nll(passage, memory).mean()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = model.compute_nll(passage, memory).mean()
    print(f"tinylm-pg19 NLL on {book.name}: {before.item():.4f} -> {after.item():.4f}")
    assert after < before
