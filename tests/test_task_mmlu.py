"""MMLU task (SPEC §8): letter log-probabilities against an independent computation, the retention unit."""
import json

import pytest
import torch
from conftest import SHARED, require

from locas.config import AdaptConfig
from locas.errors import LocasError
from locas.memory import VALUE
from locas.tasks.batching import left_pad, length_batches
from locas.tasks.mmlu.data import LETTERS, Question, build_prompt, load_mmlu
from locas.tasks.mmlu.run import letter_logprobs, letter_token_ids, run_mmlu_base, run_mmlu_retention, score_questions
from locas.tasks.pg19.data import Book
from locas.tiny import sample_text

MMLU_FIELDS = {"kind", "book_id", "variant", "subject", "question_id", "answer", "prediction", "correct"}


def agreement(rows) -> float:
    """By hand: the share of questions where the memory and its dense export predict the same letter."""
    memory = {r["question_id"]: r["prediction"] for r in rows if r["variant"] == "memory"}
    dense = {r["question_id"]: r["prediction"] for r in rows if r["variant"] == "dense"}
    assert memory.keys() == dense.keys() and memory
    return sum(memory[q] == dense[q] for q in memory) / len(memory)


def generated_questions(n=12, subject="sailing"):
    words = sample_text(40 * n, seed=7).split()
    return [Question(subject, f"{subject}:test:{i}", " ".join(words[40 * i:40 * i + 5 + i % 7]) + "?",
                     tuple(" ".join(words[40 * i + 10 + 3 * j:40 * i + 11 + 3 * j + (i + j) % 4]) for j in range(4)),
                     i % 4) for i in range(n)]


def reference_logprobs(hf_model, tokenizer, question, dev=(), k=0):
    """By hand: one unpadded forward of the plain HF model, log-softmax at the last position."""
    ids = tokenizer(build_prompt(question, dev, k), add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0, -1].double()
    letters = [tokenizer(f" {letter}", add_special_tokens=False).input_ids[-1] for letter in LETTERS]
    return torch.log_softmax(logits, -1)[letters]


def test_letter_scores_equal_an_independent_log_softmax(tiny_model, tokenizer):
    questions = generated_questions()
    ids = [tokenizer(build_prompt(q), add_special_tokens=False).input_ids for q in questions]
    assert len({len(i) for i in ids}) > 3  # the batch really is padded
    got = letter_logprobs(tiny_model, ids, letter_token_ids(tokenizer), pad_id=0)
    want = torch.stack([reference_logprobs(tiny_model.model, tokenizer, q) for q in questions]).float()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    rows = score_questions(tiny_model, tokenizer, questions, batch_size=5)
    assert [r["prediction"] for r in rows] == [LETTERS[int(w.argmax())] for w in want]
    for row, question in zip(rows, questions):
        assert set(row) == MMLU_FIELDS
        assert (row["kind"], row["variant"], row["book_id"]) == ("mmlu", "base", None)
        assert row["answer"] == LETTERS[question.answer] and row["correct"] == (row["prediction"] == row["answer"])
    json.dumps(rows)


def test_letter_scores_with_a_memory_and_shots(tiny_model, tokenizer):
    questions = generated_questions(8)
    dev = generated_questions(3)
    dev = [Question(q.subject, q.question_id.replace("test", "dev"), q.question, q.choices, q.answer) for q in dev]
    memory = tiny_model.memorize(torch.tensor([tokenizer("the old ship sailed").input_ids]), keep_top=8)
    memory[..., VALUE] = torch.randn(memory[..., VALUE].shape, generator=torch.Generator().manual_seed(1))
    with tiny_model.use_memory(memory):
        rows = score_questions(tiny_model, tokenizer, questions, dev, k=2, batch_size=3)
        ids = [tokenizer(build_prompt(q, dev, 2), add_special_tokens=False).input_ids for q in questions]
        got = letter_logprobs(tiny_model, ids, letter_token_ids(tokenizer))
    dense = tiny_model.to_dense(memory)  # an independent model holding the memory
    want = torch.stack([reference_logprobs(dense, tokenizer, q, dev, 2) for q in questions]).float()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert [r["prediction"] for r in rows] == [LETTERS[int(w.argmax())] for w in want]


def test_letter_tokens_are_the_last_token_and_distinct(tokenizer):
    ids = letter_token_ids(tokenizer)
    assert ids == [tokenizer(f" {letter}", add_special_tokens=False).input_ids[-1] for letter in LETTERS]
    assert len(set(ids)) == 4

    class Same:
        def __call__(self, text, add_special_tokens=False):
            return type("Encoding", (), {"input_ids": [5]})()

    with pytest.raises(LocasError, match="distinct"):
        letter_token_ids(Same())


