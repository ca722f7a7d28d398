"""Small run folders for the analysis tests, written by the run's own writers (`RunStore`, the sweep's
trials.csv writer): the rows each task writes (docs/design.md), with figures computed by hand."""
import math

import pandas as pd


def write_run(folder, task, config, run_id, rows, *, tail="", ledger_tail="", trials=None):
    """A run folder as a run writes it (`RunStore`: each unit's rows, then its ledger line; the sweep's
    trials.csv writer), then `tail` and `ledger_tail` appended as they are (torn lines)."""
    from locas.contract import unit_status
    from orchestration.store import RunStore
    from orchestration.sweep.trials import write_trials_csv

    store = RunStore(folder).open(task, config, run_id, {"gpus": 1})
    units = {}
    for row in rows:
        units.setdefault(row["unit_id"], []).append(row)
    for unit, unit_rows in units.items():
        store.append(unit, unit_rows, unit_status(unit_rows))
    for name, text in (("rows.jsonl", tail), ("ledger.jsonl", ledger_tail)):
        with open(folder / name, "a") as out:
            out.write(text)
    store.write_summary({"units": len(units)})
    if trials is not None:
        write_trials_csv(folder, trials.to_dict("records"))
    return folder


def common(task, item, method, config_id, kind):
    return {"kind": kind, "task": task, "unit_id": f"{task}:{item}:{config_id}", "config_id": config_id,
            "method": method, "node": "n0", "device": "cuda:0"}


def cuts(start, scored, per_token, every=50_000):
    """What the task writes: the window's NLL before each multiple of 50K inside its scored positions."""
    first = (start // every + 1) * every
    return [[n, per_token * (n - start)] for n in range(first, start + scored, every)]


def pg19_rows(method, config_id, book_id, windows, *, seconds=1.0, trainable_params=0, title=None, error=None):
    """windows: [(start, scored_tokens, nll per token)] -> window rows and the book row."""
    rows = []
    for index, (start, scored, per_token) in enumerate(windows):
        rows.append({**common("pg19", book_id, method, config_id, "window"), "book_id": book_id, "window": index,
                     "start": start, "scored_tokens": scored, "nll_sum": per_token * scored,
                     "cuts": cuts(start, scored, per_token), "train_loss": None if method == "none" else per_token,
                     "seconds": seconds})
    tokens = windows[-1][0] + windows[-1][1]
    nll = sum(s * p for _, s, p in windows)
    scored = sum(s for _, s, _ in windows)
    rows.append({**common("pg19", book_id, method, config_id, "book"), "book_id": book_id,
                 "title": title or book_id, "tokens": tokens, "scored_tokens": scored, "nll_sum": nll,
                 "ppl": math.exp(nll / scored), "seconds": seconds * len(windows),
                 "trainable_params": trainable_params, "error": error})
    return rows


def grid(tokens, window, per_token):
    """The windows of a book of `tokens` tokens (overlap 1), with nll per token `per_token(k, start)`."""
    out, start, k = [], 1, 0
    while start < tokens:
        scored = min(window - 1, tokens - start)
        out.append((start, scored, per_token(k, start)))
        start, k = start + scored, k + 1
    return out


# Book a: 130K tokens, 5 windows; book b: 70K tokens, 2 windows (starts, scored, nll/token), by hand. The
# windows at 30K (a and b: 35K) straddle 50K and a's at 90K straddles 100K: they carry cuts there.
BOOK_A = [(1, 29_999, 3.0), (30_000, 30_000, 2.9), (60_000, 30_000, 2.8), (90_000, 30_000, 2.7), (120_000, 10_000, 2.6)]
BOOK_B = [(1, 34_999, 3.2), (35_000, 35_000, 3.1)]


def frame(rows, kind):
    return pd.DataFrame([r for r in rows if r["kind"] == kind]).assign(run="r")


def sweep_trials(trials):
    """A sweep's trials, in the columns of its trials.csv (`orchestration.sweep.trials`)."""
    from orchestration.sweep.trials import TABLE_COLUMNS

    rows = [{"trial": f"t{width}-{init}", "method": "locas", "loss": "NTP", "memory_width": width, "memory_init": init,
             "lr": 4e-3, "steps_per_window": 1, "window_size": 2048, "lora_rank": 64, "lora_alpha": 64, "ppl": ppl,
             "books_done": 2 if status == "completed" else 1, "books_total": 2, "seconds": 5.0, "status": status,
             "worker_pid": 1, "loads": 1, "node": "n0", "error": None} for width, init, ppl, status in trials]
    assert set(rows[0]) == set(TABLE_COLUMNS)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


QA = [  # (category, f1, f1_adversarial_report)
    (1, 0.5, None), (1, 1.0, None), (2, 0.0, None), (2, 0.25, None), (2, 0.5, None), (3, 0.2, None),
    (4, 1.0, None), (4, 0.0, None), (5, 1.0, -0.2), (5, 0.0, -0.6),
]


def qa_rows(method, config_id, scores):
    return [{**common("locomo", "conv-1", method, config_id, "qa"), "conversation_id": "conv-1",
             "question_id": f"q{i}", "category": category, "question": f"question {i}?", "gold": "gold",
             "prediction": "pred", "f1": f1, "f1_adversarial_report": report, "seconds": 0.1}
            for i, (category, f1, report) in enumerate(scores)]


def mmlu_rows(method, config_id, variant, book_id, answers):
    """answers: [(subject, question_id, prediction)]; the gold answer is always 0."""
    return [{**common("mmlu", book_id or "base", method, config_id, "mmlu"), "book_id": book_id, "variant": variant,
             "subject": subject, "question_id": qid, "answer": 0, "prediction": pred, "correct": pred == 0}
            for subject, qid, pred in answers]
