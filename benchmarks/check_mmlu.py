"""MMLU as the project scores it, against lm-evaluation-harness on the same model and the same files.

    pip install -e ".[checks]"                      # lm-evaluation-harness 0.4.13
    python -m benchmarks.check_mmlu                 # tinylm-pg19 on ../shared/data/mmlu, 0 and 5 shots
    python -m benchmarks.check_mmlu --book 26618    # also after adapting on a PG-19 book: its dense export

lm-eval runs its own MMLU task (its built-in `mmlu/default` template: prompt, letter choices, `first_n`
few-shot exemplars from `dev`, accuracy by the highest log-likelihood) with only the data source changed to
the `{subject}_test.csv` / `{subject}_dev.csv` files. The project scores the same questions with
`score_questions`, the code behind every MMLU row it writes (`run_mmlu_base`, `run_mmlu_retention`). Printed per subject, shot count and variant: both
accuracies, the share of questions whose predicted letters agree, and the largest difference between the two
tools' log-probabilities of a letter.

With `--book`, the model is first adapted on that book (locas, the PG-19 windows, as a retention unit does)
and its state exported as a plain checkpoint (`to_dense`, then `save_pretrained`): lm-eval loads and scores
that checkpoint, the project scores the export in memory (its `dense` rows) and the live memory (`memory`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import torch

from benchmarks.common import SHARED

UTILS = '''def with_choices(dataset):
    """The cais/mmlu `choices` list from the CSV columns choice0..choice3."""
    return dataset.map(lambda doc: {"choices": [doc[f"choice{i}"] for i in range(4)]})
'''


def lm_eval_tasks(folder: Path, subjects: list[str], workdir: Path) -> list[str]:
    """Write one lm-eval task per subject: the built-in MMLU template, reading the CSV files of `folder`."""
    import lm_eval

    template = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "_default_template_yaml"
    (workdir / "utils.py").write_text(UTILS)
    names = []
    for subject in subjects:
        name = f"locas_check_mmlu_{subject}"
        files = {"test": str(folder / f"{subject}_test.csv"), "dev": str(folder / f"{subject}_dev.csv")}
        description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        (workdir / f"{name}.yaml").write_text("\n".join([
            f"include: {json.dumps(str(template))}",
            f"task: {name}",
            "dataset_path: csv",
            f"dataset_kwargs: {json.dumps({'data_files': files})}",
            f"description: {json.dumps(description)}",
            "process_docs: !function utils.with_choices",
        ]) + "\n")
        names.append(name)
    return names


def lm_eval_scores(model_path: str, tasks: list[str], workdir: Path, shots: int) -> dict[str, list[list[float]]]:
    """Per task, per question in file order, lm-eval's log-likelihood of each letter."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model="hf", model_args=f"pretrained={model_path},dtype=float32", tasks=tasks,
                          num_fewshot=shots, batch_size=8, device="cpu", log_samples=True,
                          task_manager=TaskManager(include_path=str(workdir)))
    return {task: [[float(r[0]) for r in s["filtered_resps"]] for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]
            for task in tasks}


def project_scores(model, tokenizer, questions, dev, shots: int, variant: str = "base") -> tuple[list[dict], list[list[float]]]:
    """The project's MMLU rows for the questions, and its letter log-probabilities for the same prompts."""
    from locas.tasks.mmlu.run import letter_logprobs, letter_token_ids, prepare_prompts, score_questions

    rows = score_questions(model, tokenizer, questions, dev, shots, variant=variant)
    letters = letter_token_ids(tokenizer)
    logprobs = [letter_logprobs(model, [p], letters)[0].tolist() for p in prepare_prompts(tokenizer, questions, dev, shots)]
    return rows, logprobs


def adapt_and_export(stack: contextlib.ExitStack, model, tokenizer, books: str, book_id: str, max_tokens: int,
                     folder: Path):
    """Adapt on the book as a retention unit does (locas, NTP, the PG-19 windows), keep the adapted state
    live until `stack` closes, and save its plain export to `folder`; returns the export."""
    from locas.adapt import adapted
    from locas.config import AdaptConfig
    from locas.tasks.pg19.data import load_books
    from locas.tasks.pg19.run import book_document

    cfg = AdaptConfig(method="locas", loss="NTP", window_size=512, max_tokens=max_tokens)
    document = book_document(tokenizer, load_books(books, ids=[book_id])[0], cfg)
    with torch.enable_grad():
        result, method = stack.enter_context(adapted(model, document, cfg))
    dense = method.export(result.slot)
    dense.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return dense


def compare(subject: str, shots: int, variant: str, rows: list[dict], ours, theirs, questions) -> dict:
    """One report line: the project's rows and letter log-probabilities against lm-eval's log-likelihoods."""
    their_letters = ["ABCD"[max(range(4), key=s.__getitem__)] for s in theirs]
    return {"subject": subject, "shots": shots, "variant": variant, "questions": len(rows),
            "accuracy_project": sum(r["correct"] for r in rows) / len(rows),
            "accuracy_lm_eval": sum(letter == "ABCD"[q.answer] for letter, q in zip(their_letters, questions)) / len(rows),
            "same_prediction": sum(r["prediction"] == t for r, t in zip(rows, their_letters)) / len(rows),
            "max_logprob_diff": max(abs(a - b) for o, t in zip(ours, theirs) for a, b in zip(o, t))}


def main(argv=None):
    from transformers import AutoTokenizer

    from locas import CausalLMWithMemory
    from locas.tasks.mmlu.data import load_mmlu

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHARED / "models" / "tinylm-pg19"))
    p.add_argument("--mmlu", default=str(SHARED / "data" / "mmlu"), help="a folder of {subject}_test/_dev.csv files")
    p.add_argument("--shots", default="0,5")
    p.add_argument("--book", help="also adapt on this PG-19 book and check its dense export")
    p.add_argument("--books", default=str(SHARED / "data" / "pg19" / "books"))
    p.add_argument("--book_tokens", type=int, default=8192)
    args = p.parse_args(argv)

    torch.set_grad_enabled(False)
    folder = Path(args.mmlu)
    subjects = sorted(path.name[:-len("_test.csv")] for path in folder.glob("*_test.csv"))
    model = CausalLMWithMemory.from_pretrained(args.model, dtype=torch.float32, device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    report = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        tasks = lm_eval_tasks(folder, subjects, workdir)
        checkpoint, scorers = Path(args.model), {"base": model}
        if args.book:
            checkpoint = workdir / "dense"
            dense = adapt_and_export(stack, model, tokenizer, args.books, args.book, args.book_tokens, checkpoint)
            scorers = {"dense": dense, "memory": model}
        for shots in [int(k) for k in args.shots.split(",")]:
            theirs = lm_eval_scores(str(checkpoint), tasks, workdir, shots)
            for subject, task in zip(subjects, tasks):
                questions = load_mmlu(folder, [subject])
                dev = load_mmlu(folder, [subject], split="dev")
                for variant, scorer in scorers.items():
                    rows, ours = project_scores(scorer, tokenizer, questions, dev, shots, variant)
                    report.append(compare(subject, shots, variant, rows, ours, theirs[task], questions))
                    print(json.dumps(report[-1]), flush=True)
    return report


if __name__ == "__main__":
    main()
