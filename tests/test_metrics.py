"""Per-answer LoCoMo scores against hand computations (the arithmetic is in the comments). The rules that
turn rows into figures are tested in test_analysis.py."""


import pytest

from locas.errors import LocasError
from locas.metrics import normalize_answer, score_qa, token_f1
from locas.tasks.locomo.data import NOT_MENTIONED, resolve_choice


def test_normalize_drops_commas_punctuation_and_articles():
    assert normalize_answer("The Cat, and a Hat!") == "cat hat"
    assert normalize_answer("an  apple's   core") == "apples core"


def test_single_hop_f1():
    # "cat sat on mat" vs "cat on mat": 3 shared; P = 3/4, R = 1, F1 = 2·(3/4)/(7/4) = 6/7.
    assert score_qa(4, "The cat sat on the mat", "a cat on a mat")["f1"] == pytest.approx(6 / 7)
    # Porter stemming: running dogs -> run dog = dog runs.
    assert token_f1("running dogs", "dog runs") == 1.0
    assert token_f1("", "anything") == 0.0


def test_temporal_f1_with_an_integer_gold():
    # "in 2022" vs "2022": 1 shared; P = 1/2, R = 1, F1 = 2/3.
    assert score_qa(2, "in 2022", 2022) == {"f1": pytest.approx(2 / 3), "f1_adversarial_report": None}


def test_open_domain_cuts_gold_at_the_first_semicolon():
    # Gold becomes "Likely yes" -> like ye; "yes" -> ye: P = 1, R = 1/2, F1 = 2/3.
    assert score_qa(3, "yes", "Likely yes; she enjoys hiking")["f1"] == pytest.approx(2 / 3)


def test_multi_hop_splits_on_commas_before_normalizing():
    # Gold parts Paris | London | Rome against prediction parts London | Paris: best F1s 1, 1, 0 -> 2/3.
    # (Unsplit it would be "london paris" vs "paris london rome": P = 1, R = 2/3, F1 = 0.8.)
    assert score_qa(1, "London, Paris", "Paris, London, Rome")["f1"] == pytest.approx(2 / 3)
    # hiking -> 0; "pottery class" vs "pottery": P = 1, R = 1/2, F1 = 2/3; mean (0 + 2/3) / 2 = 1/3.
    assert score_qa(1, "pottery", "hiking, pottery class")["f1"] == pytest.approx(1 / 3)


def test_adversarial_official_and_report_rules():
    abstain = score_qa(5, "Not mentioned in the conversation", None, "self-care is important")
    assert abstain == {"f1": 1.0, "f1_adversarial_report": 0.0}
    assert score_qa(5, "No information available.", None, "x")["f1"] == 1.0
    # Picks the adversarial answer: official 0; report −F1 = −1 ("selfcare is important" both sides).
    assert score_qa(5, "self-care is important", None, "self-care is important") == {
        "f1": 0.0,
        "f1_adversarial_report": -1.0,
    }
    # "she ran charity race" vs "charity race": P = 2/4, R = 1, F1 = 2/3 -> report −2/3.
    assert score_qa(5, "she ran a charity race", None, "charity race")["f1_adversarial_report"] == pytest.approx(-2 / 3)


def test_a_chosen_option_letter_is_scored_as_its_text():
    options = {"a": NOT_MENTIONED, "b": "self-care is important"}
    assert score_qa(5, resolve_choice("(a)", options), None, options["b"])["f1"] == 1.0
    assert resolve_choice(" B) self-care", options) == "self-care is important"
    assert resolve_choice("a dog", options) == "a dog"


def test_score_qa_rejects_unknown_category_and_missing_gold():
    with pytest.raises(LocasError, match="category"):
        score_qa(6, "x", "y")
    with pytest.raises(LocasError, match="no gold answer"):
        score_qa(4, "x", None)
