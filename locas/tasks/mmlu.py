"""MMLU as a forgetting check (SPEC §8): letter log-probability scoring, and the retention unit.

Scoring: the prompt of `locas.data.mmlu.build_prompt` ends with "Answer:"; the model's answer is the
letter whose token has the highest log-probability (log-softmax over the whole vocabulary) at the next
position. The letter tokens are the LAST token id of `tokenizer(" A")` ... `tokenizer(" D")`: one token
for Qwen/Llama tokenizers (" A" is a single token), and for a tokenizer that splits the space off, the
letter itself (decision: no extra context token is appended to the prompt).

Units (how the orchestrator uses this module):
- `run_mmlu_base(model, tokenizer, questions)` scores the frozen base once per run: one unit, rows with
  `variant="base"`, `book_id=None`, `method="none"`.
- `run_mmlu_retention(model, tokenizer, book, questions, cfg)` is one unit per (book, method): adapt on
  the whole book with the PG-19 windows, then, while the adapted state is live, score every question with
  base + memory (or adapter), `variant="memory"`, and with the state's plain export (`to_dense`, or the
  merged LoRA), `variant="dense"`. `agreement(rows)` gives the memory/dense agreement rate.

Rows (docs/design.md): `kind="mmlu"`, `task`, `method`, `book_id`, `variant`, `subject`, `question_id`,
`answer` and `prediction` (letters "A"-"D"), `correct`. A question that cannot be scored (a prompt that
cannot be built, or longer than the model's context) gives a `kind="error"` row and the rest go on.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch

from locas.adapt import Adapter
from locas.config import AdaptConfig
from locas.data.mmlu import LETTERS, Question, build_prompt
from locas.data.pg19 import Book
from locas.errors import LocasError

VARIANTS = ("base", "memory", "dense")


# --- batching helpers (shared with locas.tasks.locomo) -----------------------------------------------


def pad_id_of(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (padded positions are masked out anyway)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), each (B, T), sequences right-aligned: the next position is the same for all."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, sequence in enumerate(sequences):
        if sequence:
            ids[i, width - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
            mask[i, width - len(sequence):] = 1
    return ids.to(device), mask.to(device)


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length (longest first): at most `batch_size` per batch and at most
    `max_batch_tokens` padded tokens, except that a single long item always gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and \
                lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if device is not None else next(model.parameters()).device


def context_limit(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


# --- scoring --------------------------------------------------------------------------------------------


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
def letter_logprobs(model, sequences: Sequence[Sequence[int]], letter_ids: Sequence[int], pad_id: int = 0,
                    batch_size: int = 16, max_batch_tokens: int = 16384) -> torch.Tensor:
    """log p(letter | prompt) at the position after each prompt, (N, 4) fp32 on the CPU.

    `model` is a CausalLMWithMemory (its active memory or adapter applies) or a plain HF causal LM.
    Prompts are left-padded with explicit position ids, and only the last position's logits are kept.
    """
    device = model_device(model)
    out = torch.empty(len(sequences), len(letter_ids))
    letters = torch.tensor(letter_ids, device=device)
    for batch in length_batches([len(s) for s in sequences], batch_size, max_batch_tokens):
        ids, mask = left_pad([sequences[i] for i in batch], pad_id, device)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
        logprobs = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (B, V)
        out[batch] = logprobs[:, letters].cpu()
    return out


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
            prepared.append(one_line_error(error))
    return prepared


def one_line_error(error: BaseException) -> str:
    """A per-item error as one line: a LocasError's message, else `TypeName: message`."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, LocasError) else f"{type(error).__name__}: {text}"


def _score_prepared(model, prepared, questions, letter_ids, pad_id, common: dict, batch_size: int,
                    max_batch_tokens: int) -> list[dict]:
    """Rows for prepared prompts; a batch that fails is retried question by question."""
    errors = {i: p for i, p in enumerate(prepared) if isinstance(p, str)}
    good = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
    scores: dict[int, torch.Tensor] = {}
    for batch in length_batches([len(prepared[i]) for i in good], batch_size, max_batch_tokens):
        chosen = [good[j] for j in batch]
        try:
            logprobs = letter_logprobs(model, [prepared[i] for i in chosen], letter_ids, pad_id, len(chosen))
            scores.update(zip(chosen, logprobs))
        except Exception:  # noqa: BLE001 - find the question(s) that fail, score the rest
            for i in chosen:
                try:
                    scores[i] = letter_logprobs(model, [prepared[i]], letter_ids, pad_id)[0]
                except Exception as error:  # noqa: BLE001
                    errors[i] = one_line_error(error)
    rows = []
    for i, question in enumerate(questions):
        keys = {**common, "subject": question.subject, "question_id": question.question_id}
        if i in errors:
            rows.append({"kind": "error", **keys, "error": errors[i], "attempts": 1})
            continue
        prediction = LETTERS[int(scores[i].argmax())]
        answer = LETTERS[question.answer] if question.answer in range(4) else str(question.answer)
        rows.append({"kind": "mmlu", **keys, "answer": answer, "prediction": prediction,
                     "correct": prediction == answer})
    return rows


