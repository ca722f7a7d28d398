"""The rules that turn rows into figures, in one place (docs/protocols.md): the run summaries
(`summary.json`), the notebooks and any pandas session all call these. pandas and numpy only.

Every function takes what `analysis.load.load_runs` returns (`tables.pg19_table(runs)`) or the frames
themselves. A task's own tables live in its folder (`locas/tasks/<name>/tables.py`) and show here by name;
the comparisons across runs are `analysis.tables.comparisons`. Groups are `by = ["run", "method", "config_id"]` unless told otherwise.

PG-19. A window row scores positions [start, start + scored_tokens) and keeps its NLL sum split at every
multiple of 50,000 inside them (`cuts`, `locas.contract.BUCKET_WIDTH`), so every figure below counts exactly
the tokens it names:
- PPL@N = exp(Σ NLL / Σ scored tokens) (`locas.contract.ppl`) over the scored tokens among each book's first
  N tokens, pooled over the books (token-weighted). `ppl@N` pools every book (a shorter book gives all its tokens);
  `ppl@N_reaching` only the books with at least N tokens (`reach@N` of them): every position up to N then
  counts the same books. The paper-style headline is `ppl@N_reaching`. `mean_book_ppl@N` is the plain mean
  of those books' own PPL@N.
- bucket@N: pooled PPL over the positions [N − 50K, N): how well the model does at that depth.
- templora_ppl: Σ scored_i · exp(nll_i / scored_i) / Σ scored_i over whole windows (those whose first scored
  token is before N, for @N): the token-weighted mean of per-window perplexities that TempLoRA-style tables
  report. It is always at least the pooled PPL (Jensen): compare it only with tables that use it.
- A book that stopped with an error is left out of every pooled figure and delta, and counted (`stopped`).
  A window without an NLL in a book that did not stop makes its book count as stopped too, with a warning.
- Comparisons (deltas, relative cost) pair runs on the same model, dtype, data, split, max_tokens and
  windows only, and only the units both finished; per book they also need the identical window grid. A
  cost ratio needs equal batch sizes. No interval under MIN_UNITS resampled units (books, conversations,
  questions).
"""

from importlib import import_module

from analysis.frames import BOOK, BUCKET_WIDTH, PPL_AT, SETTINGS
from analysis.tables.comparisons import answer_deltas, book_deltas, delta_table, retention_deltas
from analysis.tables.cost import batch_sizes, cost_table
from analysis.tables.intervals import (
                                     MIN_UNITS,
                                     cluster_mean_bootstrap,
                                     paired_bootstrap,
                                     paired_mean_bootstrap,
                                     too_few,
)
from analysis.tables.outcomes import failed_questions, left_out, outcome_counts, unit_outcomes
from analysis.tables.sweeps import best_trial, sweep_config_columns, sweep_table
from locas.tasks import TASKS

__all__ = ["BOOK", "BUCKET_WIDTH", "MIN_UNITS", "PPL_AT", "SETTINGS", "answer_deltas", "batch_sizes", "best_trial",
           "book_deltas", "cluster_mean_bootstrap", "cost_table", "delta_table", "failed_questions", "left_out",
           "outcome_counts", "paired_bootstrap", "paired_mean_bootstrap", "retention_deltas", "too_few",
           "unit_outcomes", "sweep_config_columns",
           "sweep_table"]

for _package in TASKS.values():  # every registered task's tables (its folder's tables.py), under one name
    _tables = import_module(f"{_package}.tables")
    globals().update({name: getattr(_tables, name) for name in _tables.__all__})
    __all__ += _tables.__all__
