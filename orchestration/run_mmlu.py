"""MMLU retention: the base, then base + memory and its dense export after adapting on whole books (SPEC §8).

    python orchestration/run_mmlu.py --model Qwen/Qwen3-1.7B-Base --method locas --data cais/mmlu \
        --books emozilla/pg19 --after_book 10146,2544 --num_gpus 2 --output runs/mmlu-locas

One unit scores the frozen base once; one unit per book adapts on the whole book and scores every subject
with that memory (or adapter) and with its `to_dense` export. Rerunning the same command resumes.
"""
from __future__ import annotations

import json
from pathlib import Path

from locas.data.mmlu import load_mmlu
from locas.data.pg19 import load_books
from locas.metrics import mmlu_accuracy
from orchestration.cli import (adapt_config, check_model, cli_main, execute, model_spec, parse_run_args, parser,
                               print_table, run_config_id)
from orchestration.units import make_unit


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(data="cais/mmlu")
    p.add_argument("--subjects", default=None, help="comma-separated subjects (default: all found)")
    p.add_argument("--shots", type=int, default=0, help="k-shot examples from the dev split")
    p.add_argument("--books", default="emozilla/pg19", help="PG-19 source of the books to adapt on")
    p.add_argument("--split", default="test", help="PG-19 split of --books when it is a hub id")
    p.add_argument("--after_book", default=None, help="comma-separated book ids to adapt on")
    p.add_argument("--max_books", type=int, default=None)
    p.add_argument("--max_tokens", type=int, default=None, help="truncate each book to this many tokens")
    return p


def summarize(rows: list[dict]) -> dict:
    mmlu = [r for r in rows if r["kind"] == "mmlu"]
    summary = {"errors": sum(r["kind"] == "error" for r in rows)}
    for variant in ("base", "memory", "dense"):
        accuracy = mmlu_accuracy([r for r in mmlu if r["variant"] == variant])
        summary[f"{variant}_micro"], summary[f"{variant}_macro"] = accuracy["micro"], accuracy["macro"]
    pairs = {}
    for r in mmlu:
        if r["variant"] in ("memory", "dense"):
            pairs.setdefault((r["book_id"], r["question_id"]), {})[r["variant"]] = r["prediction"]
    both = [p for p in pairs.values() if len(p) == 2]
    summary["memory_dense_agreement"] = sum(p["memory"] == p["dense"] for p in both) / len(both) if both else None
    return summary


@cli_main
def main(argv=None):
    args = parse_run_args(build_parser(), argv)
    spec, cfg = model_spec(args), adapt_config(args)
    check_model(spec, cfg)
    subjects = args.subjects.split(",") if args.subjects else None
    questions = load_mmlu(args.data, subjects=subjects, split="test")
    dev = load_mmlu(args.data, subjects=subjects, split="dev") if args.shots else []
    ids = args.after_book.split(",") if args.after_book else None
    books = load_books(args.books, split=args.split, ids=ids, max_books=args.max_books)
    options = {"data": args.data, "subjects": subjects, "shots": args.shots, "books": args.books,
               "split": args.split}
    config, config_id = run_config_id("mmlu", spec, cfg, options)
    units = [make_unit("mmlu", "base", len(questions), cfg, config_id, (None, questions, dev), k=args.shots)]
    units += [make_unit("mmlu", b.book_id, len(b.text), cfg, config_id, (b, questions, dev), k=args.shots)
              for b in books]
    store = execute("mmlu", units, args, spec, config, config_id)
    summary = summarize(list(store.rows()))
    print_table([{"variant": v, "micro": summary[f"{v}_micro"], "macro": summary[f"{v}_macro"]}
                 for v in ("base", "memory", "dense")], ["variant", "micro", "macro"])
    store.write_summary(summary)
    print(json.dumps(summary, indent=1))
    print(f"rows: {store.rows_path}\nsummary: {Path(args.output) / 'summary.json'}")


if __name__ == "__main__":
    raise SystemExit(main())
