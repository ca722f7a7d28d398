"""Scores from stored rows: PG-19 perplexities (SPEC §6), LoCoMo F1 (SPEC §7), MMLU accuracy (SPEC §8).

Plain Python on lists of dicts (the rows of a run's store), so task code and `analysis/` (pandas:
`df.to_dict("records")`) share one implementation.

PG-19 rows are per window: `start` (position of the window's first scored token), `scored_tokens`,
`nll_sum`; a window scores positions [start, start + scored_tokens). Only per-window sums are stored,
so a position range [lo, hi) counts a window **iff lo <= start < hi**: a window belongs to the range
of its first scored token. A window straddling hi is counted whole; windows are at most a few
thousand tokens against ranges of 50K, so the boundary error is tiny, and the rule is exact and the
same everywhere. The functions also take the windows of many books at once: sums over all of them
give the pooled (token-weighted) perplexity of the corpus.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from functools import lru_cache
from typing import Iterable, Mapping

from nltk.stem import PorterStemmer

from locas.errors import LocasError

Row = Mapping[str, object]

PPL_AT = (50_000, 100_000, 150_000, 200_000)
BUCKET_WIDTH = 50_000


# --- PG-19 -----------------------------------------------------------------------------------------


def range_ppl(windows: Iterable[Row], lo: int = 0, hi: float = math.inf) -> float | None:
    """exp(Σ nll_sum / Σ scored_tokens) over windows with lo <= start < hi; None when there are none."""
    nll, tokens = 0.0, 0
    for window in windows:
        if lo <= window["start"] < hi:
            nll += window["nll_sum"]
            tokens += window["scored_tokens"]
    return math.exp(nll / tokens) if tokens else None


def ppl_at(windows: Iterable[Row], n: int) -> float | None:
    """PPL@N: over the book's first N tokens (its whole length when shorter)."""
    return range_ppl(windows, 0, n)


def bucket_ppl(windows: Iterable[Row], n: int, width: int = BUCKET_WIDTH) -> float | None:
    """PPL over [N - width, N): how well the model does at that depth, not on average up to it."""
    return range_ppl(windows, max(0, n - width), n)


def templora_ppl(windows: Iterable[Row], n: float = math.inf) -> float | None:
    """Σ scored_i · exp(nll_i / scored_i) / Σ scored_i over windows starting before N.

    The mean of per-window perplexities weighted by tokens, as TempLoRA-style tables report; always
    at least the pooled PPL (Jensen), so compare it only with tables that use it.
    """
    weighted, tokens = 0.0, 0
    for window in windows:
        scored = window["scored_tokens"]
        if window["start"] < n and scored > 0:
            weighted += scored * math.exp(window["nll_sum"] / scored)
            tokens += scored
    return weighted / tokens if tokens else None


def book_summary(windows: Iterable[Row], ns: Iterable[int] = PPL_AT, width: int = BUCKET_WIDTH) -> dict:
    """One book's figures: `ppl` (whole book), `templora_ppl`, and per N `ppl@N`, `bucket@N`,
    `templora_ppl@N`, `reaches@N` (whether the book has N tokens, so tables can keep only those)."""
    windows = list(windows)
    end = max((window["start"] + window["scored_tokens"] for window in windows), default=0)
    summary = {"ppl": range_ppl(windows), "templora_ppl": templora_ppl(windows)}
    for n in ns:
        summary[f"ppl@{n}"] = ppl_at(windows, n)
        summary[f"bucket@{n}"] = bucket_ppl(windows, n, width)
        summary[f"templora_ppl@{n}"] = templora_ppl(windows, n)
        summary[f"reaches@{n}"] = end >= n
    return summary


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


def category_means(rows: Iterable[Row], key: str = "f1") -> dict[int, float]:
    """Mean of `key` × 100 per category, over the rows where it is not None, categories in order."""
    values: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        if row.get(key) is not None:
            values[int(row["category"])].append(float(row[key]))
    return {category: 100 * sum(vals) / len(vals) for category, vals in sorted(values.items())}


# --- MMLU --------------------------------------------------------------------------------------------


def mmlu_accuracy(rows: Iterable[Row]) -> dict[str, float | None]:
    """`micro` (over questions) and `macro` (mean of per-subject accuracies) from rows with `subject`, `correct`."""
    per_subject: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        per_subject[str(row["subject"])].append(bool(row["correct"]))
    if not per_subject:
        return {"micro": None, "macro": None}
    answers = [correct for subject in per_subject.values() for correct in subject]
    macro = sum(sum(subject) / len(subject) for subject in per_subject.values()) / len(per_subject)
    return {"micro": sum(answers) / len(answers), "macro": macro}
