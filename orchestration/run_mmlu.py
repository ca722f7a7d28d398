"""MMLU retention: the base, then base + memory and its dense export after adapting on whole books (docs/protocols.md).

    python orchestration/run_mmlu.py --model Qwen/Qwen3-1.7B-Base --method locas --data cais/mmlu \
        --books emozilla/pg19 --after_book 10146,2544 --num_gpus 2 --output runs/mmlu-locas

One unit scores the frozen base once; one unit per book adapts on the whole book and scores every subject
with that memory (or adapter) and with its `to_dense` export. Rerunning the same command resumes.
"""
from orchestration.cli import entry_point

main = entry_point("mmlu", __doc__.splitlines()[0])

if __name__ == "__main__":
    raise SystemExit(main())
