"""What the question-answering tasks (LoCoMo, MMLU) share: left padding, batches of similar length, the
model's context limit, and running items in batches with a retry one by one when a batch fails."""
from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence, TypeVar

import torch

Item = TypeVar("Item")
Answer = TypeVar("Answer")


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
    """The most positions the model takes (None when its config does not say)."""
    return getattr(model.config, "max_position_embeddings", None)


def in_batches(items: Sequence[Item], lengths: Sequence[int], run: Callable[[list[Item]], list[Answer]],
               batch_size: int, max_batch_tokens: int) -> Iterator[tuple[int, Answer | Exception, float]]:
    """`run` over batches of similar length; a batch that fails is retried item by item, so only the items at
    fault fail. Yields (index, answer or the exception it raised, its share of the seconds spent)."""
    for batch in length_batches(lengths, batch_size, max_batch_tokens):
        started = time.perf_counter()
        try:
            answers = run([items[i] for i in batch])
        except Exception:  # noqa: BLE001 - find the item(s) at fault, answer the rest
            for i in batch:
                started = time.perf_counter()
                try:
                    answer = run([items[i]])[0]
                except Exception as error:  # noqa: BLE001 - one bad item must not stop the others
                    yield i, error, time.perf_counter() - started
                    continue
                yield i, answer, time.perf_counter() - started
            continue
        share = (time.perf_counter() - started) / len(batch)
        for i, answer in zip(batch, answers):
            yield i, answer, share
