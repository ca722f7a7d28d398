"""LoCoMo loading, rendering and prompts: the real locomo10.json when present, tiny files for bad input."""

import json
from collections import Counter
from pathlib import Path

import pytest

from locas.errors import LocasError
from locas.tasks.locomo.data import (
    NOT_MENTIONED,
    QA,
    build_question_prompt,
    load_locomo,
    render_conversation,
    render_session,
)

LOCOMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "locomo" / "locomo10.json"


@pytest.fixture(scope="module")
def real():
    if not LOCOMO.is_file():
        pytest.skip(f"{LOCOMO} not present")
    return load_locomo(LOCOMO)


def test_real_file_counts(real):
    assert len(real) == 10
    questions = [qa for conversation in real for qa in conversation.qa]
    assert len(questions) == 1986
    assert Counter(qa.category for qa in questions) == {1: 282, 2: 321, 3: 96, 4: 841, 5: 446}
    assert all(conversation.skipped == () for conversation in real)


def test_real_quirks(real):
    first = real[0]
    assert first.sample_id == "conv-26" and (first.speaker_a, first.speaker_b) == ("Caroline", "Melanie")
    # conv-26 has date keys up to session_35 but only 19 sessions.
    assert [session.index for session in first.sessions] == list(range(1, 20))
    by_question = {qa.question: qa for qa in first.qa}
    assert by_question["When did Melanie paint a sunrise?"].answer == "2022"  # an integer in the file
    adversarial = [qa for qa in first.qa if qa.category == 5]
    assert all(qa.adversarial_answer for qa in adversarial)
    assert sum(qa.answer is None for conversation in real for qa in conversation.qa) == 444
    assert first.qa[0].question_id == "conv-26:0" and first.qa[0].evidence == ("D1:3",)


def test_real_session_rendering(real):
    text = render_session(real[0].sessions[0])
    assert text.startswith(
        'DATE: 1:56 pm on 8 May, 2023\nCONVERSATION:\nCaroline said, "Hey Mel! Good to see you! How have you been?"\n'
    )
    assert (
        'Caroline said, "The transgender stories were so inspiring! I was so happy and thankful for all the '
        'support." and shared a photo of a dog walking past a wall with a painting of a woman.\n'
    ) in text


def test_real_conversation_rendering(real):
    text = render_conversation(real[0])
    assert text.startswith("Below is a conversation between two people: Caroline and Melanie.")
    assert "\n\nDATE: 1:56 pm on 8 May, 2023\nCONVERSATION:\n" in text
    dates = [text.index(f"DATE: {session.date}\n") for session in real[0].sessions]
    assert dates == sorted(dates)
    later = render_conversation(real[0], real[0].sessions[5:])
    assert "DATE: 1:56 pm on 8 May, 2023" not in later and later.endswith(render_session(real[0].sessions[-1]))


def test_adversarial_order_is_seeded_and_varies(real):
    adversarial = [qa for conversation in real for qa in conversation.qa if qa.category == 5]
    first_options = [build_question_prompt(qa, seed=0).options["a"] == NOT_MENTIONED for qa in adversarial]
    assert 0 < sum(first_options) < len(adversarial)
    assert [build_question_prompt(qa, seed=0) for qa in adversarial] == [
        build_question_prompt(qa, seed=0) for qa in adversarial
    ]
    again = [build_question_prompt(qa, seed=1).options["a"] == NOT_MENTIONED for qa in adversarial]
    assert again != first_options


def _qa(category, answer=None, adversarial=None, question="Where did Ann go?"):
    return QA("s:0", question, answer, adversarial, category, ())


def test_prompt_texts():
    instruction = (
        "Based on the above conversations, answer the following question in a short phrase. Answer with exact "
        "words from the context whenever possible.\nQuestion: {} Short answer:"
    )
    plain = build_question_prompt(_qa(4, "Rome"), seed=0)
    assert plain.text == instruction.format("Where did Ann go?") and plain.options is None
    temporal = build_question_prompt(_qa(2, "May"), seed=0, context="CONTEXT\n")
    assert temporal.text == "CONTEXT\n\n" + instruction.format(
        "Where did Ann go? Use DATE of CONVERSATION to answer with an approximate date."
    )
    adversarial = build_question_prompt(_qa(5, adversarial="Paris"), seed=0)
    a, b = adversarial.options["a"], adversarial.options["b"]
    assert {a, b} == {NOT_MENTIONED, "Paris"}
    assert adversarial.text == instruction.format(f"Where did Ann go? Select the correct answer: (a) {a} (b) {b}.")


def _sample(qa=None, sessions=True):
    conversation = {"speaker_a": "Ann", "speaker_b": "Bo", "session_2_date_time": "late"}
    if sessions:
        conversation |= {
            "session_2": [{"speaker": "Bo", "dia_id": "D2:1", "text": "Bye", "blip_caption": "a cat"}],
            "session_1": [{"speaker": "Ann", "dia_id": "D1:1", "text": "Hi"}],
            "session_1_date_time": "early",
            "session_3_date_time": "never held",
        }
    qa = [{"question": "Who?", "answer": "Ann", "category": 4, "evidence": ["D1:1"]}] if qa is None else qa
    return {"sample_id": "s", "conversation": conversation, "qa": qa}


def _write(tmp_path, data):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(data))
    return path


def test_tiny_file_renders_sessions_in_order(tmp_path):
    (conversation,) = load_locomo(_write(tmp_path, [_sample()]))
    assert render_conversation(conversation) == (
        "Below is a conversation between two people: Ann and Bo. The conversation takes place over multiple "
        "days and the date of each conversation is written at the beginning of the conversation.\n\n"
        'DATE: early\nCONVERSATION:\nAnn said, "Hi"\n\n'
        'DATE: late\nCONVERSATION:\nBo said, "Bye" and shared a cat.\n'
    )


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(LocasError, match="LoCoMo file not found: .*absent.json"):
        load_locomo(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(LocasError, match="bad.json: not valid JSON"):
        load_locomo(bad)


def test_conversation_without_sessions(tmp_path):
    with pytest.raises(LocasError, match=r"tiny.json: conversation s: no sessions"):
        load_locomo(_write(tmp_path, [_sample(sessions=False)]))


def test_question_without_answer_raises_or_is_recorded(tmp_path):
    qa = [
        {"question": "Who?", "answer": "Ann", "category": 4, "evidence": []},
        {"question": "What?", "category": 1, "evidence": []},
        {"question": "Why?", "category": 5, "evidence": []},
    ]
    path = _write(tmp_path, [_sample(qa)])
    with pytest.raises(LocasError, match=r"tiny.json: question s:1: category 1 question has no 'answer'"):
        load_locomo(path)
    (conversation,) = load_locomo(path, strict=False)
    assert [qa.question_id for qa in conversation.qa] == ["s:0"]
    assert [skipped.question_id for skipped in conversation.skipped] == ["s:1", "s:2"]
    assert "tiny.json: question s:2: adversarial question (category 5) has no 'adversarial_answer'" in (
        conversation.skipped[1].error
    )
    assert all("\n" not in skipped.error for skipped in conversation.skipped)
