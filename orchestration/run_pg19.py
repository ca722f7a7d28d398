"""PG-19 online adaptation: every book, window by window, evaluate then update (docs/protocols.md).

    python orchestration/run_pg19.py --model Qwen/Qwen3-1.7B-Base --method locas --memory_width 64 \
        --memory_init highest --loss_function NTP --window_size 2048 --num_gpus 8 \
        --data emozilla/pg19 --split test --output runs/pg19-locas
    python orchestration/run_pg19.py --demo          # tiny model, built-in text, local Ray, < 2 minutes

Rerunning the same command resumes: finished books are skipped. `--help` lists every flag.
"""
from orchestration.cli import entry_point

main = entry_point("pg19", __doc__.splitlines()[0])

if __name__ == "__main__":
    raise SystemExit(main())
