"""MMLU questions and the k-shot prompt (SPEC §8), used as the forgetting check.

Sources: the `cais/mmlu` dataset (a hub id or a local copy of its files; only the asked split is loaded,
never the 100K-question `auxiliary_train`), or a folder of `{subject}_{split}.csv` files in either layout:
the original Hendrycks one (no header; question, A, B, C, D, answer letter) or the cais one (header
`question,choice0,choice1,choice2,choice3,answer`, answer 0-based). Both give identical `Question`s,
so a run's rows do not depend on where the data came from.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from locas.data import is_dataset_folder, is_folder_source, load_hub_dataset
from locas.errors import LocasError

DEFAULT_DATASET = "cais/mmlu"
LETTERS = ("A", "B", "C", "D")
CAIS_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


@dataclass(frozen=True)
class Question:
    subject: str  # e.g. "abstract_algebra"
    question_id: str  # f"{subject}:{split}:{row index within the subject, from 0}"
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # 0-3 for A-D


def load_mmlu(
    source: str | Path = DEFAULT_DATASET, subjects: Iterable[str] | None = None, split: str = "test"
) -> list[Question]:
    """Questions of `subjects` (all when None) from `split`; `split="dev"` gives the few-shot exemplars."""
    chosen = None if subjects is None else list(subjects)
    if not is_folder_source(source):
        return _dataset_questions(str(source), chosen, split)
    folder = Path(source).expanduser()
    if folder.is_dir() and next(folder.glob(f"*_{split}.csv"), None) is None and is_dataset_folder(folder):
        return _dataset_questions(str(folder), chosen, split)
    return _folder_questions(folder, chosen, split)


def build_prompt(question: Question, dev: Sequence[Question] = (), k: int = 0) -> str:
    """The subject line, the first `k` dev questions of the same subject with answers, then the question.

    The model's answer is scored by the log-probability of " A" ... " D" after the final "Answer:".
    """
    shots = [shot for shot in dev if shot.subject == question.subject][:k]
    if len(shots) < k:
        raise LocasError(f"MMLU subject {question.subject}: {k} shots asked, the dev questions hold {len(shots)}")
    subject = question.subject.replace("_", " ")
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return head + "".join(_format(shot) + f" {LETTERS[shot.answer]}\n\n" for shot in shots) + _format(question)


def _format(question: Question) -> str:
    options = [f"{letter}. {choice}" for letter, choice in zip(LETTERS, question.choices)]
    return "\n".join([question.question.strip(), *options, "Answer:"])


def _folder_questions(folder: Path, subjects: list[str] | None, split: str) -> list[Question]:
    if not folder.is_dir():
        raise LocasError(f"MMLU folder not found: {folder} (expected {{subject}}_{split}.csv files)")
    suffix = f"_{split}.csv"
    if subjects is None:
        subjects = sorted(path.name[: -len(suffix)] for path in folder.glob(f"*{suffix}"))
        if not subjects:
            raise LocasError(f"{folder}: no MMLU files named {{subject}}{suffix}")
    questions = []
    for subject in subjects:
        path = folder / f"{subject}{suffix}"
        if not path.is_file():
            raise LocasError(f"MMLU file not found: {path} (subject {subject}, split {split})")
        questions += _read_csv(path, subject, split)
    return questions


def _read_csv(path: Path, subject: str, split: str) -> list[Question]:
    """Rows of either layout; the cais header, when present, says answers are 0-based indices."""
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: tolerate a spreadsheet's BOM
        reader = csv.reader(handle)
        rows = [(reader.line_num, row) for row in reader]
    cais_layout = bool(rows) and [cell.strip() for cell in rows[0][1]] == CAIS_HEADER
    valid_answers = ("0", "1", "2", "3") if cais_layout else LETTERS
    questions = []
    for index, (line, row) in enumerate(rows[1:] if cais_layout else rows):
        where = f"{path}: row {index + 1} (line {line})"
        if len(row) != 6:
            raise LocasError(f"{where}: expected 6 columns (question, 4 choices, answer), found {len(row)}")
        answer = row[5].strip()
        if answer not in valid_answers:
            raise LocasError(f"{where}: answer {row[5]!r} is not one of {', '.join(valid_answers)}")
        choices = tuple(row[1:5])
        questions.append(Question(subject, f"{subject}:{split}:{index}", row[0], choices, valid_answers.index(answer)))
    if not questions:
        raise LocasError(f"{path}: no questions")
    return questions


def _dataset_questions(dataset_id: str, subjects: list[str] | None, split: str) -> list[Question]:
    """One `load_dataset` per subject, or the "all" config when no subject is named."""
    hint = "check the id, the subject and the network, or pass a folder of {subject}_{split}.csv files"
    questions = []
    for config in subjects or ["all"]:
        rows = load_hub_dataset(dataset_id, config, split, hint)
        counts: dict[str, int] = {}
        for position, row in enumerate(rows):
            subject = row.get("subject") or config
            index = counts.get(subject, 0)
            counts[subject] = index + 1
            where = f"dataset {dataset_id} ({config}) split {split!r} row {position}"
            questions.append(_dataset_question(row, subject, f"{subject}:{split}:{index}", where))
    return questions


def _dataset_question(row: dict[str, Any], subject: str, question_id: str, where: str) -> Question:
    choices, answer = row.get("choices"), row.get("answer")
    if not isinstance(choices, (list, tuple)) or len(choices) != 4:
        raise LocasError(f"{where}: expected 4 choices, found {choices!r}")
    if answer not in (0, 1, 2, 3):
        raise LocasError(f"{where}: answer {answer!r} is not one of 0, 1, 2, 3")
    return Question(subject, question_id, row["question"], tuple(choices), answer)
