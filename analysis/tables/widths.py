"""An expanding memory's widths in a run's summary (issue 23): the units' final widths and trainable parameters."""

from __future__ import annotations

import pandas as pd

from analysis.tables.common import number


def width_summary(units: pd.DataFrame | None) -> dict:
    """`final_width` (the widest unit's; `final_width_min` the narrowest's) and `trainable_params` (the widest
    unit's) from the book or conversation rows of an expanding memory; {} for a fixed width (its width is the
    config's `memory_width`)."""
    if units is None or "final_width" not in units.columns or not units["final_width"].notna().any():
        return {}
    grown = units[units["final_width"].notna()]
    return {"final_width": number(grown["final_width"].max(), whole=True),
            "final_width_min": number(grown["final_width"].min(), whole=True),
            "trainable_params": number(grown["trainable_params"].max(), whole=True)}
