"""Inputs the LoCoMo tests share: a conversation in the locomo10.json shape, its config, a spy on the methods."""
import locas.adapt
import locas.methods
from locas.config import AdaptConfig

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
