"""Per-answer scores (SPEC §7): LoCoMo's official token F1 and its category rules, as the task writes them
into each `qa` row. The rules that turn rows into figures (PPL@N, F1 means, accuracy) are
`analysis.tables`: one implementation for summaries, notebooks and reports.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache

from nltk.stem import PorterStemmer

from locas.errors import LocasError

# --- LoCoMo (the official snap-research/LoCoMo task_eval/evaluation.py) -----------------------------

MULTI_HOP, OPEN_DOMAIN, ADVERSARIAL = 1, 3, 5
_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_PUNCTUATION = set(string.punctuation)
_STEMMER = PorterStemmer()
ABSTENTIONS = ("no information available", "not mentioned")


def normalize_answer(text: str) -> str:
    """Drop commas, lower-case, drop punctuation, drop a/an/the/and, collapse whitespace."""
    text = text.replace(",", "").lower()
    text = "".join(char for char in text if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _STEMMER.stem(word)


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the Porter-stemmed normalized tokens (multiset overlap)."""
    predicted = [_stem(word) for word in normalize_answer(prediction).split()]
    expected = [_stem(word) for word in normalize_answer(gold).split()]
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def multi_hop_f1(prediction: str, gold: str) -> float:
    """Split both on commas (before normalizing drops them); mean over gold parts of the best part F1."""
    predicted = [part.strip() for part in prediction.split(",")]
    expected = [part.strip() for part in gold.split(",")]
    return sum(max(token_f1(p, g) for p in predicted) for g in expected) / len(expected)


def adversarial_official(prediction: str) -> float:
    """1 when the answer abstains ("no information available" / "not mentioned"), else 0."""
    answer = prediction.lower()
    return 1.0 if any(phrase in answer for phrase in ABSTENTIONS) else 0.0


def score_qa(category: int, prediction: str, answer: object = None, adversarial_answer: object = None) -> dict:
    """`f1` by the official rule of the category; `f1_adversarial_report` (the report's −F1 against the
    adversarial answer) for category 5, else None. Integer answers are scored as text."""
    if category == ADVERSARIAL:
        report = None if adversarial_answer is None else -token_f1(prediction, str(adversarial_answer))
        return {"f1": adversarial_official(prediction), "f1_adversarial_report": report}
    if category not in (1, 2, 3, 4):
        raise LocasError(f"LoCoMo category must be one of 1-5, got {category!r}")
    if answer is None:
        raise LocasError(f"LoCoMo category {category} question has no gold answer to score against")
    gold = str(answer)
    if category == MULTI_HOP:
        return {"f1": multi_hop_f1(prediction, gold), "f1_adversarial_report": None}
    if category == OPEN_DOMAIN:
        gold = gold.split(";")[0].strip()
    return {"f1": token_f1(prediction, gold), "f1_adversarial_report": None}
