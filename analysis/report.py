"""A study's report: the paper's tables from the study's runs, with the paper's published figures beside ours.

    python -m analysis.report runs/paper        # writes runs/paper/report.md and an executed report.ipynb

Every figure comes from the runs' rows through `analysis.tables` (docs/protocols.md); every difference from
the frozen baseline comes with a paired bootstrap interval; the paper's figures come from
`analysis/paper.yaml`, which cites the paper. A figure that no run produced is written "missing", never
filled in.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from analysis import tables
from analysis.load import KEYS, Runs, load_runs

PAPER = Path(__file__).with_name("paper.yaml")
MISSING = "missing"
HEADLINE_N = 200_000


def paper_figures() -> dict:
    import yaml

    return yaml.safe_load(PAPER.read_text(encoding="utf-8"))


def _paper_column(frame: pd.DataFrame, task: str, figure: str) -> pd.Series:
    """The paper's `figure` for each row's method (None where the paper gives none)."""
    published = paper_figures().get(task, {})
    return frame["method"].map(lambda m: (published.get(m) or {}).get(figure))


# --- the tables -------------------------------------------------------------------------------------------


def pg19_results(runs: Runs) -> pd.DataFrame:
    """PG-19 per run: the whole books' PPL, PPL@N over the books reaching N (the headline) and their count,
    time relative to the frozen baseline, trainable parameters, and the paper's PPL@200K and relative time
    beside ours."""
    if not len(runs.windows):
        return pd.DataFrame()
    table = tables.pg19_table(runs)
    view = tables.pg19_view(table, "ppl_reaching")
    view.insert(len(KEYS), "books", table["books"])
    view.insert(len(KEYS) + 1, "PPL (whole books)", table["ppl"])
    cost = tables.cost_table(runs)[KEYS + ["time_vs_none", "trainable_params", "gpu_s_per_1k_tokens"]]
    out = view.merge(cost, on=KEYS, how="left")
    out["paper PPL@200K"] = _paper_column(out, "pg19", f"ppl@{HEADLINE_N}")
    out["paper time_vs_none"] = _paper_column(out, "pg19", "time_vs_none")
    return out


def pg19_differences(runs: Runs) -> pd.DataFrame:
    """Each method against the frozen baseline on the same books: PPL@N (books reaching N) and the whole
    book, with 95% paired bootstrap intervals over books."""
    if not len(runs.windows):
        return pd.DataFrame()
    deltas = tables.delta_table(runs, reaching_only=True, n_boot=2000, seed=0)
    return deltas[KEYS + ["baseline_run", "range", "books", "ppl_base", "ppl", "delta", "ci_low", "ci_high"]]


def locomo_results(runs: Runs) -> pd.DataFrame:
    """LoCoMo F1 × 100 per category under both adversarial rules, and the paper's row for the method."""
    if not len(runs.qa):
        return pd.DataFrame()
    ours = tables.locomo_table(runs)
    published = paper_figures()["locomo"]
    rows = []
    for _, row in ours.iterrows():
        rows.append({**row.to_dict(), "source": "this study"})
        paper = published.get(row["method"])
        rows.append({"run": row["run"], "method": row["method"], "config_id": row["config_id"],
                     "source": f"paper: {paper['label']}" if paper else "paper",
                     **{k: v for k, v in (paper or {}).items() if k != "label"}})
    return pd.DataFrame(rows)


def locomo_differences(runs: Runs) -> pd.DataFrame:
    return tables.answer_deltas(runs) if len(runs.qa) else pd.DataFrame()


def mmlu_results(runs: Runs) -> pd.DataFrame:
    """MMLU accuracy of the base, of base + memory (or adapter) and of its dense export, with the paper's."""
    if not len(runs.mmlu):
        return pd.DataFrame()
    out = tables.mmlu_table(runs)
    out["paper base_micro"] = paper_figures()["mmlu"]["none"]["base_micro"]
    out["paper memory_micro"] = _paper_column(out, "mmlu", "memory_micro")
    return out


def mmlu_differences(runs: Runs) -> pd.DataFrame:
    return tables.retention_deltas(runs) if len(runs.mmlu) else pd.DataFrame()


