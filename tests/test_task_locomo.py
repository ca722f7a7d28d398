"""LoCoMo task (SPEC §7): date_split training, answering, rows, errors, on a tiny random Qwen3."""
import json

import pytest
import torch

import locas.adapt
import locas.methods
import locas.tasks.locomo.run as locomo_task
from locas.config import AdaptConfig
from locas.errors import LocasError
from locas.memory import VALUE
from locas.metrics import score_qa
from locas.tasks.locomo.data import NOT_MENTIONED, load_locomo, render_conversation
from locas.tasks.locomo.run import (answer_questions, conversation_document, generate_answers, locomo_config,
                                    run_locomo_conversation, session_chunks)

QA_FIELDS = {"kind", "conversation_id", "question_id", "category", "question", "gold", "prediction", "f1",
             "f1_adversarial_report", "seconds"}
DATES = ["1:00 pm on 1 May, 2023", "2:00 pm on 5 May, 2023", "9:30 am on 9 May, 2023"]


def sample(sample_id="conv-t"):
    """A conversation in the locomo10.json shape: 3 short sessions (one image turn), a date key without a
    session, a question per category (an integer answer, an adversarial one), and a broken question."""
    turn = lambda speaker, dia, text, **kw: {"speaker": speaker, "dia_id": dia, "text": text, **kw}  # noqa: E731
    return {
        "sample_id": sample_id,
        "conversation": {
            "speaker_a": "Ann", "speaker_b": "Bob",
            "session_1_date_time": DATES[0],
            "session_1": [turn("Ann", "D1:1", "The old ship sailed across a grey sea."),
                          turn("Bob", "D1:2", "Her garden grew roses.", blip_caption="a photo of red roses")],
            "session_2_date_time": DATES[1],
            "session_2": [turn("Bob", "D2:1", "A stranger came to the village with a lantern."),
                          turn("Ann", "D2:2", "They spoke of bread and wool.")],
            "session_3_date_time": DATES[2],
            "session_3": [turn("Ann", "D3:1", "The captain wrote letters to his daughter.")],
            "session_4_date_time": "10:00 am on 1 June, 2023",  # a date key without a session
        },
        "qa": [
            {"question": "What grew, and what sailed?", "answer": "roses, ship", "category": 1, "evidence": ["D1:2"]},
            {"question": "When did the stranger come?", "answer": "5 May 2023", "category": 2, "evidence": ["D2:1"]},
            {"question": "What might Ann buy?", "answer": "wool; bread", "category": 3, "evidence": ["D2:2"]},
            {"question": "In what year did the ship sail?", "answer": 2023, "category": 4, "evidence": ["D1:1"]},
            {"question": "What did Bob paint?", "adversarial_answer": "a lantern", "category": 5, "evidence": []},
            {"question": "A question without an answer", "category": 4, "evidence": []},
        ],
    }


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)


@pytest.fixture(scope="module")
def conversation(tmp_path_factory):
    path = tmp_path_factory.mktemp("locomo") / "conversations.json"
    path.write_text(json.dumps([sample()]))
    return load_locomo(path, strict=False)[0]


def cfg(**kw):
    return AdaptConfig(**{"window_size": 256, "memory_width": 8, **kw})


def spy_methods(monkeypatch):
    """Record the method objects the task makes (their state stays readable after the run)."""
    made = []
    original = locas.methods.make_method

    def make(model, c):
        made.append(original(model, c))
        return made[-1]

    monkeypatch.setattr(locas.adapt, "make_method", make)
    return made


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


def test_answers_use_the_adapted_state(tiny_model, tokenizer, conversation, monkeypatch):
    """Generation runs inside the method's forward context: the memory is active while answering."""
    active = []

    def fake_generate(model, tok, sequences, max_new_tokens=32):
        active.append(model._active is not None)
        return ["x"] * len(sequences)

    monkeypatch.setattr(locomo_task, "generate_answers", fake_generate)
    run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method="locas"))
    assert active and all(active)
    active.clear()
    run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method="none"))
    assert active and not any(active)


def test_scoring_of_known_answers_and_the_adversarial_choice(tiny_model, tokenizer, conversation, monkeypatch):
    answers = {"When did": "5 May 2023", "What grew": "roses, ship", "What might": "wool", "In what year": "2023",
               "What did Bob": "(a)"}
    prompts = []

    def fake_generate(model, tok, sequences, max_new_tokens=32):
        texts = [tok.decode(s) for s in sequences]
        prompts.extend(texts)
        return [next(v for k, v in answers.items() if f"Question: {k}" in t) for t in texts]

    monkeypatch.setattr(locomo_task, "generate_answers", fake_generate)
    rows = [r for r in run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method="none"),
                                               answer_context="none") if r["kind"] == "qa"]
    f1 = {r["category"]: r["f1"] for r in rows}
    assert f1[1] == f1[2] == f1[3] == f1[4] == 1.0
    adversarial = next(r for r in rows if r["category"] == 5)
    qa = conversation.qa[4]
    assert adversarial["prediction"] in (NOT_MENTIONED, "a lantern")  # "(a)" resolved to the option's text
    assert adversarial["f1"] == (1.0 if adversarial["prediction"] == NOT_MENTIONED else 0.0)
    assert adversarial["f1_adversarial_report"] == score_qa(5, adversarial["prediction"], None,
                                                            qa.adversarial_answer)["f1_adversarial_report"]
    assert all(not p.startswith("Below is") and p.startswith("Based on the above") for p in prompts)
    assert any("Use DATE of CONVERSATION" in p for p in prompts)
    assert any("(a) " in p and "(b) " in p for p in prompts)


