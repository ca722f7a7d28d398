"""LoCoMo task (SPEC §7): date_split training, answering, rows, errors, on a tiny random Qwen3."""
import json

import pytest
import torch
from locomo_inputs import DATES, QA_FIELDS, cfg, spy_methods

import locas.tasks.locomo.run as locomo_task
from locas.config import AdaptConfig
from locas.errors import LocasError
from locas.memory import VALUE
from locas.metrics import score_qa
from locas.tasks.locomo.data import NOT_MENTIONED, render_conversation
from locas.tasks.locomo.run import conversation_document, locomo_config, run_locomo_conversation, session_chunks


@pytest.mark.parametrize("method", ["none", "locas", "lora"])
@pytest.mark.parametrize("answer_context", ["full", "none"])
def test_rows_have_the_schema_and_their_f1(tiny_model, tokenizer, conversation, method, answer_context):
    adaptation, *rows = run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method=method),
                                                answer_context=answer_context, max_new_tokens=6)
    qa_rows = [r for r in rows if r["kind"] == "qa"]
    errors = [r for r in rows if r["kind"] == "error"]
    assert [r["question_id"] for r in rows] == [f"conv-t:{i}" for i in range(6)]  # question order
    assert len(qa_rows) == 5 and len(errors) == 1
    assert errors[0]["question_id"] == "conv-t:5" and "no 'answer'" in errors[0]["error"]
    assert errors[0]["conversation_id"] == "conv-t"
    assert adaptation["kind"] == "conversation" and adaptation["windows"] == 3 and adaptation["seconds"] > 0
    assert adaptation["tokens"] == len(conversation_document(tokenizer, conversation, cfg()).tokens)
    by_id = {qa.question_id: qa for qa in conversation.qa}
    for row in qa_rows:
        assert set(row) == QA_FIELDS
        assert row["conversation_id"] == "conv-t"
        qa = by_id[row["question_id"]]
        assert (row["category"], row["question"]) == (qa.category, qa.question)
        assert row["gold"] == (NOT_MENTIONED if qa.category == 5 else qa.answer)
        assert isinstance(row["prediction"], str) and "\n" not in row["prediction"]
        expected = score_qa(qa.category, row["prediction"], qa.answer, qa.adversarial_answer)
        assert row["f1"] == expected["f1"]
        assert row["f1_adversarial_report"] == expected["f1_adversarial_report"]
        assert (row["f1_adversarial_report"] is None) == (qa.category != 5)
        assert row["seconds"] > 0
    assert by_id["conv-t:3"].answer == "2023"  # the integer answer, scored as text
    json.dumps(rows)  # JSON-able


def test_locomo_defaults_two_steps_for_both_methods():
    assert locomo_config(AdaptConfig(method="locas")).steps == 2
    assert locomo_config(AdaptConfig(method="lora")).steps == 2
    assert locomo_config(AdaptConfig(method="locas", steps_per_window=3)).steps == 3
    assert locomo_config(AdaptConfig(method="locas")).learning_rate == 4e-3  # lr stays the method's
    assert locomo_config(AdaptConfig(method="lora")).learning_rate == 5e-5
    assert locomo_config(AdaptConfig(method="none")).steps == 0


def test_one_window_per_session_on_one_stream(tokenizer, conversation):
    chunks = session_chunks(conversation)
    assert "".join(chunks) == render_conversation(conversation)
    doc = conversation_document(tokenizer, conversation, cfg())
    assert len(doc.windows) == 3
    for window, chunk, date in zip(doc.windows, chunks, DATES):
        assert tokenizer.decode(doc.tokens[window.start:window.end]) == chunk
        assert window.scored_from == window.start + 1 and f"DATE: {date}\n" in chunk
    assert chunks[0].startswith("Below is a conversation between two people: Ann and Bob.")
    # A session longer than a window is cut into windows that stay inside it.
    small = conversation_document(tokenizer, conversation, cfg(window_size=16))
    starts = [w.start for w in doc.windows] + [len(doc.tokens)]
    assert len(small.windows) > 3
    for w in small.windows:
        assert w.end - w.start <= 16
        assert any(lo <= w.start and w.end <= hi for lo, hi in zip(starts, starts[1:]))


