"""Ray Tune sweep of adaptation settings on PG-19's dev (validation) books; prints the best setting's test command.

    python orchestration/run_sweep.py --model Qwen/Qwen3-1.7B-Base --num_gpus 8 --max_books 10 \
        --max_tokens 50000 --window_size 2048 --grid memory_width=16,64 --grid memory_init=highest,random \
        --sample lr=loguniform:1e-4:1e-2 --num_samples 4 --asha --output runs/sweep-width-init-lr
    python orchestration/run_sweep.py --space orchestration/sweeps/example.yaml --data emozilla/pg19 \
        --split validation --num_gpus 8 --output runs/sweep-example
    python orchestration/run_sweep.py --demo   # tiny model, built-in books, local Ray, CPU
    python orchestration/run_sweep.py --space orchestration/sweeps/lora.yaml --max_books 10 --num_gpus 8 \
        --best_per steps_per_window --frontier_output runs/lora-frontier --output runs/sweep-lora  # + test runs
    ray job submit --working-dir . -- python orchestration/run_sweep.py --space orchestration/sweeps/example.yaml \
        --num_gpus 8 --tune_storage s3://YOUR_BUCKET/sweeps --output runs/sweep-example   # on a cluster

Sweepable: method, loss (--loss_function), memory_width, memory_init, lr, steps_per_window, window_size,
lora_rank, lora_alpha (`--grid NAME=a,b`, `--sample NAME=uniform:LO:HI|loguniform:LO:HI|randint:LO:HI|
lograndint:LO:HI|choice:A,B`, Tune's distributions: HI excluded for the integer ones); every other setting is
a fixed flag as in run_pg19.py. Rerunning the same command resumes: finished trials are skipped. The
per-trial table is OUT/trials.csv.
"""
from __future__ import annotations

import os

from locas.errors import LocasError
from locas.tasks import split_list
from locas.tasks.pg19.data import load_books, refuse_test_books
from orchestration.cli import cli_main, resolve_output
from orchestration.sweep.frontier import cost_levels, write_frontier
from orchestration.sweep.plan import plan_sweep, sweep_parser

SHOWN = ["trial", "method", "loss", "memory_width", "memory_init", "lr", "steps_per_window", "window_size",
         "lora_rank", "ppl", "books_done", "seconds", "status", "worker_pid", "loads"]


@cli_main
def main(argv=None):
    from orchestration.progress import quiet_console
    from orchestration.run import cluster
    from orchestration.store import RunStore
    from orchestration.sweep.driver import TASK, run_sweep, store_config
    from orchestration.tracking import tracking_uri

    planned = plan_sweep(argv, parser=sweep_parser(description=__doc__.splitlines()[0]))
    quiet_console(planned.plan.run.verbose)
    plan, sweep, space, configs = planned.plan, planned.sweep, planned.space, planned.configs
    plan.spec = plan.spec.on(gpu=bool(plan.run.num_gpus))
    books = load_books(plan.options.data, split=plan.options.split, ids=split_list(plan.options.book_ids),
                       max_books=plan.options.max_books)
    refuse_test_books(plan.options.data, plan.options.split, [b.book_id for b in books], allow_test=sweep.allow_test)
    print(f"sweep: {len(configs)} trials x {len(books)} books ({plan.options.data}, split {plan.options.split})")
    RunStore(plan.run.output).refuse_other(TASK, *store_config(plan.spec, plan.options.data, plan.options.split,
                                                               books))
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C: "rerun the same command", not Tuner.restore

    def needs_storage(local: bool) -> None:
        if not local and not sweep.tune_storage:
            raise LocasError("on a cluster, --tune_storage is required: a URI or folder every node reaches "
                             "(s3://bucket/sweeps, an NFS mount) for the trials' checkpoints; the run folder "
                             f"stays {plan.run.output}")

    storage = sweep.tune_storage
    if storage and "://" not in storage:
        storage = str(resolve_output(storage))
    with cluster(plan.run, needs_storage):  # Tune runs the trials: the run path's Ray and GPUs, Tune's loop
        result = run_sweep(configs, plan.spec, books, plan.run.output, data=plan.options.data,
                           split=plan.options.split, varied=tuple(space.params), num_gpus=plan.run.num_gpus,
                           gpus_per_trial=sweep.gpus_per_trial, num_workers=plan.run.num_workers, asha=sweep.asha,
                           batch_size=plan.run.batch_size, test_data=sweep.test_data,
                           progress=not plan.run.no_progress, max_trials=sweep.max_trials,
                           storage_path=storage, verbose=plan.run.verbose,
                           tracking=tracking_uri(plan.run.tracking, plan.run.output))
    print(f"trials: {result.ran} ran now, {result.skipped} already finished"
          + (f", {len(result.remaining)} not finished yet: rerun the same command" if result.remaining else ""))
    if len(result.table):
        print(result.table[SHOWN].to_string(index=False))
    if result.best_command:
        print(f"best: trial {result.best['trial']} ppl {result.best['ppl']:.4f}; on the test set run:\n"
              f"{result.best_command}")
    else:
        print("best: no trial completed every book")
    if sweep.best_per and result.best_command:
        path, command = write_frontier(result.trials_csv.parent, result.table, cost_levels(sweep.best_per),
                                       {c.config_id: c for c in configs}, plan.spec,
                                       sweep.test_data or plan.options.data, plan.run.num_gpus)
        print(f"best per {sweep.best_per}: {path}; on the test set, beside Locas, run:\n{command}")
    print(f"trials: {result.trials_csv}\nsummary: {result.trials_csv.parent / 'summary.json'}")
    if sweep.frontier_output and result.best_command:
        from orchestration.study import run_study

        print(f"frontier: running {path} into {resolve_output(sweep.frontier_output)}", flush=True)
        return run_study(path, plan.run.replace(output=sweep.frontier_output, demo=False))


if __name__ == "__main__":
    raise SystemExit(main())
