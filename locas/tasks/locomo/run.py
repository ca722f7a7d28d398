"""LoCoMo conversational QA (SPEC §7): a conversation in, one `qa` row per question out.

    rows = run_locomo_conversation(model, tokenizer, conversation, AdaptConfig(method="locas"))

Training (`context_mode="date_split"`): the header and the dated sessions, rendered as
`render_conversation` does, form one token stream; each session is one chunk (the first chunk also holds
the header, and the blank line between two sessions ends the earlier chunk, so the chunks' text is exactly
the rendered conversation). `chunk_windows` gives one window per session (a session longer than
`window_size` is cut into windows). The memory is memorized on the first chunk and every window gets
`cfg.steps` updates: LoCoMo's default is 2 for both methods (`steps_per_window=None` becomes 2), the
learning rate stays the method's default. The SD teacher reads up to `teacher_context` (default one
window) tokens before the window on the same stream, i.e. the preceding sessions. `none` trains nothing.

Answering, with the adapted state live (inside the method's forward context): greedy generation of at
most `max_new_tokens` tokens, stopped at the first newline; the answer is the decoded text up to that
newline, stripped. Decision: whitespace and newlines *before* the answer are skipped, not taken as the
stop (a base model often starts its continuation with "\n"); the first newline after the answer starts
ends it.
`answer_context="full"` puts the rendered conversation before the question; when the prompt plus the
answer does not fit `config.max_position_embeddings`, the oldest sessions are dropped until it does
(decision, SPEC §7). `answer_context="none"` asks the question alone: the answer comes from the memory.
Adversarial questions are the official two-way choice; the chosen option's text is the prediction.

Rows (docs/design.md): `kind="qa"`, `conversation_id`, `question_id`,
`category`, `question`, `gold` (the answer; for adversarial questions the option the official rule counts
right, "Not mentioned in the conversation"), `prediction` (as scored), `f1`, `f1_adversarial_report`
(category 5, else None), `seconds` (the question's share of its generation batch, plus the conversation's
adaptation time divided over its questions, so a conversation's seconds sum to its cost). A question that
fails, or that the loader skipped (`load_locomo(strict=False)`), gives a `kind="error"` row instead. One
`kind="conversation"` row leads: `conversation_id`, `tokens` and `windows` trained on, `seconds` of
accelerator time the adaptation took, `trainable_params` (with an expanding memory, at the end, and
`widths`, the rows in force per window, and `final_width`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from locas.adapt import adapted
from locas.config import AdaptConfig
from locas.contract import error_row
from locas.documents import Document, Progress, chunk_windows
from locas.errors import LocasError
from locas.expansion import final_width
from locas.metrics import score_qa
from locas.model import CausalLMWithMemory
from locas.tasks.batching import context_limit, in_batches, left_pad, pad_id_of
from locas.tasks.locomo.data import (
    ADVERSARIAL,
    NOT_MENTIONED,
    QA,
    Conversation,
    build_question_prompt,
    render_conversation,
    render_session,
    resolve_choice,
)

ANSWER_CONTEXTS = ("full", "none")
CONTEXT_MODES = ("date_split",)
LOCOMO_STEPS = 2  # updates per chunk for both methods (SPEC §7)


def locomo_config(cfg: AdaptConfig) -> AdaptConfig:
    """LoCoMo's step default: 2 updates per chunk for every method when `steps_per_window` is unset."""
    return cfg if cfg.steps_per_window is not None else cfg.replace(steps_per_window=LOCOMO_STEPS)


def session_chunks(conversation: Conversation) -> list[str]:
    """Chunk texts whose concatenation is `render_conversation(conversation)`: header + session 1, then one
    per later session; the blank line between two sessions ends the earlier chunk."""
    texts = [render_session(session) for session in conversation.sessions]
    texts = [text + "\n" for text in texts[:-1]] + texts[-1:]
    texts[0] = render_conversation(conversation, ()) + texts[0]
    return texts


def conversation_document(tokenizer, conversation: Conversation, cfg: AdaptConfig) -> Document:
    """The conversation as one token stream with one window per session (`date_split`).

    Chunks are tokenized separately (no special tokens) so each session starts on a token boundary."""
    chunks = [tokenizer(text, add_special_tokens=False).input_ids for text in session_chunks(conversation)]
    bounds, start = [], 0
    for ids in chunks:
        bounds.append((start, start + len(ids)))
        start += len(ids)
    windows = chunk_windows(bounds, cfg.window_size)
    if not windows:
        raise LocasError(f"conversation {conversation.sample_id}: too short to train on (fewer than 2 tokens)")
    tokens = torch.tensor([token for ids in chunks for token in ids], dtype=torch.long)
    session_starts = {lo for lo, _ in bounds}
    sections = [k for k, w in enumerate(windows) if w.start in session_starts]
    return Document(conversation.sample_id, tokens, windows, sections)