def test_sd_teacher_reads_the_preceding_sessions(tiny_model, tokenizer, conversation, monkeypatch):
    """The frozen teacher reads the preceding sessions plus the current one; the student one session."""
    seen = []

    def record(module, args, kwargs):  # (ids, memory off?): the teacher runs the frozen base
        seen.append((kwargs["input_ids"] if "input_ids" in kwargs else args[0], tiny_model._active is None))

    monkeypatch.setattr(locomo_task, "answer_questions", lambda *a, **k: [])  # training only
    handle = tiny_model.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(loss="SD", window_size=512))
    finally:
        handle.remove()
    chunks = session_chunks(conversation)
    teachers = [tokenizer.decode(ids[0]) for ids, base in seen if base]
    assert teachers == ["".join(chunks[:2]), "".join(chunks[:3])]  # windows 1 and 2; window 0 has no teacher
    students = [tokenizer.decode(ids[0], skip_special_tokens=True) for ids, base in seen if not base]
    assert set(students) == set(chunks)  # the student (memory on) reads its own session alone
    # The teacher reads at most `teacher_context` tokens before the window: the preceding sessions' tail.
    doc = conversation_document(tokenizer, conversation, cfg(loss="SD", window_size=512))
    assert [w.start for w in doc.windows][1:] == [len(tokenizer(chunks[0]).input_ids),
                                                 len(tokenizer("".join(chunks[:2])).input_ids)]


def test_training_changes_the_state(tiny_model, tokenizer, conversation, monkeypatch):
    made = spy_methods(monkeypatch)
    monkeypatch.setattr(locomo_task, "answer_questions", lambda *a, **k: [])
    prompt = torch.tensor([tokenizer("Question: What grew? Short answer:").input_ids])
    base = tiny_model(prompt).logits

    run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method="locas", lr=1e-2))
    memory = made[-1].memory.detach()
    assert memory[..., VALUE].abs().sum() > 0  # V starts at 0: only training makes it non-zero
    assert not torch.allclose(tiny_model(prompt, memory=memory).logits, base)

    run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method="lora", lora_dropout=0.0))
    assert all(p.abs().sum() > 0 for p in made[-1].params)  # every lora_B starts at 0: training moved them
    assert torch.equal(tiny_model(prompt).logits, base)  # the adapter is gone after the unit


def test_a_small_run_answers_the_first_questions_and_shows_sessions_then_questions(tiny_model, tokenizer,
                                                                                   conversation):
    heard = []
    rows = run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method="locas"), answer_context="none",
                                   max_new_tokens=4, max_questions=2,
                                   progress=lambda doc_id, **counts: heard.append((doc_id, counts)))
    assert [r["question_id"] for r in rows[1:]] == ["conv-t:0", "conv-t:1"] and rows[0]["windows"] == 3
    assert {doc_id for doc_id, _ in heard} == {"conv-t"}
    windows = [c["windows"] for _, c in heard if "windows" in c]
    questions = [c["questions"] for _, c in heard if "questions" in c]
    assert windows == [(1, 3), (2, 3), (3, 3)] and questions == [(0, 2), (1, 2), (2, 2)]
    tokens = [c["tokens"] for _, c in heard if "tokens" in c]
    assert tokens == sorted(tokens) and tokens[-1] == rows[0]["tokens"]  # positions read, to the end
    skipped = run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method="none"), answer_context="none",
                                      max_new_tokens=4, max_questions=6)
    assert [r["kind"] for r in skipped[1:]] == ["qa"] * 5 + ["error"]  # the broken question is the sixth
    with pytest.raises(LocasError, match="max_questions=0"):
        run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(), max_questions=0)


def test_bad_options_are_refused(tiny_model, tokenizer, conversation):
    with pytest.raises(LocasError, match="answer_context"):
        run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(), answer_context="half")
    with pytest.raises(LocasError, match="context_mode"):
        run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(), context_mode="whole")
