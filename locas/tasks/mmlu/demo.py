"""MMLU's --demo inputs: a subject's questions in the cais layout, made from the sample text, and the demo books."""
from __future__ import annotations

import csv
import random
from pathlib import Path

from locas.tasks.pg19.demo import demo_books
from locas.tiny import sample_text


def demo_inputs(root: Path) -> dict:
    """16 questions of one subject and two books to adapt on, under `root`; the flags that point a run at them."""
    folder = Path(root) / "mmlu"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "sailing_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
        writer.writerows(sample_questions("sailing", count=16))
    return {"data": str(folder), "books": str(demo_books(root)), "max_books": 2}


def sample_questions(subject: str, count: int = 8, seed: int = 0) -> list[list[str]]:
    """MMLU-style rows `question, choice0..3, answer` (cais layout, answer 0-based) from the sample text."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        words = sample_text(30, seed=seed * 1000 + i).split()
        choices = [" ".join(words[4 * j + 8:4 * j + 10]) for j in range(4)]
        rows.append([" ".join(words[:7]) + "?", *choices, str(rng.randrange(4))])
    return rows