def test_full_context_drops_the_oldest_sessions_when_too_long(tiny_model, tokenizer, conversation, monkeypatch):
    prompts = []

    def fake_generate(model, tok, sequences, max_new_tokens=32):
        prompts.extend(sequences)
        return ["x"] * len(sequences)

    monkeypatch.setattr(locomo_task, "generate_answers", fake_generate)
    run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method="none"), max_new_tokens=8)
    full = [tokenizer.decode(p) for p in prompts]
    assert all(p.startswith(render_conversation(conversation)) for p in full)

    shortest = min(len(p) for p in prompts)
    limit = shortest - 1 + 8  # no prompt fits with every session; all fit without session 1 (the short tail)
    prompts.clear()
    rows = run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method="none"), max_new_tokens=8,
                                   max_context=limit)
    assert sum(r["kind"] == "qa" for r in rows) == 5
    for ids in prompts:
        text = tokenizer.decode(ids)
        assert len(ids) <= limit - 8
        assert text.startswith("Below is a conversation between two people: Ann and Bob.")
        assert text.startswith(render_conversation(conversation, conversation.sessions[1:]))  # the oldest went

    rows = run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method="none"), max_new_tokens=8,
                                   max_context=40)
    errors = [r for r in rows if r["kind"] == "error"]
    assert len(errors) == 6 and all("does not fit" in r["error"] for r in errors if r["question_id"] != "conv-t:5")


def test_a_failing_question_becomes_an_error_row(tiny_model, tokenizer, conversation, monkeypatch):
    def fake_generate(model, tok, sequences, max_new_tokens=32):
        if any("the stranger" in tok.decode(s) for s in sequences):
            raise RuntimeError("boom")
        return ["roses"] * len(sequences)

    monkeypatch.setattr(locomo_task, "generate_answers", fake_generate)
    rows = run_locomo_conversation(tiny_model, tokenizer, conversation, cfg(method="none"), answer_context="none")
    kinds = {r["question_id"]: r["kind"] for r in rows[1:]}
    assert kinds == {"conv-t:0": "qa", "conv-t:1": "error", "conv-t:2": "qa", "conv-t:3": "qa", "conv-t:4": "qa",
                     "conv-t:5": "error"}
    assert next(r for r in rows[1:] if r["question_id"] == "conv-t:1")["error"] == "RuntimeError: boom"


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


def test_generation_is_greedy_batched_and_cut_at_the_newline(tiny_model, tokenizer):
    prompts = [tokenizer(t).input_ids for t in ("The old ship", "Her garden grew roses beside the wall where the")]
    memory = tiny_model.memorize(torch.tensor([prompts[1]]), keep_top=8)
    memory[..., VALUE] = torch.randn(memory[..., VALUE].shape, generator=torch.Generator().manual_seed(0))
    for state in (None, memory):
        with tiny_model.use_memory(state):
            batched = generate_answers(tiny_model, tokenizer, prompts, max_new_tokens=8)
            alone = [generate_answers(tiny_model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
        assert batched == alone

    class Stub:  # a model whose greedy continuation holds a newline
        device = torch.device("cpu")

        class model:
            @staticmethod
            def generate(input_ids, stopping_criteria, **kwargs):
                new = torch.tensor([tokenizer("\n wool and bread\nQuestion: more").input_ids] * len(input_ids))
                return torch.cat([input_ids, new], 1)

    assert generate_answers(Stub(), tokenizer, prompts) == ["wool and bread"] * 2
    stop = locomo_task._StopAtNewline(tokenizer, 1)
    texts = ["?\n\n Paris", "?\n\n Paris\nQ", "? Paris\n"]
    batch = torch.nn.utils.rnn.pad_sequence([torch.tensor(tokenizer(t).input_ids) for t in texts], batch_first=True)
    assert stop(batch, None).tolist() == [False, True, True]  # a newline before the answer does not stop it


def test_answer_questions_with_a_loaded_memory(tiny_model, tokenizer, conversation):
    """The answering half alone, as a notebook would use it with a saved memory."""
    memory = tiny_model.memorize(torch.tensor([tokenizer("the old ship").input_ids]), keep_top=8)
    with torch.no_grad(), tiny_model.use_memory(memory):
        rows = answer_questions(tiny_model, tokenizer, conversation, answer_context="none", max_new_tokens=4)
    assert [r["kind"] for r in rows] == ["qa"] * 5
