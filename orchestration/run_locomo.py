"""LoCoMo long-conversation QA: adapt on each conversation's sessions, then answer its questions (docs/protocols.md).

    python orchestration/run_locomo.py --model Qwen/Qwen3-1.7B-Base --memory_type locas --ttt_loss SD \
        --context_mode date_split --answer_context full --data ../shared/data/locomo/locomo10.json \
        --num_gpus 8 --output runs/locomo-locas-sd

Rerunning the same command resumes: finished conversations are skipped. `--help` lists every flag.
"""
from orchestration.cli import entry_point

main = entry_point("locomo", __doc__.splitlines()[0])

if __name__ == "__main__":
    raise SystemExit(main())
