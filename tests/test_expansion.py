"""An expanding memory in the loop (issue 23) on tiny random models: ids, checks, the optimizer's grown state
against torch's AdamW, the output at each expansion, batching, widths in the rows, LoCoMo sessions."""
import dataclasses
import hashlib
import json

import pytest
import torch

from locas.adapt import Adapter
from locas.config import AdaptConfig
from locas.errors import LocasError
from locas.expanding_memory import ExpandingMemory
from locas.optim import SlotAdamW
from locas.tasks.locomo.data import load_locomo
from locas.tasks.locomo.demo import sample_conversation
from locas.tasks.locomo.run import conversation_document, run_locomo_conversation
from locas.tasks.pg19.data import Book
from locas.tasks.pg19.run import book_document, run_pg19_books
from locas.tiny import sample_text

NEW_FIELDS = ("expand_every", "expand_width", "expand_max_width")


def cfg(**kw):
    return AdaptConfig(**{"window_size": 48, "memory_width": 8, "lr": 1e-2, "expand_every": "96",
                          "expand_width": 4, "expand_max_width": 18, **kw})


def books(words=(120, 420, 260)):
    return [Book(f"book{i}", None, sample_text(n, seed=i)) for i, n in enumerate(words)]


@pytest.mark.parametrize("values", [{}, {"method": "lora", "lora_rank": 8}, {"memory_width": 16, "lr": 1e-3}])
def test_ids_of_configs_without_expansion_are_the_ids_before_it(values):
    """The id as it was computed before the new fields existed: the hash of every other field."""
    config = AdaptConfig(**values)
    old = {k: v for k, v in dataclasses.asdict(config).items() if k not in NEW_FIELDS}
    text = json.dumps({"type": "AdaptConfig", **old}, sort_keys=True)
    assert config.config_id == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert config.replace(expand_every="4096").config_id != config.config_id


def test_one_expansion_setting_has_one_id():
    assert AdaptConfig(expand_every=4096).config_id == AdaptConfig(expand_every=" 4096").config_id
    assert AdaptConfig(expand_every=4096).expand_every == "4096"


@pytest.mark.parametrize("bad", [{"expand_every": "sessions"}, {"expand_every": "1000"}, {"expand_width": 4},
                                 {"expand_every": "session", "expand_width": 0},
                                 {"expand_every": "session", "expand_max_width": 32}])
def test_bad_expansion_settings_are_refused(bad):
    with pytest.raises(LocasError, match="expand"):
        AdaptConfig(**{"memory_width": 64, **bad})


def test_grown_optimizer_state_continues_as_torch_adamw_with_zero_moments_for_new_rows():
    torch.manual_seed(0)
    L, S, r, d, new = 2, 3, 4, 5, 2
    start = torch.randn(L, S, r, d)
    grads = [torch.randn(L, S, r, d), torch.randn(L, S, r, d), torch.randn(L, S, r + new, d)]
    param = start.clone().requires_grad_(True)
    ours = SlotAdamW(param, lr=1e-2)
    for g in grads[:2]:
        param.grad = g.clone()
        ours.step(torch.arange(S))
    grown = torch.cat([param.detach(), torch.zeros(L, S, new, d)], 2).requires_grad_(True)
    ours.resize(grown)
    grown.grad = grads[2].clone()
    ours.step(torch.tensor([0, 2]))  # slot 1 takes no step: unchanged, its state too
    for s in range(S):
        rows = start[:, s].clone().requires_grad_(True)
        torch_adamw = torch.optim.AdamW([rows], lr=1e-2, weight_decay=0.0, foreach=False)
        for g in grads[:2]:
            rows.grad = g[:, s].clone()
            torch_adamw.step()
        state = torch_adamw.state[rows]
        wider = torch.cat([rows.detach(), torch.zeros(L, new, d)], 1).requires_grad_(True)
        reference = torch.optim.AdamW([wider], lr=1e-2, weight_decay=0.0, foreach=False)
        pad = torch.zeros(L, new, d)
        reference.state[wider] = {"step": state["step"].clone(), "exp_avg": torch.cat([state["exp_avg"], pad], 1),
                                  "exp_avg_sq": torch.cat([state["exp_avg_sq"], pad], 1)}
        if s != 1:
            wider.grad = grads[2][:, s].clone()
            reference.step()
        torch.testing.assert_close(grown.detach()[:, s], wider.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.exp_avg[:, s], reference.state[wider]["exp_avg"], rtol=1e-5, atol=1e-7)


