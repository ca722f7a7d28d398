"""A study folder of tiny-model runs, written with the project's run store (orchestration/store.py RunStore):
windows of 4,096 and widths 16 / rank 8 (not the paper's), one run at the paper's setting, a book stopped by a
non-finite loss, a failed book unit, a failed LoCoMo question, a failed MMLU book, a sweep with trial folders."""
import math

import numpy as np
import pandas as pd
from run_rows import grid, mmlu_rows, pg19_rows, qa_rows, sweep_trials

from orchestration.store import RunStore

TINY = "/work/shared/models/tinylm-pg19"
PAPER_MODEL = "Qwen/Qwen3-1.7B-Base"
LENGTHS = {"b0": 60_000, "b1": 120_000, "b2": 30_000, "b3": 8_000, "b4": 55_000, "b5": 20_000}
STOPPED = ("pg19-locas", "b5")
FAILED = ("pg19-lora", "b4")
# run -> (method, config_id, gain per log window, seconds per window, batch size, window, width / rank, model)
PG19 = {"pg19-none": ("none", "c0", 0.0, 1.0, 8, 4096, None, TINY),
        "pg19-locas": ("locas", "c1", -0.04, 1.5, 8, 4096, 16, TINY),
        "pg19-lora": ("lora", "c2", -0.02, 6.0, 1, 4096, 8, TINY),
        "pg19-paper-none": ("none", "p0", 0.0, 1.0, 1, 2048, None, PAPER_MODEL),
        "pg19-paper-locas": ("locas", "p1", -0.05, 1.8, 1, 2048, 64, PAPER_MODEL)}


def config(task, method, window, width, model, **options):
    adapt = {"method": method, "loss": "SD" if task == "locomo" else "NTP", "memory_width": width or 64,
             "lora_rank": width or 64, "window_size": window, "overlap": 1, "max_tokens": None}
    return {"task": task, "model": {"model": model, "dtype": "float32"}, "adapt": adapt,
            "options": {"data": "books", "split": "test", **options}}


def store(folder, task, cfg, run_id) -> RunStore:
    return RunStore(folder).open(task, cfg, run_id, {"CPU": 2})


def book_nll(book: str, method_gain: float):
    base = 3.0 + 0.1 * int(book[1])
    return lambda k, start: base - 2e-6 * start + method_gain * math.log1p(k)


def write_pg19(root, name):
    method, cid, gain, seconds, batch, window, width, model = PG19[name]
    out = store(root / name, "pg19", config("pg19", method, window, width, model), cid)
    for book, tokens in LENGTHS.items():
        stamp = {"batch_size": batch}
        if (name, book) == FAILED:
            out.append(f"pg19:{book}:{cid}", [{"kind": "error", "task": "pg19", "config_id": cid, "method": method,
                                               "item_id": book, "error": "CUDA out of memory", "attempts": 2, **stamp}],
                       status="failed")
            continue
        error = "non-finite loss at window 3: the document was stopped" if (name, book) == STOPPED else None
        rows = pg19_rows(method, cid, book, grid(tokens, window, book_nll(book, gain)), seconds=seconds,
                         trainable_params=0 if method == "none" else 1000 * (width or 1), error=error)
        out.append(f"pg19:{book}:{cid}", [{**r, "unit_id": f"pg19:{book}:{cid}", **stamp} for r in rows])


LOCOMO = {"locomo-none": ("none", "l0", 4096, None, TINY), "locomo-locas": ("locas", "l1", 4096, 16, TINY),
          "locomo-paper-locas": ("locas", "l2", 2048, 64, PAPER_MODEL)}


def write_locomo(root):
    """Six conversations of 4 questions; locas loses one question to an error."""
    for name, (method, cid, window, width, model) in LOCOMO.items():
        i = int(method == "locas")
        out = store(root / name, "locomo", config("locomo", method, window, width, model, context_mode="date_split",
                                                  answer_context="full"), cid)
        for c in range(6):
            scores = [(1 + q % 4, min(1.0, 0.2 + 0.1 * c + 0.15 * i * (q % 2)), None) for q in range(4)]
            rows = [{**r, "conversation_id": f"conv-{c}", "question_id": f"conv-{c}:q{q}", "unit_id": f"locomo:conv-{c}:{cid}"}
                    for q, r in enumerate(qa_rows(method, cid, scores))]
            rows.append({**rows[0], "kind": "conversation", "tokens": 900, "windows": 1, "seconds": 1.0})
            if name == "locomo-locas" and c == 2:
                rows[3] = {"kind": "error", "task": "locomo", "config_id": cid, "method": method, "unit_id": rows[3]["unit_id"],
                           "conversation_id": f"conv-{c}", "question_id": f"conv-{c}:q3", "error": "prompt too long"}
            out.append(f"locomo:conv-{c}:{cid}", rows)


def write_mmlu(root):
    """The base and two books adapted on with a tiny model; a third book's unit failed."""
    out = store(root / "mmlu-locas", "mmlu", config("mmlu", "locas", 4096, 16, TINY), "m1")
    answers = [(s, f"{s}-{q}", (q * 7 + len(s)) % 3) for s in ("law", "math") for q in range(6)]
    out.append("mmlu:base:m1", mmlu_rows("locas", "m1", "base", None, answers))
    for book in ("b0", "b1"):
        shifted = [(s, q, 0 if i % 5 == 0 else p) for i, (s, q, p) in enumerate(answers)]
        out.append(f"mmlu:{book}:m1", [{**r, "method": "locas", "unit_id": f"mmlu:{book}:m1"} for r in
                                       mmlu_rows("locas", "m1", "memory", book, shifted)
                                       + mmlu_rows("locas", "m1", "dense", book, shifted)])
    out.append("mmlu:b2:m1", [{"kind": "error", "task": "mmlu", "config_id": "m1", "method": "locas",
                               "item_id": "b2", "error": "book b2 has 1 token(s): too short to score"}], "failed")


def write_sweep(root):
    """A width sweep (trials.csv and one PG-19 run folder per trial) beside the frozen pg19-none."""
    trials = sweep_trials([(8, "highest", 30.0, "completed"), (32, "highest", 29.0, "completed")])
    for width, trial in zip((8, 32), trials["trial"]):
        out = store(root / "width" / trial, "pg19", config("pg19", "locas", 4096, width, TINY), trial)
        for book in ("b0", "b2", "b3"):
            rows = pg19_rows("locas", trial, book, grid(LENGTHS[book], 4096, book_nll(book, -0.01 * width / 8)),
                             seconds=1.2, trainable_params=1000 * width)
            out.append(f"pg19:{book}:{trial}", [{**r, "unit_id": f"pg19:{book}:{trial}", "batch_size": 8} for r in rows])
    trials.to_csv(root / "width" / "trials.csv", index=False)


def build_study(root):
    for name in PG19:
        write_pg19(root, name)
    write_locomo(root)
    write_mmlu(root)
    write_sweep(root)
    return root


def pooled(rows: pd.DataFrame) -> float:
    return float(np.exp(rows["nll_sum"].sum() / rows["scored_tokens"].sum()))
