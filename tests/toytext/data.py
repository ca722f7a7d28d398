"""The toy task's items: the .txt documents of a folder, by file name."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from locas.errors import LocasError


@dataclass(frozen=True)
class Text:
    doc_id: str
    text: str


def load_texts(folder) -> list[Text]:
    """Every .txt file of `folder`, sorted by name; a folder without one is one LocasError line."""
    folder = Path(folder).expanduser()
    texts = [Text(path.stem, path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.txt"))]
    if not texts:
        raise LocasError(f"--data {folder}: no .txt document there")
    return texts
