"""MMLU as a forgetting check (SPEC §8): letter log-probability scoring, and the retention unit.

Scoring: the prompt of `locas.tasks.mmlu.data.build_prompt` ends with "Answer:"; the model's answer is the
letter whose token has the highest log-probability (log-softmax over the whole vocabulary) at the next
position. The letter tokens are the LAST token id of `tokenizer(" A")` ... `tokenizer(" D")`: one token
for Qwen/Llama tokenizers (" A" is a single token), and for a tokenizer that splits the space off, the
letter itself (decision: no extra context token is appended to the prompt).

Units (how the orchestrator uses this module):
- `run_mmlu_base(model, tokenizer, questions)` scores the frozen base once per run: one unit, rows with
  `variant="base"`, `book_id=None`.
- `run_mmlu_retention(model, tokenizer, book, questions, cfg)` is one unit per (book, method): adapt on
  the whole book with the PG-19 windows, then, while the adapted state is live, score every question with
  base + memory (or adapter), `variant="memory"`, and with the state's plain export (`to_dense`, or the
  merged LoRA), `variant="dense"`. The memory/dense agreement is a figure of `analysis.tables.mmlu_table`.

Rows (docs/design.md): `kind="mmlu"`, `book_id`, `variant`, `subject`, `question_id`,
`answer` and `prediction` (letters "A"-"D"), `correct`. A question that cannot be scored (a prompt that
cannot be built, or longer than the model's context) gives a `kind="error"` row and the rest go on.
"""
from __future__ import annotations

from typing import Sequence

import torch

from locas.adapt import adapted
from locas.config import AdaptConfig
from locas.contract import error_row
from locas.documents import Progress
from locas.errors import LocasError, one_line
from locas.tasks.batching import context_limit, in_batches, left_pad, model_device, pad_id_of
from locas.tasks.mmlu.data import LETTERS, Question, build_prompt
from locas.tasks.pg19.data import Book

VARIANTS = ("base", "memory", "dense")


def letter_token_ids(tokenizer) -> list[int]:
    """The last token id of " A", " B", " C", " D"; refuses a tokenizer where two letters share it."""
    ids = []
    for letter in LETTERS:
        encoded = tokenizer(f" {letter}", add_special_tokens=False).input_ids
        if not encoded:
            raise LocasError(f"the tokenizer encodes ' {letter}' to no token: cannot score MMLU letters")
        ids.append(int(encoded[-1]))
    if len(set(ids)) != len(ids):
        raise LocasError(f"the tokenizer gives the letters A-D the token ids {ids}: they must be distinct")
    return ids


@torch.no_grad()
def letter_logprobs(model, sequences: Sequence[Sequence[int]], letter_ids: Sequence[int], pad_id: int = 0) -> torch.Tensor:
    """log p(letter | prompt) at the position after each prompt, (N, 4) fp32 on the CPU, in one batch.

    `model` is a CausalLMWithMemory (its active memory or adapter applies) or a plain HF causal LM.
    Prompts are left-padded with explicit position ids, and only the last position's logits are kept.
    """
    device = model_device(model)
    ids, mask = left_pad(sequences, pad_id, device)
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
    logprobs = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (B, V)
    return logprobs[:, torch.tensor(letter_ids, device=device)].cpu()


def prepare_prompts(tokenizer, questions: Sequence[Question], dev: Sequence[Question] = (), k: int = 0,
                    max_length: int | None = None) -> list[list[int] | str]:
    """Per question its prompt's token ids, or the one-line reason it cannot be scored."""
    prepared: list[list[int] | str] = []
    for question in questions:
        try:
            ids = tokenizer(build_prompt(question, dev, k), add_special_tokens=False).input_ids
            if not ids:
                raise LocasError(f"MMLU question {question.question_id}: the prompt encodes to no token")
            if max_length is not None and len(ids) > max_length:
                raise LocasError(f"MMLU question {question.question_id}: the prompt has {len(ids)} tokens, more than "
                                 f"the model's context of {max_length}; use fewer shots")
            prepared.append(ids)
        except Exception as error:  # noqa: BLE001 - one bad question must not stop the others
            prepared.append(one_line(error))
    return prepared


