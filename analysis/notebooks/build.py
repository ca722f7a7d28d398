"""Write the results notebooks (without outputs) from the cells below: `python analysis/notebooks/build.py`.

Each notebook's first cell picks the run: `LOCAS_RUN` (a run folder, several separated by commas, or a
study's folder), else the default path; relative paths are taken from the folder Jupyter was launched in.
Figures are saved as PNG into the first run's folder (or `LOCAS_FIGURES`). The tests check that running this
file reproduces the committed notebooks.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
%matplotlib inline
from pathlib import Path

import pandas as pd
from IPython.display import display

from analysis import plots, tables
from analysis.load import launch_folder, load_runs

pd.options.display.float_format = "{:.3f}".format
pd.options.display.max_columns = 40
runs = load_runs(RUN, base=launch_folder())
FIGURES = Path(os.environ.get("LOCAS_FIGURES", runs.paths[runs.names[0]]))
print("figures ->", FIGURES)
runs"""

ERRORS = """\
# Units that failed (one row each, with the error in one line)
runs.errors[["run", "method", "task", "unit_id", "error", "attempts"]]"""


def run_cell(default: str) -> str:
    return (f'import os\n\nRUN = os.environ.get("LOCAS_RUN", "{default}")  '
            "# a run folder, or several separated by commas")


def notebook(title: str, default: str, cells: list) -> nbformat.NotebookNode:
    book = new_notebook(cells=[new_code_cell(run_cell(default)), new_markdown_cell(title), new_code_cell(SETUP),
                               *cells, new_code_cell(ERRORS)])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.metadata["language_info"] = {"name": "python"}
    return book


def md(text: str):
    return new_markdown_cell(text)


def code(text: str):
    return new_code_cell(text)


PG19 = notebook("# PG-19: perplexity at depth, cost, and MMLU retention", "runs/pg19", [
    md("## PPL@N, the headline: the books that reach N\nexp(Σ NLL / Σ scored tokens) over exactly the scored "
       "tokens among each book's first N tokens, pooled over the books with at least N tokens (`n@…` of them): "
       "every position up to N counts the same books (docs/protocols.md)."),
    code("ppl = tables.pg19_table(runs)\ntables.pg19_view(ppl, 'ppl_reaching')"),
    md("## PPL@N over every book (a shorter book gives all its tokens), and the mean of per-book PPL@N"),
    code("display(tables.pg19_view(ppl, 'ppl'))\ntables.pg19_view(ppl, 'mean_book_ppl')"),
    md("## Bucket PPL: the scored tokens in [N − 50K, N)"),
    code("tables.pg19_view(ppl, 'bucket')"),
    md("## TempLoRA-style: token-weighted mean of per-window PPL (compare only with tables that use it)"),
    code("tables.pg19_view(ppl, 'templora_ppl')"),
    md("## Against `none`: paired books, pooled-PPL difference, 95% bootstrap interval over books\n"
       "Only runs of the same model, data, split, max_tokens and windows are paired; name the baseline run "
       "with `baseline_run=` when there are several."),
    code("deltas = tables.delta_table(runs, n_boot=2000, seed=0)\ndeltas"),
    code("# per book, whole book\ntables.book_deltas(runs, warn=False)"),
    md("## Cost (Table 1): extra parameters, device-seconds per 1K tokens, time relative to `none`"),
    code("tables.cost_table(runs)"),
    md("## PPL against position in the book"),
    code("plots.plot_ppl_by_position(runs, path=FIGURES / 'pg19_ppl_by_position.png')"),
    md("## MMLU retention: before (base) and after adapting on a book (memory and its dense export)"),
    code("if len(runs.mmlu):\n"
         "    display(tables.mmlu_table(runs))\n"
         "else:\n"
         "    print('no MMLU rows in', RUN)"),
])

LOCOMO = notebook("# LoCoMo: F1 per question category", "runs/locomo", [
    md("F1 × 100 per category: 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial (official "
       "rule: abstaining scores 1), and the report's adversarial rule (−F1 against the adversarial answer)."),
    code("tables.locomo_table(runs)"),
    code("tables.locomo_long(runs)"),
    code("plots.plot_locomo_f1(runs, path=FIGURES / 'locomo_f1.png')"),
    md("## Some answers"),
    code("columns = ['method', 'category', 'question', 'gold', 'prediction', 'f1']\n"
         "runs.qa.groupby(['method', 'category']).head(2)[columns]"),
])

SWEEPS = notebook("# Sweeps: trials and heatmaps", "runs/sweep", [
    md("Completed trials, best first (trials ASHA stopped early are counted, not ranked)."),
    code("print(runs.trials['status'].value_counts(dropna=False).to_dict())\n"
         "tables.sweep_table(runs).head(10)"),
    md("## Heatmap of two config columns (best PPL over the others)"),
    code("varied = [c for c in tables.sweep_config_columns(runs.trials) if runs.trials[c].nunique() > 1]\n"
         "X = os.environ.get('LOCAS_SWEEP_X') or varied[0]\n"
         "Y = os.environ.get('LOCAS_SWEEP_Y') or next(c for c in varied if c != X)\n"
         "print('varied:', varied, '| heatmap:', X, 'x', Y)"),
    code("plots.plot_sweep_heatmap(runs, X, Y, path=FIGURES / f'sweep_{X}_x_{Y}.png')"),
])


def main() -> None:
    for name, book in {"pg19": PG19, "locomo": LOCOMO, "sweeps": SWEEPS}.items():
        for index, cell in enumerate(book.cells):
            cell.id = f"{name}-{index}"  # stable ids: rebuilding changes nothing that did not change
        nbformat.validate(book)
        nbformat.write(book, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