# --- answering -----------------------------------------------------------------------------------------


@dataclass
class _Prompt:
    qa: QA
    options: dict[str, str] | None
    ids: list[int]
    seconds: float


class _PromptBuilder:
    """Question prompts that fit the model: with the full conversation, the oldest sessions are dropped
    until prompt + answer fit `limit` tokens."""

    def __init__(self, tokenizer, conversation: Conversation, answer_context: str, seed: int, limit: int | None):
        self.tokenizer, self.conversation, self.answer_context = tokenizer, conversation, answer_context
        self.seed, self.limit = seed, limit
        self._session_tokens: list[int] | None = None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def context(self, dropped: int) -> str:
        if self.answer_context == "none":
            return ""
        return render_conversation(self.conversation, self.conversation.sessions[dropped:])

    def build(self, qa: QA) -> _Prompt:
        started = time.perf_counter()
        prompt = build_question_prompt(qa, self.seed, self.context(0))
        ids = self.encode(prompt.text)
        if self.limit is not None and len(ids) > self.limit:
            if self.answer_context == "none":
                raise LocasError(f"question {qa.question_id}: the prompt has {len(ids)} tokens, more than the "
                                 f"{self.limit} the model's context leaves")
            prompt, ids = self._fit(qa, len(ids))
        return _Prompt(qa, prompt.options, ids, time.perf_counter() - started)

    def _fit(self, qa: QA, full_length: int):
        """The prompt keeping the most recent sessions that fit: start from a token-count estimate of how
        many to drop, then step to the exact smallest number."""
        sessions = self.conversation.sessions
        if self._session_tokens is None:
            self._session_tokens = [len(self.encode(render_session(s) + "\n")) for s in sessions]
        dropped, estimate = 0, full_length
        while dropped < len(sessions) and estimate > self.limit:
            estimate -= self._session_tokens[dropped]
            dropped += 1
        fitting = None
        while True:
            prompt = build_question_prompt(qa, self.seed, self.context(dropped))
            ids = self.encode(prompt.text)
            if len(ids) <= self.limit:
                fitting = prompt, ids
                if dropped == 1:  # dropping none was tried first, by `build`
                    return fitting
                dropped -= 1  # the estimate may have dropped one session too many
            elif fitting is not None:
                return fitting
            elif dropped == len(sessions):
                raise LocasError(f"question {qa.question_id}: the prompt does not fit the model's context "
                                 f"({self.limit} tokens before the answer) even without any session")
            else:
                dropped += 1


class _StopAtNewline(StoppingCriteria):
    """Stops each sequence once its generated text holds a newline after the answer's first non-space
    character (a per-row StoppingCriteria)."""

    def __init__(self, tokenizer, prompt_width: int):
        self.tokenizer, self.prompt_width = tokenizer, prompt_width

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor(["\n" in text.lstrip() for text in texts], device=input_ids.device)


@torch.no_grad()
def generate_answers(model: CausalLMWithMemory, tokenizer, sequences: Sequence[Sequence[int]],
                     max_new_tokens: int = 32) -> list[str]:
    """Greedy answers to left-padded prompts: leading whitespace skipped, then cut at the first newline."""
    pad = pad_id_of(tokenizer)
    ids, mask = left_pad(sequences, pad, model.device)
    stop = _StopAtNewline(tokenizer, ids.shape[1])
    out = model.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=pad, stopping_criteria=StoppingCriteriaList([stop]))
    texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [text.strip().split("\n")[0].strip() for text in texts]


def qa_row(conversation: Conversation, qa: QA, prediction: str, seconds: float) -> dict:
    """The `qa` row of one answered question; `prediction` is the text as scored."""
    scores = score_qa(qa.category, prediction, qa.answer, qa.adversarial_answer)
    return {"kind": "qa", "conversation_id": conversation.sample_id,
            "question_id": qa.question_id, "category": qa.category, "question": qa.question,
            "gold": NOT_MENTIONED if qa.category == ADVERSARIAL else qa.answer, "prediction": prediction,
            "f1": scores["f1"], "f1_adversarial_report": scores["f1_adversarial_report"], "seconds": seconds}


def _question_error(conversation: Conversation, question_id: str, error) -> dict:
    return error_row(error, conversation_id=conversation.sample_id, question_id=question_id)


