"""PG-19 online adaptation: every book, window by window, evaluate then update (SPEC §6).

    python orchestration/run_pg19.py --model Qwen/Qwen3-1.7B-Base --method locas --memory_width 64 \
        --memory_init highest --loss_function NTP --window_size 2048 --num_gpus 8 \
        --data emozilla/pg19 --split test --output runs/pg19-locas
    python orchestration/run_pg19.py --demo          # tiny model, built-in text, local Ray, < 2 minutes

Rerunning the same command resumes: finished books are skipped.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from locas.data.pg19 import load_books
from locas.metrics import PPL_AT, ppl_at, range_ppl, templora_ppl
from orchestration.cli import (adapt_config, check_model, cli_main, execute, model_spec, parse_run_args, parser,
                               print_table, run_config_id)
from orchestration.units import make_unit

DEMO_BOOKS = 3


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--split", default="test", help="hub dataset split: validation for sweeps, test for headlines")
    p.add_argument("--max_books", type=int, default=None)
    p.add_argument("--book_ids", default=None, help="comma-separated book ids")
    p.add_argument("--max_tokens", type=int, default=None, help="truncate each book to this many tokens")
    return p


def prepare_demo(args) -> None:
    """A tiny random Qwen3 and a few built-in books under the output folder; CPU, float32, small windows."""
    from locas.tiny import build_tiny_checkpoint, sample_text

    args.output = args.output or "runs/demo-pg19"
    root = Path(args.output) / "demo-inputs"
    if not (root / "model" / "config.json").is_file():
        build_tiny_checkpoint(root / "model")
    books = root / "books"
    books.mkdir(parents=True, exist_ok=True)
    for i in range(DEMO_BOOKS):
        (books / f"demo{i}.txt").write_text(sample_text(1500 + 700 * i, seed=i))
    args.model, args.data, args.dtype, args.num_gpus = str(root / "model"), str(books), "float32", 0
    args.window_size, args.memory_width = 256, 32


def summarize(rows: list[dict]) -> dict:
    """Headline figures over the books that completed; a book stopped by an error is counted, not pooled."""
    stopped = {r["unit_id"] for r in rows if r["kind"] == "book" and r.get("error")}
    windows = [r for r in rows if r["kind"] == "window" and r["unit_id"] not in stopped]
    books = [r for r in rows if r["kind"] == "book" and r["unit_id"] not in stopped]
    summary = {"books": len(books), "failed_units": sum(r["kind"] == "error" for r in rows),
               "books_with_error": len(stopped),
               "scored_tokens": sum(w["scored_tokens"] for w in windows),
               "ppl": range_ppl(windows), "templora_ppl": templora_ppl(windows)}
    for n in PPL_AT:
        summary[f"ppl@{n}"] = ppl_at(windows, n)
        summary[f"books_reaching@{n}"] = sum(r["tokens"] >= n for r in books)
    return summary


@cli_main
def main(argv=None):
    args = parse_run_args(build_parser(), argv, prepare_demo)
    spec, cfg = model_spec(args), adapt_config(args)
    check_model(spec, cfg)
    ids = args.book_ids.split(",") if args.book_ids else None
    books = load_books(args.data or "emozilla/pg19", split=args.split, ids=ids, max_books=args.max_books)
    options = {"data": args.data or "emozilla/pg19", "split": args.split}
    config, config_id = run_config_id("pg19", spec, cfg, options)
    units = [make_unit("pg19", b.book_id, len(b.text), cfg, config_id, b) for b in books]
    store = execute("pg19", units, args, spec, config, config_id)
    rows = list(store.rows())
    print_table([r for r in rows if r["kind"] == "book"],
                ["book_id", "method", "tokens", "ppl", "seconds", "trainable_params", "error"])
    summary = summarize(rows)
    store.write_summary(summary)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                      for k, v in summary.items()}, indent=1))
    print(f"rows: {store.rows_path}\nsummary: {Path(args.output) / 'summary.json'}")


if __name__ == "__main__":
    raise SystemExit(main())
