"""What became of every unit of a run: finished, stopped (a book row with an error: the book ran but its
figures cannot count, e.g. a non-finite loss) or failed (an error row: the unit, or one question of it, gave
no result). Comparisons use only the units every compared run finished and say which were left out."""

from __future__ import annotations

import pandas as pd

from analysis.load import KEYS, Runs
from analysis.frames import BOOK, with_keys
from locas.tasks.pg19.tables import stopped_books

UNIT = {"pg19": BOOK, "locomo": "conversation_id", "mmlu": BOOK}
"""The row field that names a task's unit (MMLU: the book adapted on; its base unit is `base`)."""
COLUMNS = KEYS + ["task", "item", "status", "reason"]


def _errors(runs: Runs, task: str) -> pd.DataFrame:
    errors, _ = with_keys(runs.errors)
    errors = errors[errors["task"] == task] if "task" in errors else errors.iloc[0:0]
    return errors.assign(**{c: None for c in ("item_id", "question_id", UNIT[task]) if c not in errors})


def unit_outcomes(runs: Runs, task: str) -> pd.DataFrame:
    """One row per unit of `task` in every run: KEYS, `task`, `item` (book or conversation id), `status`
    (`done`, `stopped`, `failed`) and `reason` (the error in one line). A failed question is not a unit
    (see failed_questions)."""
    errors = _errors(runs, task)
    whole = errors[errors["question_id"].isna()]
    failed = whole.assign(item=whole["item_id"].fillna(whole[UNIT[task]]), status="failed", reason=whole["error"])
    parts = [failed]
    if task == "pg19":
        books, _ = with_keys(runs.books)
        stopped = stopped_books(runs.windows, runs.books).assign(_stopped=True)
        books = books.merge(stopped, on=KEYS + [BOOK], how="left")
        status = books["_stopped"].fillna(False).astype(bool).map({True: "stopped", False: "done"})
        reason = books["error"].where(books["error"].notna(), None) if "error" in books else None
        parts.append(books.assign(task=task, item=books[BOOK], status=status, reason=reason))
    elif task == "locomo":
        conversations, _ = with_keys(runs.conversations)
        parts.append(conversations.assign(task=task, item=conversations["conversation_id"], status="done",
                                          reason=None))
    else:
        mmlu, _ = with_keys(runs.mmlu)
        units = mmlu.assign(item=mmlu[BOOK].fillna("base")).drop_duplicates(KEYS + ["item"])
        parts.append(units.assign(task=task, status="done", reason=None))
    parts = [p.reindex(columns=COLUMNS) for p in parts if len(p)]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    out["item"] = out["item"].astype(str)
    return out.drop_duplicates(KEYS + ["item"], keep="first").reset_index(drop=True)


def failed_questions(runs: Runs, task: str) -> pd.DataFrame:
    """The error rows of single questions (LoCoMo, MMLU): KEYS, `item` (question id), `reason`."""
    errors = _errors(runs, task)
    errors = errors[errors["question_id"].notna()]
    return errors.assign(item=errors["question_id"].astype(str), reason=errors["error"])[KEYS + ["item", "reason"]]


def outcome_counts(runs: Runs, task: str) -> pd.DataFrame:
    """Per group: `done`, `stopped`, `failed` units (and `failed questions` for LoCoMo and MMLU)."""
    outcomes = unit_outcomes(runs, task)
    counts = (outcomes.groupby(KEYS + ["status"], dropna=False).size().unstack("status", fill_value=0)
              .reindex(columns=["done", "stopped", "failed"], fill_value=0).reset_index())
    counts.columns.name = None
    if task != "pg19":
        questions = failed_questions(runs, task).groupby(KEYS, dropna=False).size().rename("failed questions")
        counts = counts.merge(questions.reset_index(), on=KEYS, how="outer")
        counts["failed questions"] = counts["failed questions"].fillna(0).astype(int)
        counts[["done", "stopped", "failed"]] = counts[["done", "stopped", "failed"]].fillna(0).astype(int)
    return counts


def left_out(outcomes: pd.DataFrame, groups: list[tuple], paired: set[str], what: str = "book") -> tuple[int, str]:
    """(how many, why): the units any of `groups` (KEYS tuples) ran that are not among `paired`, each with
    what became of it in each group ("b: stopped in pg19-locas (non-finite loss)", "c: not run by pg19-none")."""
    mine = outcomes.set_index(KEYS)
    ran = {key: mine.loc[[key]] if key in mine.index else mine.iloc[0:0] for key in groups}
    items = sorted(set().union(*(set(frame["item"]) for frame in ran.values())) - set(paired))
    reasons = []
    for item in items:
        why = []
        for key, frame in ran.items():
            row = frame[frame["item"] == item]
            if not len(row):
                why.append(f"not run by {key[0]}")
            elif row["status"].iloc[0] != "done":
                reason = row["reason"].iloc[0]
                why.append(f"{row['status'].iloc[0]} in {key[0]}" + (f" ({reason})" if isinstance(reason, str) else ""))
        reasons.append(f"{what} {item}: {'; '.join(why) or 'another window grid'}")
    return len(items), " / ".join(reasons)
