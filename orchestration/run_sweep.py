"""Ray Tune sweep of Locas settings on PG-19's dev (validation) books; prints the best setting's test command.

    python orchestration/run_sweep.py --model Qwen/Qwen3-1.7B-Base --num_gpus 8 --max_books 10 \
        --max_tokens 50000 --window_size 2048 --grid memory_width=16,64 --grid memory_init=highest,random \
        --sample lr=loguniform:1e-4:1e-2 --num_samples 4 --asha --output runs/sweep-width-init-lr
    python orchestration/run_sweep.py --space orchestration/sweeps/example.yaml --data emozilla/pg19 \
        --split validation --num_gpus 8 --output runs/sweep-example
    python orchestration/run_sweep.py --demo   # tiny model, built-in books, local Ray, CPU

Sweepable: method, memory_width, memory_init, loss_function, lr, steps_per_window, window_size, lora_rank,
lora_alpha (`--grid NAME=a,b`, `--sample NAME=uniform:LO:HI|loguniform:LO:HI|randint:LO:HI|choice:A,B`);
every other setting is a fixed flag as in run_pg19.py. Rerunning the same command resumes: finished
trials are skipped. The per-trial table is OUT/trials.csv.
"""
from __future__ import annotations

import os
from pathlib import Path

from locas.data.pg19 import DEFAULT_DATASET, load_books
from orchestration.cli import (adapt_config, batch_size, check_model, cli_main, model_spec, parse_run_args, parser,
                               start_ray)
from orchestration.sweep import expand_space, parse_space, refuse_test_split, run_sweep

SHOWN = ["trial", "method", "loss_function", "memory_width", "memory_init", "lr", "steps_per_window",
         "window_size", "lora_rank", "ppl", "books_done", "seconds", "status", "worker_pid", "loads"]
DEMO_GRID = ["memory_width=8,32", "memory_init=highest,random"]


def build_parser():
    p = parser(__doc__.splitlines()[0])
    g = p.add_argument_group("sweep")
    g.add_argument("--grid", action="append", default=[], metavar="NAME=a,b",
                   help="grid values of one parameter (repeat the flag per parameter)")
    g.add_argument("--sample", action="append", default=[], metavar="NAME=DIST:ARGS",
                   help="a sampled parameter: uniform:LO:HI, loguniform:LO:HI, randint:LO:HI or choice:A,B")
    g.add_argument("--space", default=None, metavar="FILE.yaml", help="grid:/sample:/num_samples:/seed: in YAML")
    g.add_argument("--num_samples", type=int, default=None,
                   help="draws of the sampled parameters per grid point (default 1, or the YAML's)")
    g.add_argument("--sample_seed", type=int, default=None, help="seed of the sampler (default: --seed)")
    g.add_argument("--gpus_per_trial", type=float, default=None, help="default 1 when --num_gpus > 0")
    g.add_argument("--asha", action="store_true", help="stop bad settings early (ASHA on the running PPL)")
    g.add_argument("--max_trials", type=int, default=None,
                   help="run at most this many unfinished trials now (rerun for the rest)")
    g = p.add_argument_group("dev set")
    g.add_argument("--split", default="validation", help="hub dataset split (or a folder's split subfolder)")
    g.add_argument("--max_books", type=int, default=None)
    g.add_argument("--book_ids", default=None, help="comma-separated book ids")
    g.add_argument("--max_tokens", type=int, default=None, help="truncate each book to this many tokens")
    g.add_argument("--allow_test", action="store_true", help="allow sweeping on the test split (not advised)")
    g.add_argument("--test_data", default=None,
                   help="--data of the printed test command (default: the dev source when it has a test split, "
                        f"else {DEFAULT_DATASET})")
    return p


def prepare_demo(args) -> None:
    """run_pg19's demo inputs (tiny random Qwen3, built-in books, CPU) and, unless given, a 4-trial grid."""
    from orchestration.run_pg19 import prepare_demo as prepare_pg19_demo

    args.output = args.output or "runs/demo-sweep"
    prepare_pg19_demo(args)
    if not (args.grid or args.sample or args.space):
        args.grid = list(DEMO_GRID)


@cli_main
def main(argv=None):
    args = parse_run_args(build_parser(), argv, prepare_demo)
    space = parse_space(args.grid, args.sample, args.space, args.num_samples,
                        args.sample_seed if args.sample_seed is not None else args.seed)
    spec, base = model_spec(args), adapt_config(args)
    configs = expand_space(space, base)
    data = args.data or DEFAULT_DATASET
    refuse_test_split(data, args.split, allow_test=args.allow_test)
    widest = max(configs, key=lambda c: (c.method == "locas", c.memory_width))
    check_model(spec, widest)
    ids = args.book_ids.split(",") if args.book_ids else None
    books = load_books(data, split=args.split, ids=ids, max_books=args.max_books)
    refuse_test_split(data, args.split, [b.book_id for b in books], allow_test=args.allow_test)
    print(f"sweep: {len(configs)} trials x {len(books)} books ({data}, split {args.split})")

    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C: "rerun the same command", not Tuner.restore
    start_ray(args.demo)
    result = run_sweep(configs, spec, books, args.output, data=data, split=args.split, num_gpus=args.num_gpus,
                       gpus_per_trial=args.gpus_per_trial, num_workers=args.num_workers, asha=args.asha,
                       batch_size=batch_size(args), test_data=args.test_data, progress=not args.no_progress,
                       max_trials=args.max_trials)
    print(f"trials: {result.ran} ran now, {result.skipped} already finished"
          + (f", {len(result.remaining)} not finished yet: rerun the same command" if result.remaining else ""))
    if len(result.table):
        print(result.table[SHOWN].to_string(index=False))
    if result.best_command:
        print(f"best: trial {result.best['trial']} ppl {result.best['ppl']:.4f}; on the test set run:\n"
              f"{result.best_command}")
    else:
        print("best: no trial completed every book")
    print(f"trials: {result.trials_csv}\nsummary: {Path(args.output) / 'summary.json'}")


if __name__ == "__main__":
    raise SystemExit(main())