def answer_questions(model: CausalLMWithMemory, tokenizer, conversation: Conversation,
                     questions: Sequence[QA] | None = None, answer_context: str = "full", max_new_tokens: int = 32,
                     seed: int = 0, batch_size: int = 16, max_batch_tokens: int = 16384,
                     max_context: int | None = None, progress: Progress | None = None) -> list[dict]:
    """Answer and score `questions` (all of the conversation's by default) with the model as it is now:
    call it inside a method's forward context (or `model.use_memory(memory)`) to answer with that state.

    Questions are generated in batches of similar length (at most `batch_size` prompts and
    `max_batch_tokens` padded tokens); a batch that fails is retried question by question, and a question
    that still fails becomes an `error` row. `max_context` overrides `config.max_position_embeddings`.
    `progress` hears the questions answered."""
    if answer_context not in ANSWER_CONTEXTS:
        raise LocasError(f"unknown answer_context {answer_context!r}: choose one of {', '.join(ANSWER_CONTEXTS)}")
    questions = conversation.qa if questions is None else questions
    limit = max_context if max_context is not None else context_limit(model)
    builder = _PromptBuilder(tokenizer, conversation, answer_context, seed,
                             None if limit is None else limit - max_new_tokens)
    rows: dict[int, dict] = {}
    prompts: list[tuple[int, _Prompt]] = []
    for index, qa in enumerate(questions):
        try:
            prompts.append((index, builder.build(qa)))
        except Exception as error:  # noqa: BLE001 - one bad question must not stop the others
            rows[index] = _question_error(conversation, qa.question_id, error)
    answered = in_batches(prompts, [len(p.ids) for _, p in prompts],
                          lambda batch: generate_answers(model, tokenizer, [p.ids for _, p in batch], max_new_tokens),
                          batch_size, max_batch_tokens)
    for j, answer, seconds in answered:
        index, prompt = prompts[j]
        try:
            if isinstance(answer, Exception):
                raise answer
            prediction = resolve_choice(answer, prompt.options)
            rows[index] = qa_row(conversation, prompt.qa, prediction, prompt.seconds + seconds)
        except Exception as error:  # noqa: BLE001
            rows[index] = _question_error(conversation, prompt.qa.question_id, error)
        if progress is not None:
            progress(conversation.sample_id, questions=(len(rows), len(questions)))
    return [rows[index] for index in sorted(rows)]


# --- the unit ------------------------------------------------------------------------------------------


def run_locomo_conversation(model: CausalLMWithMemory, tokenizer, conversation: Conversation, cfg: AdaptConfig,
                            answer_context: str = "full", context_mode: str = "date_split",
                            max_new_tokens: int = 32, seed: int = 0, *, max_questions: int | None = None,
                            batch_size: int = 16, max_batch_tokens: int = 16384, max_context: int | None = None,
                            progress: Progress | None = None) -> list[dict]:
    """One conversation: adapt chunk by chunk (`date_split`), then answer its questions (the first
    `max_questions`, or all) with the adapted state. One `qa` row per question, plus an `error` row per
    question that failed or that the loader skipped. `seed` orders the adversarial options. A non-finite
    training loss fails the unit (LocasError). `progress` hears the windows trained on, then the
    questions answered."""
    if context_mode not in CONTEXT_MODES:
        raise LocasError(f"unknown context_mode {context_mode!r}: choose one of {', '.join(CONTEXT_MODES)}")
    if answer_context not in ANSWER_CONTEXTS:
        raise LocasError(f"unknown answer_context {answer_context!r}: choose one of {', '.join(ANSWER_CONTEXTS)}")
    if max_questions is not None and max_questions < 1:
        raise LocasError(f"max_questions={max_questions} must be at least 1")
    cfg = locomo_config(cfg)
    limit = float("inf") if max_questions is None else max_questions
    questions = [qa for qa in conversation.qa if _question_index(qa.question_id) < limit]
    skipped = [item for item in conversation.skipped if _question_index(item.question_id) < limit]
    doc = conversation_document(tokenizer, conversation, cfg)
    if progress is not None:  # the questions to come: part of the unit's work from the start
        progress(conversation.sample_id, questions=(0, len(questions)))
    with adapted(model, doc, cfg, progress=progress) as (result, _):
        rows = answer_questions(model, tokenizer, conversation, questions, answer_context, max_new_tokens, seed,
                                batch_size, max_batch_tokens, max_context, progress)
    share = result.seconds / max(1, sum(row["kind"] == "qa" for row in rows))
    for row in rows:
        if row["kind"] == "qa":
            row["seconds"] += share
    rows += [_question_error(conversation, item.question_id, item.error) for item in skipped]
    adaptation = {"kind": "conversation", "conversation_id": conversation.sample_id, "tokens": len(doc.tokens),
                  "windows": len(result.windows), "seconds": result.seconds,
                  "trainable_params": result.trainable_params, **final_width(result, per_window=True)}
    return [adaptation] + sorted(rows, key=lambda row: _question_index(row["question_id"]))


def _question_index(question_id: str) -> int:
    tail = question_id.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else -1