class CheckedExpansion(ExpandingMemory):
    """Records, at each block appended, the slot's logits on the window ahead just before and just after."""

    def before_window(self, batch):
        self.batch = batch
        super().before_window(batch)

    def append(self, slot, block):
        i = self.batch.slot_ids.index(slot)
        window, doc = self.batch.windows[i], self.batch.docs[i]
        ids = doc.tokens[window.start:window.end].unsqueeze(0)
        widths = (self.widths[slot], self.memory.shape[2])
        before = self._logits(slot, ids)
        super().append(slot, block)
        assert float(self.memory.detach()[:, slot, widths[0]:, :, 2].abs().max()) == 0  # the new values are 0
        with torch.no_grad():
            trained = float((self.model(ids).logits - before).abs().max())  # what the memory adds by now
        self.checks.append((doc.doc_id, widths, (self.widths[slot], self.memory.shape[2]),
                            float((self._logits(slot, ids) - before).abs().max()), trained))

    def _logits(self, slot, ids):
        with torch.no_grad(), self.forward_context(torch.tensor([slot])):
            return self.model(ids).logits


def test_output_is_unchanged_at_each_expansion_while_books_grow_at_different_times(tiny_model, tokenizer):
    c = cfg()
    method = CheckedExpansion(tiny_model, c)
    method.checks = []
    docs = [book_document(tokenizer, b, c) for b in books()]
    results = {r.doc.doc_id: r for r in Adapter(tiny_model, method, c).run(docs, batch_size=2)}
    assert len(method.checks) >= 6
    for doc_id, (width, _), (grown, _), change, trained in method.checks:
        assert grown - width == min(4, 18 - width)  # a partial last block up to the cap
        assert change <= 1e-6 and trained > 1e-3, f"{doc_id}: output moved by {change} at an expansion"
    assert any(tensor_after > tensor_before for _, (_, tensor_before), (_, tensor_after), _, _ in method.checks)
    assert any(tensor_after > width for _, (width, tensor_after), _, _, _ in method.checks)  # grew into spare rows
    for doc in docs:  # the schedule: before the first window past each multiple of 96, up to 18 rows
        expected = [min(18, 8 + 4 * (w.start // 96)) for w in doc.windows]
        assert results[doc.doc_id].widths == expected
        assert results[doc.doc_id].trainable_params == tiny_model.parameter_count(
            torch.zeros(2, 1, expected[-1], 64, 3))


def test_batched_expanding_books_equal_each_book_alone(tiny_model, tokenizer):
    c = cfg()
    alone = {b.book_id: rows for b, rows in run_pg19_books(tiny_model, tokenizer, books(), c, batch_size=1)}
    batched = {b.book_id: rows for b, rows in run_pg19_books(tiny_model, tokenizer, books(), c, batch_size=2)}
    assert alone.keys() == batched.keys()
    for book_id, rows in alone.items():
        assert [r.get("memory_width") for r in batched[book_id]] == [r.get("memory_width") for r in rows]
        assert [r["nll_sum"] for r in batched[book_id]] == pytest.approx([r["nll_sum"] for r in rows], rel=1e-4)
        book = rows[-1]
        assert book["final_width"] == rows[-2]["memory_width"]
        assert book["trainable_params"] == 3 * 2 * 64 * book["final_width"]


def test_without_expansion_rows_have_no_width_columns(tiny_model, tokenizer):
    rows = next(run_pg19_books(tiny_model, tokenizer, books((120,)), AdaptConfig(window_size=48, memory_width=8)))[1]
    assert all("memory_width" not in r and "final_width" not in r for r in rows)


def conversation(tmp_path, sessions=5):
    path = tmp_path / f"locomo{sessions}.json"
    path.write_text(json.dumps([sample_conversation("c0", seed=1, sessions=sessions)]))
    return load_locomo(path)[0]


def test_locomo_grows_before_each_session_after_the_first(tiny_model, tokenizer, tmp_path):
    c = cfg(expand_every="session", expand_width=4, expand_max_width=None, window_size=512)
    talk = conversation(tmp_path)
    doc = conversation_document(tokenizer, talk, c)
    assert doc.sections == list(range(5)) and len(doc.windows) == 5  # one window per session here
    rows = run_locomo_conversation(tiny_model, tokenizer, talk, c, answer_context="none", max_questions=1,
                                   max_new_tokens=4)
    head = rows[0]
    assert head["widths"] == [8, 12, 16, 20, 24] and head["final_width"] == 24
    assert head["trainable_params"] == 3 * 2 * 64 * 24
    assert [r["kind"] for r in rows[1:]] == ["qa"]


def test_a_long_session_grows_once_at_its_first_window(tiny_model, tokenizer, tmp_path):
    c = cfg(expand_every="session", window_size=24)
    doc = conversation_document(tokenizer, conversation(tmp_path, 3), c)
    assert len(doc.windows) > 3 and doc.sections[0] == 0
    assert all(doc.windows[k].start > doc.windows[k - 1].start for k in doc.sections[1:])
    method = ExpandingMemory(tiny_model, c)
    result = next(Adapter(tiny_model, method, c).run([doc]))
    grown = [k for k in range(1, len(doc.windows)) if result.widths[k] > result.widths[k - 1]]
    assert grown == doc.sections[1:3]  # 8 -> 12 -> 16, then 18 (the cap): each at a session's first window


def test_session_schedule_on_a_book_is_refused_with_one_line(tiny_path, capsys):
    from orchestration import run_pg19

    argv = ["--model", str(tiny_path), "--data", "x", "--output", "x", "--expand_every", "session"]
    assert run_pg19.main(argv) == 2
    assert "--expand_every session needs dated sessions" in capsys.readouterr().err


def test_the_ablations_set_fixed_against_expanding_widths_on_both_tasks(tmp_path):
    from pathlib import Path

    from orchestration.study import plan_study

    study = Path(__file__).resolve().parents[1] / "studies" / "ablations.yaml"
    runs = {run.name: [p for _, p in run.plans] for run in plan_study(study, tmp_path, check_models=False)}
    fixed = {p.cfg.memory_width for p in runs["width"]}
    small, large = (runs[f"pg19-expand-{size}"][0].cfg for size in ("small", "large"))
    for c in (small, large):  # from a fixed width to another, reached at the same token
        assert {c.memory_width, c.expand_max_width} <= fixed
        assert (c.expand_max_width - c.memory_width) % c.expand_width == 0
    assert small.expand_width < large.expand_width and small.memory_width == large.memory_width
    assert [(c.expand_max_width - c.memory_width) // c.expand_width * int(c.expand_every) for c in (small, large)] \
        == [49152, 49152]
    for tail, context in (("", "full"), ("-none", "none")):
        plans = {name: runs[f"locomo-{name}{tail}"][0] for name in ("fixed-32", "fixed-128", "expand-small",
                                                                       "expand-large")}
        assert {p.options.answer_context for p in plans.values()} == {context}
        assert [plans[n].cfg.memory_width for n in ("fixed-32", "fixed-128")] == [32, 128]
        grown = [plans[n].cfg for n in ("expand-small", "expand-large")]
        assert [(c.memory_width, c.expand_every, c.expand_max_width) for c in grown] == [(32, "session", 128)] * 2
        assert grown[0].expand_width < grown[1].expand_width
    assert runs["locomo-frozen-none"][0].options.answer_context == "none"


def test_a_block_wider_than_the_mlp_is_refused_before_anything_runs(tiny_model):
    from locas.checks import check_model_config

    with pytest.raises(LocasError, match="--expand_width 200 is larger than the model's MLP"):
        check_model_config(tiny_model.config, cfg(expand_width=200, expand_max_width=None), as_flags=True)


def test_the_report_names_an_expanding_width_and_never_sets_the_papers_figure_beside_it():
    from analysis.reporting.paper import run_setting

    config = {"adapt": {"method": "locas", "memory_width": 64, "window_size": 2048}}
    assert run_setting({"config": config})["width"] == 64
    config["adapt"].update(expand_every="8192", expand_width=16, expand_max_width=128)
    assert run_setting({"config": config})["width"] == "64→128 (+16 per 8192 tokens)"
    config["adapt"].update(expand_every="session", expand_width=None, expand_max_width=None)
    assert run_setting({"config": config})["width"] == "64→unbounded (+64 per session)"
