"""LoCoMo answering (SPEC §7): the adapted state answers, scoring and the adversarial choice, the context that
fits, a failing question, greedy batched generation, a loaded memory; on a tiny random Qwen3."""

import torch
from locomo_inputs import cfg

import locas.tasks.locomo.run as locomo_task
from locas.memory import VALUE
from locas.metrics import score_qa
from locas.tasks.locomo.data import NOT_MENTIONED, render_conversation
from locas.tasks.locomo.run import answer_questions, generate_answers, run_locomo_conversation


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