def _score_prepared(model, prepared, questions, letter_ids, pad_id, keys: dict, batch_size: int,
                    max_batch_tokens: int, scored=None) -> list[dict]:
    """Rows for prepared prompts, in question order; a batch that fails is retried question by question.
    `scored(n)` hears how many questions have their row so far."""
    rows: list[dict | None] = [None] * len(questions)
    for i, reason in enumerate(prepared):
        if isinstance(reason, str):
            rows[i] = error_row(reason, **keys, subject=questions[i].subject, question_id=questions[i].question_id)
    good = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
    batches = in_batches([prepared[i] for i in good], [len(prepared[i]) for i in good],
                         lambda batch: list(letter_logprobs(model, batch, letter_ids, pad_id)),
                         batch_size, max_batch_tokens)
    for n, (j, logprobs, _seconds) in enumerate(batches, len(questions) - len(good) + 1):
        if scored is not None:
            scored(n)
        question = questions[good[j]]
        item = {**keys, "subject": question.subject, "question_id": question.question_id}
        if isinstance(logprobs, Exception):
            rows[good[j]] = error_row(logprobs, **item)
            continue
        prediction = LETTERS[int(logprobs.argmax())]
        answer = LETTERS[question.answer] if question.answer in range(4) else str(question.answer)
        rows[good[j]] = {"kind": "mmlu", **item, "answer": answer, "prediction": prediction,
                         "correct": prediction == answer}
    return rows


def score_questions(model_or_hf, tokenizer, questions: Sequence[Question], dev: Sequence[Question] = (), k: int = 0,
                    *, variant: str = "base", book_id: str | None = None, batch_size: int = 16,
                    max_batch_tokens: int = 16384, progress: Progress | None = None) -> list[dict]:
    """One `mmlu` row per question (or an `error` row for a question that cannot be scored).

    `model_or_hf`: a CausalLMWithMemory (inside `use_memory`/a method's forward context the memory
    applies) or a plain HF causal LM such as a `to_dense` export. `k` shots from `dev`, same subject.
    `progress` hears the questions scored (under the doc id "base" or `book_id`).
    """
    if variant not in VARIANTS:
        raise LocasError(f"unknown MMLU variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    prepared = prepare_prompts(tokenizer, questions, dev, k, context_limit(model_or_hf))
    scored = None if progress is None else lambda n: progress(book_id or "base", questions=(n, len(questions)))
    return _score_prepared(model_or_hf, prepared, questions, letter_token_ids(tokenizer), pad_id_of(tokenizer),
                           {"book_id": book_id, "variant": variant}, batch_size, max_batch_tokens, scored)


def run_mmlu_base(model, tokenizer, questions: Sequence[Question], dev: Sequence[Question] = (), k: int = 0,
                  **kwargs) -> list[dict]:
    """The frozen base, scored once per run (not per book): `variant="base"`, `book_id=None`."""
    return score_questions(model, tokenizer, questions, dev, k, variant="base", book_id=None, **kwargs)


def run_mmlu_retention(model, tokenizer, book: Book, questions: Sequence[Question], cfg: AdaptConfig,
                       dev: Sequence[Question] = (), k: int = 0, batch_size: int = 16,
                       max_batch_tokens: int = 16384, progress: Progress | None = None) -> list[dict]:
    """One unit = (book, method): adapt on the whole book (PG-19 windows), then score every question with
    the adapted state live (`memory`) and with its plain export (`dense`). A non-finite loss during
    adaptation stops the unit with a LocasError (scores under a broken state would mean nothing).
    `progress` hears the windows, then the questions scored (each twice: memory, then dense)."""
    from locas.tasks.pg19.run import book_document

    doc = book_document(tokenizer, book, cfg)
    prepared = prepare_prompts(tokenizer, questions, dev, k, context_limit(model))
    letters, pad = letter_token_ids(tokenizer), pad_id_of(tokenizer)

    def score(scorer, variant: str, before: int) -> list[dict]:
        scored = None if progress is None else \
            lambda n: progress(book.book_id, questions=(before + n, 2 * len(questions)))
        return _score_prepared(scorer, prepared, questions, letters, pad, {"book_id": book.book_id, "variant": variant},
                               batch_size, max_batch_tokens, scored)

    if progress is not None:  # the questions to come: part of the unit's work from the start
        progress(book.book_id, questions=(0, 2 * len(questions)))
    with adapted(model, doc, cfg, progress) as (result, method):
        rows = score(model, "memory", 0)
        dense = method.export(result.slot)
        try:
            rows += score(dense, "dense", len(questions))
        finally:
            del dense
    return rows
