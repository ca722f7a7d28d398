"""The study report's parts: the paper's settings, the PG-19, question-answering and ablation sections, and
the figures (`analysis.report` puts them together)."""
