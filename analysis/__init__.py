"""Results analysis: run stores into pandas (`analysis.load`), the paper's tables (`analysis.tables`),
figures (`analysis.plots`), and the notebooks in `analysis/notebooks/`. pandas, numpy and matplotlib only."""
