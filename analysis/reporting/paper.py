"""The paper's figures and the setting each was measured in (`analysis/paper.yaml`), and each run's own
setting read from its manifest: a published figure stands beside a run only when the two settings agree."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from analysis.load import KEYS, Runs, flatten_config

PAPER = Path(__file__).resolve().parents[1] / "paper.yaml"
ANY = "any"
SHOWN = ("model", "window", "width")
"""What every row of the report names of its run."""
FIELDS = {"model": "cfg_model_model", "method": "cfg_adapt_method", "window": "cfg_adapt_window_size",
          "loss": "cfg_adapt_loss", "split": "cfg_options_split", "context_mode": "cfg_options_context_mode",
          "answer_context": "cfg_options_answer_context"}
"""Setting part -> the manifest config field (flattened by analysis.load) that holds it."""


@lru_cache(maxsize=1)
def paper() -> dict:
    from locas.yaml_file import read_yaml

    return read_yaml(PAPER, "analysis/paper.yaml")


def width_field(method) -> str | None:
    """The config field that is `method`'s width (the paper's r), None for a method without one."""
    return paper()["width"].get(method)


def run_setting(manifest: dict, method=None) -> dict:
    """The setting of a run (model, method, window, width, loss, and the task options the paper fixes)."""
    config = flatten_config((manifest or {}).get("config", {}))
    setting = {part: config.get(field) for part, field in FIELDS.items()}
    setting["method"] = setting["method"] or method
    width = width_field(setting["method"])
    setting["width"] = config.get(f"cfg_adapt_{width}") if width else None
    if width and config.get("cfg_adapt_expand_every") is not None:  # the paper's width is fixed: never the same
        setting["width"] = expanding_width(config, setting["width"])
    if width is None:
        setting["loss"] = None  # a frozen model trains on nothing
    return setting


def expanding_width(config: dict, first: int) -> str:
    """An expanding memory's width as the report names it, e.g. `32→128 (+16 per 8192 tokens)`."""
    every, block = config["cfg_adapt_expand_every"], config.get("cfg_adapt_expand_width") or first
    most = config.get("cfg_adapt_expand_max_width")
    schedule = "session" if every == "session" else f"{every} tokens"
    return f"{first}→{most if most is not None else 'unbounded'} (+{block} per {schedule})"


def short_model(model) -> str:
    """A model as rows name it: a hub id, or a local folder's last two path parts."""
    return "/".join(str(model).rstrip("/").split("/")[-2:]) if model else "not recorded"


def _same(part: str, ours, theirs) -> bool:
    if part == "model":  # a local copy of Qwen3-1.7B-Base is named like the hub id's last part
        return ours is not None and str(ours).rstrip("/").split("/")[-1] == str(theirs).split("/")[-1]
    return ours == theirs


def figure_entry(task: str, figure: str, method) -> tuple[dict | None, dict]:
    """(the paper's entry that gives `figure` for `method`, or for any method; its whole setting)."""
    section = paper().get(task, {})
    figures = section.get("figures", {})
    entry = figures.get(method) if figure in (figures.get(method) or {}) else None
    entry = entry or next((e for e in figures.values() if figure in e
                           and (e.get("setting") or {}).get("method") == ANY), None)
    if entry is None:
        return None, {}
    setting = {**paper()["setting"], **(section.get("setting") or {}), "method": method,
               **(entry.get("setting") or {})}
    return entry, {part: value for part, value in setting.items() if value != ANY}


def differences(ours: dict, theirs: dict) -> list[str]:
    """`part ours ≠ theirs` for every part of the paper's setting the run does not share."""
    out = []
    for part, value in theirs.items():
        if not _same(part, ours.get(part), value):
            mine = short_model(ours.get(part)) if part == "model" else ours.get(part)
            out.append(f"{part} {mine if mine is not None else 'not recorded'} ≠ {value}")
    return out


def settings_frame(runs: Runs) -> pd.DataFrame:
    """One row per run: `run`, its setting's parts (`model` shortened) as columns."""
    rows = []
    for name in runs.names:
        setting = run_setting(runs.manifests.get(name))
        rows.append({"run": name, **setting, "model": short_model(setting["model"])})
    return pd.DataFrame(rows, columns=["run", *FIELDS, "width"])


def with_setting(frame: pd.DataFrame, runs: Runs, after: str = "method") -> pd.DataFrame:
    """`frame` with its run's model, window and width inserted after column `after` (width: `-` where the
    method has none)."""
    if not len(frame):
        return frame
    shown = settings_frame(runs).set_index("run")
    out = frame.copy()
    at = list(out.columns).index(after) + 1 if after in out.columns else len(KEYS)
    for offset, part in enumerate(SHOWN):
        values = out["run"].map(shown[part])
        if part == "width":
            values = values.map(lambda v: "-" if v is None or pd.isna(v) else int(v))
        out.insert(at + offset, part, values)
    return out


def paper_columns(frame: pd.DataFrame, runs: Runs, task: str, figures: dict[str, str]) -> pd.DataFrame:
    """`frame` with, per `figures` (paper figure -> column title), the paper's figure where the row's run has
    the figure's setting and an empty cell otherwise, and `paper setting`: "same", or what differs."""
    if not len(frame):
        return frame
    out = frame.copy()
    cells = {title: [] for title in figures.values()}
    notes = []
    for _, row in out.iterrows():
        ours = run_setting(runs.manifests.get(row["run"]), row.get("method"))
        seen = []
        for figure, title in figures.items():
            entry, theirs = figure_entry(task, figure, ours["method"])
            differ = differences(ours, theirs) if entry else []
            cells[title].append(entry[figure] if entry and not differ else "")
            if entry:
                said = ("same as " + entry["label"]) if not differ else "; ".join(differ)
                seen.append(said if len(figures) == 1 else f"{title}: {said}")
        notes.append(" / ".join(seen) or "no published figure for this method")
    for title, values in cells.items():
        out[title] = values
    out["paper setting"] = notes
    return out


def definitions(task: str) -> list[str]:
    """What the paper leaves unsaid about its figures of `task`, one line each."""
    return [f"paper {figure}: {text}" for figure, text in (paper().get(task, {}).get("definitions") or {}).items()]
