"""LoCoMo answer scores as the project computes them, against LoCoMo's own scorer on the same answers.

    git clone https://github.com/snap-research/locomo    # its task_eval/evaluation.py
    pip install -e ".[checks]"                            # bert_score and regex: what that module imports
    python -m benchmarks.check_locomo --locomo_repo locomo [--results OUTPUT_FOLDER ...]

Every question of the LoCoMo file (default ../shared/data/locomo/locomo10.json) is scored by both: the
official `eval_question_answering` reads the file's own qa records with a `prediction` added, the project
scores the questions its loader (`load_locomo`) makes of the same file with `score_qa`, the function behind
every `f1` it writes. The predictions are families made from the file (the gold answer, the gold answer
reworded, half of it, another question's answer, an abstention), and with `--results` the predictions of
real runs (their `qa` rows, whose recorded `f1` is compared too). Printed per family: questions, the mean
F1 by each, and the largest per-question difference.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.common import SHARED


def families(records: list[dict]) -> dict[str, list[str]]:
    """Predictions per question (in `records` order) that exercise each category's rule."""
    golds = [str(r.get("answer", r.get("adversarial_answer", ""))) for r in records]
    return {
        "gold": golds,
        "gold reworded": [f"The {g.upper()}!" for g in golds],
        "half of gold": [" ".join(g.split()[: max(1, len(g.split()) // 2)]) for g in golds],
        "gold parts reversed": [", ".join(reversed([p.strip() for p in g.split(",")])) for g in golds],
        "another answer": golds[1:] + golds[:1],
        "abstention": ["Not mentioned in the conversation"] * len(golds),
    }


def official_scores(evaluation, records: list[dict], predictions: list[str]) -> list[float]:
    """LoCoMo's `eval_question_answering` on the file's records with these predictions. It reads `answer`
    for every category, which the file's adversarial records lack: those get their adversarial answer, which
    the adversarial rule never reads."""
    qa = [{**r, "answer": r.get("answer", r.get("adversarial_answer")), "prediction": p} for r, p in zip(records, predictions)]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump({"qa": qa}, f)
        f.flush()
        scores, _lengths, _recall = evaluation.eval_question_answering(f.name, "prediction")
    return [float(s) for s in scores]


def compare(name: str, ours: list[float], theirs: list[float]) -> dict:
    return {"family": name, "questions": len(ours), "f1_project": round(sum(ours) / len(ours), 6),
            "f1_official": round(sum(theirs) / len(theirs), 6),
            "max_abs_diff": max(abs(a - b) for a, b in zip(ours, theirs))}


def result_rows(folders: list[str]) -> list[dict]:
    """The `qa` rows of run folders, read as a notebook reads them."""
    from analysis.load import load_runs

    return load_runs(folders).qa.to_dict("records") if folders else []


def main(argv=None):
    from locas.metrics import score_qa
    from locas.tasks.locomo.data import load_locomo

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--locomo_repo", required=True, help="a checkout of github.com/snap-research/locomo")
    p.add_argument("--data", default=str(SHARED / "data" / "locomo" / "locomo10.json"))
    p.add_argument("--results", nargs="*", default=[], help="output folders of LoCoMo runs")
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(args.locomo_repo).resolve()))
    from task_eval import evaluation

    raw = {f"{sample['sample_id']}:{i}": record for sample in json.loads(Path(args.data).read_text())
           for i, record in enumerate(sample["qa"])}
    questions = [qa for conversation in load_locomo(args.data) for qa in conversation.qa]
    records = [raw[qa.question_id] for qa in questions]
    report = []
    for name, predictions in families(records).items():
        ours = [score_qa(qa.category, p, qa.answer, qa.adversarial_answer)["f1"] for qa, p in zip(questions, predictions)]
        report.append(compare(name, ours, official_scores(evaluation, records, predictions)))
        print(json.dumps(report[-1]), flush=True)
    rows = result_rows(args.results)
    if rows:
        recorded = [float(row["f1"]) for row in rows]
        report.append(compare("runs: recorded f1", recorded,
                              official_scores(evaluation, [raw[row["question_id"]] for row in rows],
                                              [str(row["prediction"]) for row in rows])))
        print(json.dumps(report[-1]), flush=True)
    return report


if __name__ == "__main__":
    main()