def test_batching_helpers():
    batches = length_batches([5, 100, 7, 6, 90], batch_size=2, max_batch_tokens=150)
    assert batches == [[1], [4], [2, 3], [0]]  # longest first; 100 and 90 together would pad past 150
    assert sorted(i for b in batches for i in b) == list(range(5))
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=9, device="cpu")
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_a_bad_question_gives_an_error_row_and_the_rest_go_on(tiny_model, tokenizer):
    good = generated_questions(3)
    dev = [Question("sailing", "sailing:dev:0", "Why?", ("a", "b", "c", "d"), 0)]
    lonely = Question("astronomy", "astronomy:test:0", "Which star?", ("a", "b", "c", "d"), 1)  # no dev shots
    rows = run_mmlu_base(tiny_model, tokenizer, [good[0], lonely, good[1]], dev, k=1)
    assert [r["kind"] for r in rows] == ["mmlu", "error", "mmlu"]
    error = rows[1]
    assert (error["question_id"], error["variant"], error["subject"]) == ("astronomy:test:0", "base", "astronomy")
    assert "1 shots asked" in error["error"]
    # A prompt longer than the model's context is an error row too.
    long = Question("sailing", "sailing:test:99", sample_text(8000), ("a", "b", "c", "d"), 2)
    rows = run_mmlu_base(tiny_model, tokenizer, [long, good[2]])
    assert [r["kind"] for r in rows] == ["error", "mmlu"] and "context" in rows[0]["error"]
    with pytest.raises(LocasError, match="variant"):
        score_questions(tiny_model, tokenizer, good, variant="merged")


def _retention(tiny_model, tokenizer, questions, method, **kw):
    book = Book("book-r", "A tiny book", sample_text(400, seed=3))
    cfg = AdaptConfig(method=method, window_size=64, memory_width=8, **kw)
    return run_mmlu_retention(tiny_model, tokenizer, book, questions, cfg, batch_size=16)


@pytest.mark.parametrize("method,kw", [("locas", {"lr": 3e-2}), ("lora", {"lr": 1e-3, "lora_dropout": 0.0}),
                                       ("none", {})])
def test_retention_memory_and_dense_agree_on_generated_questions(tiny_model, tokenizer, method, kw, monkeypatch):
    import locas.tasks.mmlu.run as mmlu_task

    scored = []  # the letter log-probabilities of each scoring call: memory, then dense, then base

    def spy(*args, **kwargs):
        scored.append(original(*args, **kwargs))
        return scored[-1]

    original = mmlu_task.letter_logprobs
    monkeypatch.setattr(mmlu_task, "letter_logprobs", spy)
    questions = generated_questions(16)
    rows = _retention(tiny_model, tokenizer, questions, method, **kw)
    assert len(rows) == 2 * len(questions)
    assert [r["variant"] for r in rows] == ["memory"] * 16 + ["dense"] * 16
    for row in rows:
        assert set(row) == MMLU_FIELDS and row["book_id"] == "book-r"
    assert agreement(rows) >= 0.999
    base = run_mmlu_base(tiny_model, tokenizer, questions)  # the adapter or memory is gone after the unit
    assert [r["prediction"] for r in base] == [r["prediction"] for r in score_questions(tiny_model.model, tokenizer,
                                                                                          questions)]
    memory, dense, base_scores = scored[:3]
    torch.testing.assert_close(memory, dense, atol=1e-4, rtol=1e-4)  # the export is the adapted state
    assert torch.equal(memory, base_scores) == (method == "none")  # and adaptation changed the model


def test_retention_on_real_questions(tiny_model, tokenizer):
    folder = require(SHARED / "data" / "mmlu")
    questions = load_mmlu(folder, split="test")[::2]  # both subjects, 100 questions
    rows = _retention(tiny_model, tokenizer, questions, "locas", lr=3e-2)
    assert agreement(rows) >= 0.999
    memory = [r for r in rows if r["variant"] == "memory"]
    assert len(memory) == len(questions) and {r["subject"] for r in memory} == {"abstract_algebra", "global_facts"}
    assert all(r["correct"] == (r["prediction"] == r["answer"]) for r in memory)


def test_a_failing_batch_is_retried_question_by_question(tiny_model, tokenizer, monkeypatch):
    import locas.tasks.mmlu.run as mmlu_task

    questions = generated_questions(6)
    bad = tokenizer(build_prompt(questions[2]), add_special_tokens=False).input_ids
    original = mmlu_task.letter_logprobs

    def flaky(model, sequences, *args, **kwargs):
        if any(list(s) == bad for s in sequences):
            raise RuntimeError("out of memory")
        return original(model, sequences, *args, **kwargs)

    monkeypatch.setattr(mmlu_task, "letter_logprobs", flaky)
    rows = score_questions(tiny_model, tokenizer, questions, batch_size=4)
    assert [r["kind"] for r in rows] == ["mmlu", "mmlu", "error", "mmlu", "mmlu", "mmlu"]
    assert rows[2]["error"] == "RuntimeError: out of memory"
    monkeypatch.setattr(mmlu_task, "letter_logprobs", original)
    assert [r["prediction"] for r in rows if r["kind"] == "mmlu"] == \
        [r["prediction"] for i, r in enumerate(score_questions(tiny_model, tokenizer, questions)) if i != 2]
