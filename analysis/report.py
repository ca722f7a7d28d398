"""A study's report: the paper's tables from the study's runs, the paper's figures beside runs of the same
setting, failures shown, costs compared at equal batch size, and plots.

    python -m analysis.report runs/paper        # writes runs/paper/report.md, its PNGs and an executed report.ipynb

Every figure comes from the runs' rows through `analysis.tables` (docs/protocols.md); the paper's figures
and their settings come from `analysis/paper.yaml`, which cites the paper. A figure that no run produced is
written "missing", never filled in; a paper figure beside a run of another setting is left empty and the row
says what differs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis import plots, tables
from analysis.load import Runs, load_runs
from analysis.reporting.ablations import ablation_runs, ablations
from analysis.reporting.answers import locomo_differences, locomo_results, mmlu_differences, mmlu_results
from analysis.reporting.common import MISSING, number_text, notes_of
from analysis.reporting.paper import paper
from analysis.reporting.pg19 import pg19_cost, pg19_differences, pg19_results

SECTIONS = [  # (title, function, what the table shows)
    ("PG-19: perplexity at depth", pg19_results,
     "Per run: PPL@N over exactly the first N tokens of the books that reach N (`n@` of them, the headline), "
     "and the whole books' PPL, over the books it finished; `stopped`: books a non-finite loss stopped, "
     "`failed`: books that gave no result."),
    ("PG-19: against the frozen baseline", pg19_differences,
     "On the books both runs finished, at each depth over those reaching it (the headline's rule): pooled PPL "
     "difference, 95% paired bootstrap interval over books (`n` books)."),
    ("PG-19: cost", pg19_cost,
     "Seconds of the run's `device` (a GPU, or the CPU for a CPU run) per 1K scored tokens over each run's "
     "finished books; against the baseline on the books both finished, and a ratio only between runs at the same "
     "batch size (books adapted at once per actor) on the same device."),
    ("LoCoMo: F1 per category", locomo_results,
     "F1 × 100; `adversarial`: the official rule (abstaining scores 100), `adversarial (report)`: the report's "
     "(minus the F1 against the trap answer, the paper's rule); `failed questions`: questions that gave no answer."),
    ("LoCoMo: against the frozen baseline", locomo_differences,
     "Mean F1 × 100 difference on the questions both runs answered, 95% bootstrap interval resampling "
     "conversations (`n` conversations)."),
    ("MMLU: retention", mmlu_results,
     "Accuracy (%) of the base, of base + memory after adapting on a book, and of its dense export."),
    ("MMLU: change from the base", mmlu_differences,
     "Accuracy (%) change on the same questions, 95% bootstrap interval resampling questions (`n` questions)."),
    ("Ablations: sweeps", ablations,
     "Each sweep trial as a PG-19 run, by the rules and names of the PG-19 tables, against the study's frozen run."),
]
FIGURES = [  # (file beside report.md, title, what it needs, how it is drawn)
    ("report_ppl_by_position.png", "PPL against position", "windows", plots.plot_ppl_by_position),
    ("report_cost_frontier.png", "PPL against GPU-seconds per token", "books", plots.plot_cost_frontier),
    ("report_locomo_f1.png", "LoCoMo F1 per category", "qa", plots.plot_locomo_f1),
    ("report_mmlu_accuracy.png", "MMLU accuracy per book and variant", "mmlu", plots.plot_mmlu_accuracy),
]


def unfinished(runs: Runs) -> dict[str, str]:
    """Each unit that stopped or failed and each failed question, in every run (ablation trials too): its line
    → its status ("stopped" or "failed")."""
    found = {}
    for each in [runs] + [r for r in [ablation_runs(runs)] if r is not None]:
        for task in ("pg19", "locomo", "mmlu"):
            outcomes = tables.unit_outcomes(each, task)
            for row in outcomes[outcomes["status"] != "done"].itertuples():
                found[f"{row.run}: {task} unit {row.item} {row.status} ({row.reason})"] = row.status
            if task != "pg19":
                found.update({f"{r.run}: {task} question {r.item} failed ({r.reason})": "failed"
                              for r in tables.failed_questions(each, task).itertuples()})
    return found


def status_lines(runs: Runs) -> list[str]:
    found = unfinished(runs)
    if not found:
        return ["Every unit of every run finished.", ""]
    stopped, failed = (sum(status == name for status in found.values()) for name in ("stopped", "failed"))
    return [f"**Not every unit finished: {stopped} stopped, {failed} failed (units or questions).** Every "
            "comparison below uses only the units all its runs finished and says how many it left out.", "",
            *[f"- {line}" for line in found], ""]


def write_figures(folder: str | Path, runs: Runs) -> list[tuple[str, str]]:
    """The report's PNGs, written into the study folder: [(file name, title)] of those the runs can draw."""
    drawn = []
    for name, title, needs, draw in FIGURES:
        if len(getattr(runs, needs)):
            draw(runs, path=Path(folder) / name)
            drawn.append((name, title))
    return drawn


