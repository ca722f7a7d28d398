"""The parts of a window step against independent references: per-slot AdamW against torch's, the chunked
NLL and KL against whole computations, and the parts a compiled step traces without graph breaks."""
import pytest
import torch

from locas import losses
from locas.optim import SlotAdamW


def test_slot_adamw_matches_torch_adamw_per_slot():
    torch.manual_seed(0)
    param = torch.randn(2, 3, 4, requires_grad=True)
    alone = param.detach()[:, 2:3].clone().requires_grad_(True)
    slotted, reference = SlotAdamW(param, lr=1e-2), torch.optim.AdamW([alone], lr=1e-2, weight_decay=0.0)
    for step in range(4):
        if step == 2:  # refilling another slot must not touch this one
            slotted.reset(0)
        grad = torch.randn(2, 1, 4)
        param.grad = torch.zeros_like(param)
        param.grad[:, 2:3] = grad
        alone.grad = grad.clone()
        slotted.step(torch.tensor([0, 2]))
        reference.step()
    torch.testing.assert_close(param[:, 2:3], alone)


def test_slot_adamw_stepping_every_slot_in_place_matches_torch_adamw():
    torch.manual_seed(0)
    param = torch.randn(2, 3, 4, requires_grad=True)
    alone = [param.detach()[:, s:s + 1].clone().requires_grad_(True) for s in range(3)]
    slotted = SlotAdamW(param, lr=1e-2, weight_decay=0.1)
    reference = [torch.optim.AdamW([a], lr=1e-2, weight_decay=0.1) for a in alone]
    for step in range(4):
        stepped = [0, 1, 2] if step != 1 else [1]  # a step where only slot 1 has support, then all again
        param.grad = torch.randn(2, 3, 4)
        for s in stepped:
            alone[s].grad = param.grad[:, s:s + 1].clone()
            reference[s].step()
        slotted.step(torch.tensor(stepped))
    for s in range(3):
        torch.testing.assert_close(param[:, s:s + 1], alone[s])


@pytest.mark.slow
def test_the_parts_of_a_step_trace_into_one_graph_each(tiny_model):
    """What `--compile` compiles (the backbone with the memory in its MLP hooks), the NLL from the hidden
    states and the per-slot optimizer step: torch._dynamo.explain finds no graph break in any of them."""
    import torch._dynamo as dynamo

    x = torch.randint(1, 500, (2, 32), generator=torch.Generator().manual_seed(0))
    memory = tiny_model.memorize(x, keep_top=8).requires_grad_(True)
    optimizer = SlotAdamW(memory, lr=1e-2)

    def backbone(ids):
        with tiny_model.use_memory(memory):
            return tiny_model.model(input_ids=ids).logits

    def optimizer_step(slots):
        memory.grad = torch.ones_like(memory)
        optimizer.step(slots)

    parts = [(backbone, x), (lambda ids: tiny_model.compute_nll(ids, memory).sum(), x),
             (optimizer_step, torch.tensor([0, 1])), (optimizer_step, torch.tensor([1]))]
    for fn, arg in parts:
        dynamo.reset()
        explained = dynamo.explain(fn)(arg)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    dynamo.reset()


def test_chunked_nll_and_kl_equal_the_whole_computation(monkeypatch):
    import torch.nn.functional as F

    from locas.losses import token_nll

    torch.manual_seed(0)
    logits = torch.randn(2, 20, 11, requires_grad=True)
    teacher = torch.randn(2, 20, 11)
    ids = torch.randint(0, 11, (2, 20))
    mask = torch.ones(2, 19)

    def both():
        nll = token_nll(logits, ids)
        kl = losses.self_distillation(logits, teacher, mask, temperature=2.0)
        (nll.sum() + kl.sum()).backward()
        grad, logits.grad = logits.grad, None
        return nll.detach(), kl.detach(), grad

    monkeypatch.setattr(losses, "POSITIONS_PER_CHUNK", 7)
    chunked = both()
    whole_nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    log_s, log_t = F.log_softmax(logits[:, :-1] / 2, -1), F.log_softmax(teacher[:, :-1] / 2, -1)
    whole_kl = 4 * (log_t.exp() * (log_t - log_s)).sum(-1).mean(1)
    (whole_nll.sum() + whole_kl.sum()).backward()
    torch.testing.assert_close(chunked[0], whole_nll.detach())
    torch.testing.assert_close(chunked[1], whole_kl.detach())
    torch.testing.assert_close(chunked[2], logits.grad)