def score_questions(model_or_hf, tokenizer, questions: Sequence[Question], dev: Sequence[Question] = (), k: int = 0,
                    *, variant: str = "base", book_id: str | None = None, method: str = "none",
                    batch_size: int = 16, max_batch_tokens: int = 16384) -> list[dict]:
    """One `mmlu` row per question (or an `error` row for a question that cannot be scored).

    `model_or_hf`: a CausalLMWithMemory (inside `use_memory`/a method's forward context the memory
    applies) or a plain HF causal LM such as a `to_dense` export. `k` shots from `dev`, same subject.
    """
    if variant not in VARIANTS:
        raise LocasError(f"unknown MMLU variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    prepared = prepare_prompts(tokenizer, questions, dev, k, context_limit(model_or_hf))
    common = {"task": "mmlu", "method": method, "book_id": book_id, "variant": variant}
    return _score_prepared(model_or_hf, prepared, questions, letter_token_ids(tokenizer), pad_id_of(tokenizer),
                           common, batch_size, max_batch_tokens)


def run_mmlu_base(model, tokenizer, questions: Sequence[Question], dev: Sequence[Question] = (), k: int = 0,
                  **kwargs) -> list[dict]:
    """The frozen base, scored once per run (not per book): `variant="base"`, `book_id=None`, `method="none"`."""
    return score_questions(model, tokenizer, questions, dev, k, variant="base", book_id=None, method="none", **kwargs)


def run_mmlu_retention(model, tokenizer, book: Book, questions: Sequence[Question], cfg: AdaptConfig,
                       dev: Sequence[Question] = (), k: int = 0, batch_size: int = 16,
                       max_batch_tokens: int = 16384) -> list[dict]:
    """One unit = (book, method): adapt on the whole book (PG-19 windows), then score every question with
    the adapted state live (`memory`) and with its plain export (`dense`). A non-finite loss during
    adaptation stops the unit with a LocasError (scores under a broken state would mean nothing)."""
    from locas.methods import make_method
    from locas.tasks.pg19 import book_document

    doc = book_document(tokenizer, book, cfg)
    method = make_method(model, cfg)
    prepared = prepare_prompts(tokenizer, questions, dev, k, context_limit(model))
    letters, pad = letter_token_ids(tokenizer), pad_id_of(tokenizer)
    common = {"task": "mmlu", "method": cfg.method, "book_id": book.book_id}
    rows: list[dict] = []
    with contextlib.closing(Adapter(model, method, cfg).run([doc])) as results:
        for result in results:  # the method's state in result.slot is this book's while we are here
            if result.error:
                raise LocasError(f"MMLU retention on book {book.book_id}: adaptation failed ({result.error})")
            slot = torch.tensor([result.slot], device=model.device)
            with torch.no_grad(), method.forward_context(slot):
                rows += _score_prepared(model, prepared, questions, letters, pad, {**common, "variant": "memory"},
                                        batch_size, max_batch_tokens)
            dense = method.export(result.slot)
            try:
                rows += _score_prepared(dense, prepared, questions, letters, pad, {**common, "variant": "dense"},
                                        batch_size, max_batch_tokens)
            finally:
                del dense
    return rows


def agreement(rows: Iterable[dict]) -> float | None:
    """Share of (method, book, question) scored under both `memory` and `dense` where the two predict the
    same letter; None when no question has both. SPEC §8 expects >= 0.999 in fp32."""
    predictions: dict[tuple, dict[str, str]] = {}
    for row in rows:
        if row.get("kind") == "mmlu" and row.get("variant") in ("memory", "dense"):
            key = (row.get("method"), row.get("book_id"), row["question_id"])
            predictions.setdefault(key, {})[row["variant"]] = row["prediction"]
    pairs = [p for p in predictions.values() if len(p) == 2]
    if not pairs:
        return None
    return sum(p["memory"] == p["dense"] for p in pairs) / len(pairs)