def ablations(runs: Runs) -> pd.DataFrame:
    """The study's sweeps (memory init, width, loss, ...): completed trials, best first."""
    if not len(runs.trials):
        return pd.DataFrame()
    ranked = tables.sweep_table(runs)
    varied = [c for c in tables.sweep_config_columns(runs.trials) if runs.trials[c].nunique() > 1]
    return ranked[["run", "rank", *varied, "ppl", "books_done", "seconds"]]


SECTIONS = [  # (title, function, what the table shows)
    ("PG-19: perplexity at depth, cost", pg19_results,
     "PPL@N over exactly the first N tokens of the books that reach N (`n@` of them); relative time: GPU-seconds "
     "per token over the frozen baseline's; the paper's figures beside ours."),
    ("PG-19: against the frozen baseline", pg19_differences,
     "Pooled PPL difference on the same books, 95% paired bootstrap interval over books."),
    ("LoCoMo: F1 per category", locomo_results,
     "F1 × 100; `adversarial`: the official rule (abstaining scores 100), `adversarial (report)`: the report's "
     "(minus the F1 against the trap answer, the paper's rule)."),
    ("LoCoMo: against the frozen baseline", locomo_differences,
     "Mean F1 × 100 difference on the same questions, 95% paired bootstrap interval over questions."),
    ("MMLU: retention", mmlu_results,
     "Accuracy (%) of the base, of base + memory after adapting on a book, and of its dense export."),
    ("MMLU: change from the base", mmlu_differences,
     "Accuracy (%) change on the same questions, 95% paired bootstrap interval over answers."),
    ("Ablations: sweeps", ablations, "Completed trials of each sweep, best first."),
]


# --- writing -------------------------------------------------------------------------------------------


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return MISSING
    if isinstance(value, float):
        value = value + 0.0  # no "-0"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    if not len(frame):
        return f"_{MISSING}: no run of the study gives this table yet._"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def report_markdown(folder: Path, runs: Runs) -> str:
    parts = [f"# Study report: {folder.name}", "",
             f"Runs: {', '.join(runs.names)}. Published figures: {paper_figures()['source']} "
             f"(`analysis/paper.yaml`). `{MISSING}`: no run gave that figure.", ""]
    for title, make, note in SECTIONS:
        parts += [f"## {title}", "", note, "", markdown_table(make(runs)), ""]
    return "\n".join(parts)


def notebook(folder: Path):
    """The report as a notebook: one section per table, and plots, from this module's functions."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    cells = [new_markdown_cell(f"# Study report: {folder.name}\nTables from `analysis.report`, the paper's "
                               "figures beside ours (`analysis/paper.yaml`)."),
             new_code_cell("import pandas as pd\nfrom IPython.display import display\n\n"
                           "from analysis import plots, report\nfrom analysis.load import load_runs\n\n"
                           f"runs = load_runs({str(folder)!r})\nruns")]
    for title, make, note in SECTIONS:
        cells += [new_markdown_cell(f"## {title}\n{note}"), new_code_cell(f"report.{make.__name__}(runs)")]
    cells += [new_markdown_cell("## Figures"),
              new_code_cell("if len(runs.windows):\n    display(plots.plot_ppl_by_position(runs))\n"
                            "if len(runs.qa):\n    display(plots.plot_locomo_f1(runs))\n"
                            "for name in runs.trials['run'].unique() if len(runs.trials) else []:\n"
                            "    trials = runs.trials[runs.trials['run'] == name]\n"
                            "    varied = [c for c in ('memory_width', 'memory_init', 'loss', 'lr', 'method')\n"
                            "              if c in trials and trials[c].nunique() > 1]\n"
                            "    if len(varied) >= 2:\n"
                            "        display(plots.plot_sweep_heatmap(trials, varied[0], varied[1]))")]
    book = new_notebook(cells=cells)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return book


def write_report(folder: str | Path, execute: bool = True) -> tuple[Path, Path]:
    """Write `report.md` and `report.ipynb` (executed, unless `execute` is False) into the study folder."""
    import nbformat

    folder = Path(folder).resolve()
    runs = load_runs(folder)
    markdown = folder / "report.md"
    markdown.write_text(report_markdown(folder, runs), encoding="utf-8")
    book = notebook(folder)
    if execute:
        from nbclient import NotebookClient

        NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    path = folder / "report.ipynb"
    nbformat.write(book, path)
    return markdown, path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write a study's report (report.md and an executed report.ipynb).")
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
