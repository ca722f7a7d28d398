"""Data loaders for the three tasks: `pg19` (books), `locomo` (conversations), `mmlu` (questions).

Import the task module you need (`from locas.data.pg19 import load_books`). This file holds only
what the loaders share: telling a local folder from a Hugging Face dataset id, and turning any
failure to load a dataset (offline, unknown id or split) into one `LocasError` line.
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


def load_hub_dataset(dataset_id: str, config: str | None, split: str, hint: str) -> Any:
    """`datasets.load_dataset(dataset_id, config, split=split)`, or a LocasError that ends with `hint`."""
    import datasets  # slow to import; only the dataset paths need it

    try:
        return datasets.load_dataset(dataset_id, config, split=split)
    except Exception as error:  # offline, unknown id, config or split: all one user-facing message
        message = str(error).strip()
        reason = message.splitlines()[0] if message else type(error).__name__
        named = dataset_id if config is None else f"{dataset_id} ({config})"
        raise LocasError(f"cannot load dataset {named} split {split!r}: {reason}; {hint}") from None
