"""Metrics against hand computations (the arithmetic is in the comments)."""

import math

import pytest

from locas.data.locomo import NOT_MENTIONED, resolve_choice
from locas.errors import LocasError
from locas.metrics import (
    book_summary,
    bucket_ppl,
    category_means,
    mmlu_accuracy,
    normalize_answer,
    ppl_at,
    range_ppl,
    score_qa,
    templora_ppl,
    token_f1,
)

# A tiny book of 14 tokens: position 0 is context only, windows score [start, start + scored).
WINDOWS = [
    {"start": 1, "scored_tokens": 3, "nll_sum": 3.0},  # positions 1-3
    {"start": 4, "scored_tokens": 4, "nll_sum": 2.0},  # positions 4-7
    {"start": 8, "scored_tokens": 4, "nll_sum": 6.0},  # positions 8-11
    {"start": 12, "scored_tokens": 2, "nll_sum": 1.0},  # positions 12-13
]


def test_ppl_at_n_counts_windows_that_start_before_n():
    assert ppl_at(WINDOWS, 8) == pytest.approx(math.exp((3 + 2) / (3 + 4)))
    assert ppl_at(WINDOWS, 12) == pytest.approx(math.exp((3 + 2 + 6) / (3 + 4 + 4)))
    # The window at 4 straddles N = 6 and is counted whole (it belongs to its first scored token).
    assert ppl_at(WINDOWS, 6) == pytest.approx(math.exp(5 / 7))
    # A book shorter than N: all of it.
    assert ppl_at(WINDOWS, 1000) == pytest.approx(math.exp(12 / 13))


def test_bucket_ppl_covers_the_last_width_tokens_before_n():
    assert bucket_ppl(WINDOWS, 8, width=4) == pytest.approx(math.exp(2 / 4))  # [4, 8): the window at 4
    assert bucket_ppl(WINDOWS, 12, width=4) == pytest.approx(math.exp(6 / 4))  # [8, 12): the window at 8
    assert bucket_ppl(WINDOWS, 20, width=4) is None  # [16, 20): the book ended at 14


def test_templora_mean_weights_window_ppl_by_tokens():
    # (3·e^(3/3) + 4·e^(2/4) + 4·e^(6/4) + 2·e^(1/2)) / 13
    expected = (3 * math.e + 4 * math.exp(0.5) + 4 * math.exp(1.5) + 2 * math.exp(0.5)) / 13
    assert templora_ppl(WINDOWS) == pytest.approx(expected)
    assert templora_ppl(WINDOWS, 8) == pytest.approx((3 * math.e + 4 * math.exp(0.5)) / 7)
    assert templora_ppl(WINDOWS) >= range_ppl(WINDOWS)  # Jensen


def test_book_summary_and_which_n_the_book_reaches():
    summary = book_summary(WINDOWS, ns=(8, 20), width=4)
    assert summary["ppl"] == pytest.approx(math.exp(12 / 13))
    assert summary["ppl@8"] == pytest.approx(math.exp(5 / 7))
    assert summary["bucket@8"] == pytest.approx(math.exp(0.5))
    assert summary["ppl@20"] == pytest.approx(summary["ppl"])
    assert summary["bucket@20"] is None
    assert summary["reaches@8"] and not summary["reaches@20"]  # the last window ends at 14
    assert summary["templora_ppl@8"] == pytest.approx(templora_ppl(WINDOWS, 8))


def test_windows_of_several_books_pool_their_tokens():
    other_book = [{"start": 1, "scored_tokens": 7, "nll_sum": 14.0}]
    assert ppl_at(WINDOWS + other_book, 8) == pytest.approx(math.exp((5 + 14) / (7 + 7)))


def test_empty_input_gives_none():
    assert range_ppl([]) is None and templora_ppl([]) is None


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


def test_category_means_times_100():
    rows = [
        {"category": 1, "f1": 0.5, "f1_adversarial_report": None},
        {"category": 1, "f1": 1.0, "f1_adversarial_report": None},
        {"category": 4, "f1": 0.0, "f1_adversarial_report": None},
        {"category": 5, "f1": 1.0, "f1_adversarial_report": -0.5},
    ]
    assert category_means(rows) == {1: 75.0, 4: 0.0, 5: 100.0}
    assert category_means(rows, key="f1_adversarial_report") == {5: -50.0}


def test_mmlu_micro_and_macro_accuracy():
    rows = [{"subject": "a", "correct": c} for c in (True, True, False, True)]
    rows += [{"subject": "b", "correct": c} for c in (False, True)]
    # micro 4/6; macro (3/4 + 1/2) / 2 = 0.625
    assert mmlu_accuracy(rows) == {"micro": pytest.approx(4 / 6), "macro": pytest.approx(0.625)}
