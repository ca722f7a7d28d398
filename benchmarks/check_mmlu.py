"""MMLU as the project scores it, against lm-evaluation-harness on the same model and the same files.

    pip install lm_eval==0.4.13
    python -m benchmarks.check_mmlu                 # tinylm-pg19 on ../shared/data/mmlu, 0 and 5 shots

lm-eval runs its own MMLU task (its built-in `mmlu/default` template: prompt, letter choices, `first_n`
few-shot exemplars from `dev`, accuracy by the highest log-likelihood) with only the data source changed to
the `{subject}_test.csv` / `{subject}_dev.csv` files. The project scores the same questions with
`run_mmlu_base`, the code behind every MMLU figure it reports. Printed per subject and shot count: both
accuracies, the share of questions whose predicted letters agree, and the largest difference between the two
tools' log-probabilities of a letter.
"""
from __future__ import annotations

import argparse
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


def project_scores(model, tokenizer, questions, dev, shots: int) -> tuple[list[dict], list[list[float]]]:
    """The project's MMLU rows for the questions, and its letter log-probabilities for the same prompts."""
    from locas.tasks.mmlu import letter_logprobs, letter_token_ids, prepare_prompts, run_mmlu_base

    rows = run_mmlu_base(model, tokenizer, questions, dev, shots)
    prompts = prepare_prompts(tokenizer, questions, dev, shots)
    logprobs = [letter_logprobs(model, [p], letter_token_ids(tokenizer))[0].tolist() for p in prompts]
    return rows, logprobs


def main(argv=None):
    from transformers import AutoTokenizer

    from locas import CausalLMWithMemory
    from locas.data.mmlu import load_mmlu

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHARED / "models" / "tinylm-pg19"))
    p.add_argument("--mmlu", default=str(SHARED / "data" / "mmlu"), help="a folder of {subject}_test/_dev.csv files")
    p.add_argument("--shots", default="0,5")
    args = p.parse_args(argv)

    torch.set_grad_enabled(False)
    folder = Path(args.mmlu)
    subjects = sorted(path.name[:-len("_test.csv")] for path in folder.glob("*_test.csv"))
    model = CausalLMWithMemory.from_pretrained(args.model, dtype=torch.float32, device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    report = []
    with tempfile.TemporaryDirectory() as workdir:
        tasks = lm_eval_tasks(folder, subjects, Path(workdir))
        for shots in [int(k) for k in args.shots.split(",")]:
            theirs = lm_eval_scores(args.model, tasks, Path(workdir), shots)
            for subject, task in zip(subjects, tasks):
                questions = load_mmlu(folder, [subject])
                rows, ours = project_scores(model, tokenizer, questions, load_mmlu(folder, [subject], split="dev"), shots)
                their_letters = ["ABCD"[max(range(4), key=s.__getitem__)] for s in theirs[task]]
                report.append({
                    "subject": subject, "shots": shots, "questions": len(rows),
                    "accuracy_project": sum(r["correct"] for r in rows) / len(rows),
                    "accuracy_lm_eval": sum(letter == "ABCD"[q.answer] for letter, q in zip(their_letters, questions)) / len(rows),
                    "same_prediction": sum(r["prediction"] == t for r, t in zip(rows, their_letters)) / len(rows),
                    "max_logprob_diff": max(abs(a - b) for o, t in zip(ours, theirs[task]) for a, b in zip(o, t)),
                })
                print(json.dumps(report[-1]), flush=True)
    return report


if __name__ == "__main__":
    main()
