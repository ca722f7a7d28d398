"""What the task folders' data loaders share (each task's own loader is its folder's `data.py`, e.g.
`from locas.tasks.pg19.data import load_books`): telling a local folder from a Hugging Face dataset id, and
loading one split of a dataset (a hub id or a local dataset folder) through `datasets`, with any failure as
one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from locas.errors import LocasError


def is_folder_source(source: str | Path) -> bool:
    """An HF id is `name` or `owner/name`; a `Path`, anything on disk, or anything path-shaped is a folder."""
    text = str(source)
    return (
        isinstance(source, Path)
        or Path(text).expanduser().exists()
        or text.startswith(("/", ".", "~"))
        or text.count("/") > 1
    )


DATASET_FILES = ("*.parquet", "*.arrow", "*.jsonl")


def is_dataset_folder(folder: Path) -> bool:
    """A local copy of a hub dataset (its parquet/arrow/jsonl files, or a dataset card with configs), which
    `datasets` loads exactly as it loads the hub id."""
    return (folder / "README.md").is_file() or any(next(folder.rglob(p), None) for p in DATASET_FILES)


def load_hub_dataset(source: str, config: str | None, split: str, hint: str) -> Any:
    """One split of a dataset (a hub id or a local dataset folder), and nothing else.

    `datasets.load_dataset(source, split=...)` downloads and prepares every split first: PG-19's
    ~28,600-book train split to read 100 test books, MMLU's auxiliary_train to read its test questions.
    So the split's own data files are looked up (`load_dataset_builder` lists files, it reads none) and
    only those are loaded; `datasets` shows its download and preparation progress bars. Any failure
    (offline, unknown id, config or split) is one LocasError line naming what was looked for."""
    import datasets  # slow to import; only the dataset paths need it

    named = source if config is None else f"{source} ({config})"
    try:
        files = datasets.load_dataset_builder(source, config).config.data_files or {}
        if split not in files:
            known = ", ".join(files) or "none"
            raise LocasError(f"dataset {named} has no split {split!r} (its splits: {known}); {hint}")
        return datasets.load_dataset(source, config, data_files={split: files[split]}, split=split)
    except LocasError:
        raise
    except Exception as error:  # offline, unknown id, config or split: all one user-facing message
        message = str(error).strip()
        reason = message.splitlines()[0] if message else type(error).__name__
        raise LocasError(f"cannot load dataset {named} split {split!r}: {reason}; {hint}") from None
