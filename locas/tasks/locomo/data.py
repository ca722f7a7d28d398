"""LoCoMo conversations, their rendering as text, and the question prompts (SPEC §7).

The file is `locomo10.json` from snap-research/LoCoMo, or any file of its shape. Rendering and the
prompts follow the official harness (`task_eval/gpt_utils.py`) so scores are comparable, with two
clean-ups: the image caption stays on its turn's line (the harness puts a stray newline before it)
and the header's "wriiten" is spelled right.

Errors: a broken file or conversation raises `LocasError`. A broken *question* raises too by
default; with `load_locomo(path, strict=False)` it is skipped and recorded on its conversation as a
`SkippedQuestion`, so a run can write one error row per skipped question and go on.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from locas.errors import LocasError

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
TEMPORAL, ADVERSARIAL = 2, 5
NOT_MENTIONED = "Not mentioned in the conversation"

HEADER = (
    "Below is a conversation between two people: {speaker_a} and {speaker_b}. The conversation takes "
    "place over multiple days and the date of each conversation is written at the beginning of the "
    "conversation.\n\n"
)
INSTRUCTION = (
    "Based on the above conversations, answer the following question in a short phrase. Answer with "
    "exact words from the context whenever possible.\nQuestion: {question} Short answer:"
)
TEMPORAL_HINT = " Use DATE of CONVERSATION to answer with an approximate date."
ADVERSARIAL_CHOICE = " Select the correct answer: (a) {a} (b) {b}."

_SESSION_KEY = re.compile(r"session_(\d+)")


@dataclass(frozen=True)
class Turn:
    speaker: str
    dia_id: str
    text: str
    blip_caption: str | None = None


@dataclass(frozen=True)
class Session:
    index: int  # the N of `session_N`: chronological order
    date: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class QA:
    question_id: str  # f"{sample_id}:{position in the file's qa list}"
    question: str
    answer: str | None  # integers in the file become strings; None for most adversarial questions
    adversarial_answer: str | None
    category: int
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class SkippedQuestion:
    question_id: str
    error: str  # one line naming the file and the question


@dataclass(frozen=True)
class Conversation:
    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: tuple[Session, ...]  # sorted by index
    qa: tuple[QA, ...]
    skipped: tuple[SkippedQuestion, ...] = ()  # only with strict=False


@dataclass(frozen=True)
class QuestionPrompt:
    text: str
    options: dict[str, str] | None  # adversarial only: {"a": ..., "b": ...} as shown to the model


def load_locomo(path: str | Path, strict: bool = True) -> list[Conversation]:
    """Parse a LoCoMo JSON file: a list of samples with `sample_id`, `conversation` and `qa`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LocasError(f"LoCoMo file not found: {path}")
    try:
        samples = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LocasError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(samples, list) or not samples:
        raise LocasError(f"{path}: expected a non-empty JSON list of conversations")
    return [_conversation(sample, path, position, strict) for position, sample in enumerate(samples)]


def _conversation(sample: Any, path: Path, position: int, strict: bool) -> Conversation:
    where = f"{path}: conversation {position}"
    if not isinstance(sample, dict) or not isinstance(sample.get("sample_id"), str):
        raise LocasError(f"{where}: expected an object with a string 'sample_id'")
    sample_id = sample["sample_id"]
    where = f"{path}: conversation {sample_id}"
    body = sample.get("conversation")
    if not isinstance(body, dict):
        raise LocasError(f"{where}: no 'conversation' object")
    speakers = [body.get("speaker_a"), body.get("speaker_b")]
    if not all(isinstance(name, str) and name for name in speakers):
        raise LocasError(f"{where}: 'speaker_a' and 'speaker_b' must be non-empty strings")
    sessions = _sessions(body, where)
    if not isinstance(sample.get("qa"), list):
        raise LocasError(f"{where}: no 'qa' list")
    questions, skipped = [], []
    for index, item in enumerate(sample["qa"]):
        question_id = f"{sample_id}:{index}"
        try:
            questions.append(_qa(item, question_id, f"{path}: question {question_id}"))
        except LocasError as error:
            if strict:
                raise
            skipped.append(SkippedQuestion(question_id, str(error)))
    return Conversation(sample_id, speakers[0], speakers[1], sessions, tuple(questions), tuple(skipped))


