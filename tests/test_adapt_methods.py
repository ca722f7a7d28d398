"""The methods and losses in the loop (SPEC §4-5): per-method defaults, SD's teacher context, GRPO, TempLoRA's
fresh adapter per book, and a non-finite loss, against independent re-computations on tiny random models."""
import math

import pytest
import torch
from adapt_inputs import book, cfg

from locas import losses
from locas.adapt import Adapter
from locas.config import AdaptConfig
from locas.errors import LocasError
from locas.methods import make_method
from locas.tasks.pg19.run import book_document, run_pg19_books


def test_method_defaults():
    assert (cfg(method="locas").learning_rate, cfg(method="locas").steps) == (4e-3, 1)
    assert (cfg(method="lora").learning_rate, cfg(method="lora").steps) == (5e-5, 2)
    assert cfg(method="lora", lr=1e-3).learning_rate == 1e-3
    assert cfg(loss="ST").loss == "SD"
    with pytest.raises(LocasError, match="unknown loss_function 'KL'"):
        cfg(loss="KL")
    with pytest.raises(LocasError, match="unknown option"):
        AdaptConfig.from_dict({"memory_widht": 4})


def _memory_after_each_window(model, doc, c, counts=None):
    """Snapshots of the memory (and of the slot's Adam step count) after every window: a probe on the
    optimizer step."""
    method = make_method(model, c)
    adapter = Adapter(model, method, c)
    snapshots = []
    step = method.step

    def recording_step(slots):
        step(slots)
        snapshots.append(method.memory.detach().clone())
        if counts is not None:
            counts.append(int(method.optimizer.step_count[0]))

    method.step = recording_step
    result = next(adapter.run([doc]))
    return result, snapshots


def test_sd_has_no_gradient_without_extra_teacher_context_and_some_with_it(tiny_model, tokenizer):
    c = cfg(loss="SD", lr=1e-2)
    doc = book_document(tokenizer, book(), c)
    first = doc.windows[0]
    initial = tiny_model.memorize(doc.tokens[first.start:first.end][None], keep_top=8)
    counts = []
    result, snapshots = _memory_after_each_window(tiny_model, doc, c, counts)
    assert result.error is None
    assert torch.equal(snapshots[0], initial)  # window 0: the teacher reads nothing more than the student
    assert not torch.equal(snapshots[1], snapshots[0])  # window 1: the teacher reads window 0 too
    assert counts[:3] == [0, 1, 2]  # no support, no step: window 1's update is Adam's first (bias-corrected)

    ids = doc.tokens[:48][None]
    memory = initial.clone().requires_grad_(True)
    student = tiny_model(ids, memory=memory).logits
    with torch.no_grad():
        same = tiny_model(ids).logits
    loss = losses.self_distillation(student, same, torch.ones(1, 47))
    loss.sum().backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7) and memory.grad.abs().max() < 1e-9


def test_grpo_step_is_finite_and_trains_and_equal_rewards_change_nothing(tiny_model, tokenizer, monkeypatch):
    c = cfg(loss="GRPO", lr=1e-2, grpo_length=8, grpo_group=4)
    doc = book_document(tokenizer, book(words=60), c)
    result, snapshots = _memory_after_each_window(tiny_model, doc, c)
    assert result.error is None and all(math.isfinite(w.train_loss) for w in result.windows)
    assert not torch.equal(snapshots[-1], snapshots[0])

    monkeypatch.setattr(losses, "token_f1", lambda prediction, reference: 0.5)
    first = doc.windows[0]
    initial = tiny_model.memorize(doc.tokens[first.start:first.end][None], keep_top=8)
    counts = []
    _, snapshots = _memory_after_each_window(tiny_model, doc, c, counts)
    assert all(torch.equal(s, initial) for s in snapshots) and set(counts) == {0}


def test_grpo_samples_at_temperature_1_without_truncation(tiny_model, tokenizer, monkeypatch):
    seen = []
    generate = tiny_model.model.generate

    def spy(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("do_sample", "temperature", "top_k", "top_p")})
        return generate(*args, **kwargs)

    monkeypatch.setattr(tiny_model.model, "generate", spy)
    c = cfg(loss="GRPO", grpo_length=4, grpo_group=2)
    next(Adapter(tiny_model, make_method(tiny_model, c), c).run([book_document(tokenizer, book(words=30), c)]))
    assert seen and all(s == {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} for s in seen)


def test_lora_takes_no_step_where_sd_has_no_support(tiny_model, tokenizer):
    c = cfg(method="lora", loss="SD", lora_rank=4, lr=1e-2, steps_per_window=1)
    method = make_method(tiny_model, c)
    steps = []
    original = method.step

    def recording_step(slots):
        original(slots)
        steps.append(sum(int(state["step"]) for state in method.optimizer.state.values()) // len(method.params))

    method.step = recording_step
    doc = book_document(tokenizer, book(words=120), c)
    next(Adapter(tiny_model, method, c).run([doc]))
    assert steps[:3] == [0, 1, 2]


def test_second_book_under_lora_starts_from_the_base(tiny_model, tokenizer):
    books = [book(0), book(1)]
    lora = {b.book_id: rows for b, rows in run_pg19_books(tiny_model, tokenizer, books, cfg(method="lora", lora_rank=4, lr=1e-2))}
    none = {b.book_id: rows for b, rows in run_pg19_books(tiny_model, tokenizer, books, cfg(method="none"))}
    for b in books:  # the first window is scored before any update: a fresh adapter (B = 0) is the base
        assert lora[b.book_id][0]["nll_sum"] == pytest.approx(none[b.book_id][0]["nll_sum"], rel=1e-6)
    assert lora["book0"][-1]["ppl"] != pytest.approx(none["book0"][-1]["ppl"], rel=1e-6)
    assert lora["book0"][-1]["trainable_params"] == sum(
        4 * (i + o) for i, o in [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]) * 2
    assert not any("lora" in name for name, _ in tiny_model.model.named_modules())  # adapter removed


def test_non_finite_loss_ends_that_book_with_a_recorded_error(tiny_model, tokenizer, monkeypatch):
    real_ntp = losses.ntp
    calls = []

    def poisoned(nll, mask):
        calls.append(1)
        loss = real_ntp(nll, mask)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(losses, "ntp", poisoned)
    results = {b.book_id: rows for b, rows in run_pg19_books(tiny_model, tokenizer, [book(0), book(1)], cfg())}
    assert "non-finite" in results["book0"][-1]["error"]
    assert len(results["book0"]) == 4  # windows 0-2, then the book row
    assert results["book1"][-1]["error"] is None and math.isfinite(results["book1"][-1]["ppl"])
