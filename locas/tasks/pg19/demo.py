"""PG-19's --demo inputs: a folder of short books made from the sample text."""
from __future__ import annotations

from pathlib import Path

from locas.tiny import sample_text

DEMO_BOOKS = 3


def demo_books(root: Path) -> Path:
    """A folder of DEMO_BOOKS short .txt books under `root` (made once, the same every time)."""
    books = Path(root) / "books"
    books.mkdir(parents=True, exist_ok=True)
    for i in range(DEMO_BOOKS):
        (books / f"demo{i}.txt").write_text(sample_text(1500 + 700 * i, seed=i))
    return books


def demo_inputs(root: Path) -> dict:
    """The flags that point a run at the demo books."""
    return {"data": str(demo_books(root))}