# --- writing -------------------------------------------------------------------------------------------


def markdown_table(frame: pd.DataFrame) -> str:
    if not len(frame):
        return f"_{MISSING}: no run of the study gives this table yet._"

    def cell(value) -> str:
        return number_text(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    notes = [f"- {note}" for note in notes_of(frame)]
    return "\n".join([header, rule, *body] + ([""] + notes if notes else []))


def report_markdown(folder: Path, runs: Runs, figures: list[tuple[str, str]] = ()) -> str:
    parts = [f"# Study report: {folder.name}", "", *status_lines(runs),
             f"Runs: {', '.join(runs.names)}. Published figures: {paper()['source']} (`analysis/paper.yaml`): a "
             "paper figure stands only beside a run of its setting (model, window, width, loss, task options); "
             f"otherwise its cell is empty and `paper setting` says what differs. `{MISSING}`: no run gave that "
             "figure. Intervals: 95% percentile bootstrap, none under "
             f"{tables.MIN_UNITS} resampled units.", ""]
    for title, make, note in SECTIONS:
        parts += [f"## {title}", "", note, "", markdown_table(make(runs)), ""]
    parts += ["## Figures", ""]
    parts += [f"![{title}]({name})\n" for name, title in figures] or [f"_{MISSING}: no run gives a figure._"]
    return "\n".join(parts)


def notebook(folder: Path):
    """The report as a notebook: one section per table, and the figures as images, from this module."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    cells = [new_markdown_cell(f"# Study report: {folder.name}\nTables from `analysis.report`, the paper's "
                               "figures beside runs of their setting (`analysis/paper.yaml`)."),
             new_code_cell("import pandas as pd\nfrom IPython.display import Image, Markdown, display\n\n"
                           "from analysis import report\nfrom analysis.load import load_runs\n\n"
                           f"FOLDER = {str(folder)!r}\nruns = load_runs(FOLDER)\n"
                           "display(Markdown('\\n'.join(report.status_lines(runs))))\nruns")]
    for title, make, note in SECTIONS:
        cells += [new_markdown_cell(f"## {title}\n{note}"),
                  new_code_cell(f"table = report.{make.__name__}(runs)\nfor line in table.attrs.get('notes', []):\n"
                                "    print(line)\ntable")]
    cells += [new_markdown_cell("## Figures"),
              new_code_cell("for name, title in report.write_figures(FOLDER, runs):\n"
                            "    display(Markdown(f'### {title}'), Image(filename=f'{FOLDER}/{name}'))")]
    book = new_notebook(cells=cells)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return book


def write_report(folder: str | Path, execute: bool = True) -> tuple[Path, Path]:
    """Write `report.md`, its PNGs and `report.ipynb` (executed, unless `execute` is False) into the folder."""
    import nbformat

    folder = Path(folder).resolve()
    runs = load_runs(folder)
    figures = write_figures(folder, runs)
    markdown = folder / "report.md"
    markdown.write_text(report_markdown(folder, runs, figures), encoding="utf-8")
    book = notebook(folder)
    if execute:
        from nbclient import NotebookClient

        NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    path = folder / "report.ipynb"
    nbformat.write(book, path)
    return markdown, path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write a study's report (report.md, its PNGs, an executed report.ipynb).")
    p.add_argument("folder", help="the study's folder (run_study.py --output)")
    p.add_argument("--no_execute", action="store_true", help="write the notebook without running it")
    args = p.parse_args(argv)
    if not Path(args.folder).is_dir():
        print(f"error: study folder not found: {args.folder}", file=sys.stderr)
        return 2
    markdown, book = write_report(args.folder, execute=not args.no_execute)
    print(f"report: {markdown}\nnotebook: {book}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