def _sessions(body: dict, where: str) -> tuple[Session, ...]:
    """Every `session_N` list with its `session_N_date_time`; date keys without a session are skipped."""
    sessions = []
    for key, turns in body.items():
        match = _SESSION_KEY.fullmatch(key)
        if not match:
            continue
        index = int(match.group(1))
        if not isinstance(turns, list) or not turns:
            raise LocasError(f"{where}: {key} must be a non-empty list of turns")
        date = body.get(f"{key}_date_time")
        if not isinstance(date, str) or not date:
            raise LocasError(f"{where}: {key} has no {key}_date_time")
        parsed = tuple(_turn(turn, f"{where}: {key} turn {position}") for position, turn in enumerate(turns))
        sessions.append(Session(index, date, parsed))
    if not sessions:
        raise LocasError(f"{where}: no sessions (expected keys session_1, session_2, ...)")
    return tuple(sorted(sessions, key=lambda session: session.index))


def _turn(turn: Any, where: str) -> Turn:
    if not isinstance(turn, dict) or not all(isinstance(turn.get(key), str) for key in ("speaker", "text")):
        raise LocasError(f"{where}: a turn needs string 'speaker' and 'text'")
    caption = turn.get("blip_caption")
    return Turn(turn["speaker"], str(turn.get("dia_id", "")), turn["text"], str(caption) if caption else None)


def _qa(item: Any, question_id: str, where: str) -> QA:
    if not isinstance(item, dict) or not isinstance(item.get("question"), str):
        raise LocasError(f"{where}: expected an object with a string 'question'")
    category = item.get("category")
    if category not in CATEGORIES:
        raise LocasError(f"{where}: category must be one of 1-5, got {category!r}")
    answer, adversarial = _text_or_none(item.get("answer")), _text_or_none(item.get("adversarial_answer"))
    if category == ADVERSARIAL and adversarial is None:
        raise LocasError(f"{where}: adversarial question (category 5) has no 'adversarial_answer'")
    if category != ADVERSARIAL and answer is None:
        raise LocasError(f"{where}: category {category} question has no 'answer'")
    evidence = item.get("evidence") or []
    if isinstance(evidence, str):
        evidence = [evidence]
    return QA(question_id, item["question"], answer, adversarial, category, tuple(str(e) for e in evidence))


def _text_or_none(value: Any) -> str | None:
    """Answers are strings or, in a few items, integers (e.g. 2022); both are scored as text."""
    return None if value is None or value == "" else str(value)


def render_session(session: Session) -> str:
    """One dated session: a training chunk for `context_mode=date_split`."""
    lines = [f"DATE: {session.date}", "CONVERSATION:"]
    for turn in session.turns:
        line = f'{turn.speaker} said, "{turn.text}"'
        if turn.blip_caption:
            line += f" and shared {turn.blip_caption}."
        lines.append(line)
    return "\n".join(lines) + "\n"


def render_conversation(conversation: Conversation, sessions: Sequence[Session] | None = None) -> str:
    """Header, then sessions in chronological order, a blank line between them.

    Pass `sessions` (e.g. `conversation.sessions[k:]`) to render a suffix that fits a context window.
    """
    chosen = conversation.sessions if sessions is None else sessions
    header = HEADER.format(speaker_a=conversation.speaker_a, speaker_b=conversation.speaker_b)
    return header + "\n".join(render_session(session) for session in chosen)


def build_question_prompt(qa: QA, seed: int, context: str = "") -> QuestionPrompt:
    """The answering prompt after `context` (a rendered conversation, or "" for answers from memory alone).

    Temporal questions get the date hint; adversarial ones the official two-way choice, whose order
    is drawn from `random.Random(f"{seed}:{question_id}")` so every run and worker shows the same.
    """
    question, options = qa.question, None
    if qa.category == TEMPORAL:
        question += TEMPORAL_HINT
    elif qa.category == ADVERSARIAL:
        if random.Random(f"{seed}:{qa.question_id}").random() < 0.5:
            options = {"a": NOT_MENTIONED, "b": qa.adversarial_answer}
        else:
            options = {"a": qa.adversarial_answer, "b": NOT_MENTIONED}
        question += ADVERSARIAL_CHOICE.format(**options)
    separator = "\n" if context else ""
    return QuestionPrompt(context + separator + INSTRUCTION.format(question=question), options)


def resolve_choice(prediction: str, options: dict[str, str] | None) -> str:
    """Map an answer of "a", "(a)", "a) ..." to the option's text, as the harness does before scoring.

    Without options, or when the answer names no option, the prediction is returned unchanged.
    """
    if not options:
        return prediction
    answer = prediction.strip().lower()
    for letter, text in options.items():
        if answer == letter or answer.startswith((f"({letter})", f"{letter})")):
            return text
    return prediction
