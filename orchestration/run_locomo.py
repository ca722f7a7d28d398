"""LoCoMo long-conversation QA: adapt on each conversation's sessions, then answer its questions (SPEC §7).

    python orchestration/run_locomo.py --model Qwen/Qwen3-1.7B-Base --memory_type locas --ttt_loss SD \
        --context_mode date_split --answer_context full --data ../shared/data/locomo/locomo10.json \
        --num_gpus 8 --output runs/locomo-locas-sd

Rerunning the same command resumes: finished conversations are skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

from locas.config import LOSS_ALIASES, LOSSES, METHODS
from locas.data.locomo import CATEGORIES, load_locomo
from locas.errors import LocasError
from locas.metrics import category_means
from orchestration.cli import (adapt_config, check_model, cli_main, execute, model_spec, parse_run_args, parser,
                               print_table, run_config_id)
from orchestration.units import make_unit

LOCOMO_STEPS = 2  # SPEC §7: two updates per chunk for both methods unless --steps says otherwise


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--memory_type", dest="method", choices=METHODS, help="the seed's name for --method")
    p.add_argument("--ttt_loss", dest="loss_function", choices=LOSSES + tuple(LOSS_ALIASES),
                   help="the seed's name for --loss_function")
    p.add_argument("--context_mode", default="date_split", choices=["date_split"])
    p.add_argument("--answer_context", default="full", choices=["full", "none"])
    p.add_argument("--max_conversations", type=int, default=None)
    return p


def summarize(rows: list[dict]) -> dict:
    qa = [r for r in rows if r["kind"] == "qa"]
    official = category_means(qa, "f1")
    report = category_means([r for r in qa if r.get("f1_adversarial_report") is not None], "f1_adversarial_report")
    summary = {"questions": len(qa), "errors": sum(r["kind"] == "error" for r in rows)}
    for category, name in CATEGORIES.items():
        summary[f"f1_{name.replace('-', '_')}"] = official.get(category)
    summary["f1_adversarial_report"] = report.get(5)
    return summary


@cli_main
def main(argv=None):
    args = parse_run_args(build_parser(), argv)
    if not args.data:
        raise LocasError("--data is required: a locomo10.json-shaped file")
    spec, cfg = model_spec(args), adapt_config(args, steps_per_window=LOCOMO_STEPS)
    check_model(spec, cfg)
    conversations = load_locomo(args.data, strict=False)[:args.max_conversations]
    options = {"answer_context": args.answer_context, "context_mode": args.context_mode, "seed": args.seed}
    config, config_id = run_config_id("locomo", spec, cfg, {"data": str(Path(args.data).resolve()), **options})
    units = [make_unit("locomo", c.sample_id, sum(len(t.text) for s in c.sessions for t in s.turns), cfg,
                       config_id, c, **options) for c in conversations]
    store = execute("locomo", units, args, spec, config, config_id)
    rows = list(store.rows())
    summary = summarize(rows)
    print_table([{"category": k.removeprefix("f1_"), "f1": v} for k, v in summary.items() if k.startswith("f1_")],
                ["category", "f1"])
    store.write_summary(summary)
    print(json.dumps(summary, indent=1))
    print(f"rows: {store.rows_path}\nsummary: {Path(args.output) / 'summary.json'}")


if __name__ == "__main__":
    raise SystemExit(main())
