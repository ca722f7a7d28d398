"""One Tune trial: adapt to every dev book under the trial's setting, through the same `Worker` that runs every
other unit, and report after each book the running PPL (Σ NLL / Σ scored tokens so far), so ASHA can stop
a bad setting early.

A trial's process keeps its Worker (and so its loaded model) for the next trial it runs (`reuse_actors`).
After each book the trial saves a checkpoint of the books done; when Tune restarts a trial whose node was
lost (`FailureConfig`), it resumes from there instead of redoing them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

from locas.config import AdaptConfig, ModelSpec
from locas.contract import ppl, row_failed
from locas.errors import one_line
from locas.tasks import make_unit, task
from orchestration.tasks import documents_at_once
from orchestration.worker import Worker

_PROCESS: dict = {}  # the trial process's Worker, kept across the trials it runs
CHECKPOINT = "books.json"


def process_worker(spec: ModelSpec, require_cuda: bool) -> Worker:
    """This process's Worker for `spec`; another spec replaces it (one model on a GPU at a time)."""
    worker = _PROCESS.get("worker")
    if worker is None or worker.spec != spec or worker.require_cuda != require_cuda:
        _PROCESS.clear()
        _free_accelerator_memory()
        worker = _PROCESS["worker"] = Worker(spec, require_cuda=require_cuda)
    return worker


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    torch = __import__("sys").modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _restored() -> list[dict]:
    """The book rows of this trial's last checkpoint (a restart after a lost node), else none."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder, open(os.path.join(folder, CHECKPOINT)) as handle:
        return json.load(handle)


def _report(metrics: dict, books: list[dict]) -> None:
    """Report the trial's metrics with a checkpoint holding every book row so far."""
    from ray import tune
    from ray.tune import Checkpoint

    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, CHECKPOINT), "w") as handle:
            json.dump(books, handle)
        tune.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def run_trial(config: dict, *, configs: dict, books: list, spec: ModelSpec, gpu: bool,
              batch_size: int | None) -> None:
    """One trial over `books`: `config` is the trial's `config_id` and the values the space varies (what Tune
    records), `configs[config_id]` its whole adaptation config. Every report carries `config_id`, the running
    `ppl`, `books_done`, the last book's row as `book_json`, and `trial_error` once something failed (a
    book that stopped, or any exception: the trial ends there)."""
    cfg = AdaptConfig.from_dict(configs[config["config_id"]])
    cid = cfg.config_id
    done = _restored()
    state = {"config_id": cid, "books_total": len(books), "books_done": len(done), "nll_sum": 0.0,
             "scored_tokens": 0, "ppl": float("nan"), "seconds": 0.0, "worker_pid": os.getpid(), "loads": 0,
             "node": None, "trial_error": "", "book_json": ""}
    for row in done:
        state["nll_sum"] += row["nll_sum"]
        state["scored_tokens"] += row["scored_tokens"]
    started = time.time()
    try:
        batch = documents_at_once(task("pg19"), cfg, gpu, batch_size)
        worker = process_worker(spec, require_cuda=gpu and spec.device != "cpu")
        finished_ids = {row["book_id"] for row in done}
        units = [dataclasses.replace(make_unit("pg19", b.book_id, len(b.text), cfg, "sweep", b), batch=batch)
                 for b in books if b.book_id not in finished_ids]
        worker.load()
        state.update(loads=worker.load_count, node=worker.node)
        for _unit_id, rows in worker.run_units(units):
            row = rows[-1]
            done.append(row)
            state["books_done"] += 1
            state["book_json"] = json.dumps(row)
            if row_failed(row):
                state["trial_error"] = f"book {row.get('book_id', row.get('item_id'))}: {row['error']}"
            else:
                state["nll_sum"] += row["nll_sum"]
                state["scored_tokens"] += row["scored_tokens"]
            state["ppl"] = ppl(state["nll_sum"], state["scored_tokens"])
            state["seconds"] = time.time() - started
            _report(dict(state), done)
            if state["trial_error"]:
                return
    except Exception as e:  # noqa: BLE001 - any failure of a setting is that trial's recorded error
        state.update(trial_error=one_line(e), book_json="", seconds=time.time() - started)
        _report(dict(state), done)
