"""PG-19 books from a folder of `.txt` files or a Hugging Face dataset (SPEC §6).

A book is one unit of work, so loading returns whole books and the scheduler sizes units by
`len(book.text)` before any tokenizer is loaded.

Text is exactly what the Hugging Face PG-19 builder yields (docs/protocols.md): it reads each official
`.txt` file as UTF-8 in text mode, so their CRLF (and any lone CR) become LF, and the hub's parquet copies
hold that text. A folder book is read the same way, so a folder and the hub give the same tokens. (Kept
byte for byte, the CRLF text gave a frozen-model perplexity 4.8 times the model card's.)
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from locas.data import is_dataset_folder, is_folder_source, load_hub_dataset
from locas.errors import LocasError

DEFAULT_DATASET = "emozilla/pg19"
"""A parquet copy of PG-19: `datasets` 4+ no longer runs the `deepmind/pg19` loading script."""

METADATA_FILENAME = "metadata.csv"
TEXT_NORMALIZATION = "utf-8, universal newlines (CRLF and CR become LF), as the HF PG-19 builder reads its files"
_GUTENBERG_NUMBER = re.compile(r"/ebooks/(\d+)")


@dataclass(frozen=True)
class Book:
    """One book: its id (the file stem, or the Gutenberg number of its url), title, and text as the HF PG-19
    builder yields it (TEXT_NORMALIZATION)."""

    book_id: str
    title: str | None
    text: str


def load_books(
    source: str | Path = DEFAULT_DATASET,
    split: str = "test",
    ids: Iterable[str | int] | None = None,
    max_books: int | None = None,
    metadata_csv: str | Path | None = None,
) -> list[Book]:
    """Load PG-19 books, in source order, or in the order of `ids` when given; then keep `max_books`.

    `source` is a folder of `.txt` books, a local dataset folder, or an HF dataset id. A books folder is
    read as `source/{split}/` when that subfolder exists (the official `train/ validation/ test/`
    layout), else as `source/` itself; each `{book_id}.txt` is a book, sorted by id. Titles come from
    `metadata_csv`, or from a `metadata.csv` found in the books folder or its parent (PG-19's own file:
    no header, `book_id,short_book_title,publication_date,url`). A hub id, or a folder holding a hub
    dataset's files (e.g. `data/test-00000-of-00001.parquet`), is loaded through `datasets`, the split
    alone; sweeps pass `split="validation"`, headline runs `split="test"`.
    """
    wanted = None if ids is None else [str(book_id) for book_id in ids]
    if max_books is not None and max_books < 1:
        raise LocasError(f"max_books must be at least 1, got {max_books}")
    if not is_folder_source(source):
        return _dataset_books(str(source), split, wanted, max_books)
    root = Path(source).expanduser()
    if not root.is_dir():
        raise LocasError(f"PG-19 folder not found: {root} (expected a folder of {{book_id}}.txt files)")
    folder = root / split if (root / split).is_dir() else root
    if next(folder.glob("*.txt"), None) is None and is_dataset_folder(root):
        return _dataset_books(str(root), split, wanted, max_books)
    return _folder_books(folder, wanted, max_books, metadata_csv)


def _select(available: list[str], wanted: list[str] | None, max_books: int | None, where: str) -> list[str]:
    """The ids to read, before any text is read: all or `wanted` (in its order), then the first `max_books`."""
    if wanted is not None:
        known = set(available)
        unknown = [book_id for book_id in wanted if book_id not in known]
        if unknown:
            raise LocasError(f"{where}: book {unknown[0]} not found")
    chosen = available if wanted is None else wanted
    return chosen if max_books is None else chosen[:max_books]


def _folder_books(
    folder: Path, wanted: list[str] | None, max_books: int | None, metadata_csv: str | Path | None
) -> list[Book]:
    files = {path.stem: path for path in folder.glob("*.txt")}
    if not files:
        inside = sorted(sub.name for sub in folder.iterdir() if sub.is_dir() and next(sub.glob("*.txt"), None))
        hint = f": its subfolder {inside[0]}/ holds them (--data {folder / inside[0]})" if inside else ""
        raise LocasError(f"{folder}: no .txt books (and no dataset files) in this PG-19 folder{hint}")
    titles = _read_titles(_find_metadata(folder, metadata_csv))
    books = []
    for book_id in _select(sorted(files), wanted, max_books, where=str(folder)):
        path = files[book_id]
        try:
            text = path.read_text(encoding="utf-8")  # text mode: universal newlines, as the HF builder
        except UnicodeDecodeError as error:
            reason = f"{error.reason} at byte {error.start}"
            raise LocasError(f"{path}: book {book_id} is not UTF-8 text ({reason})") from None
        books.append(_checked(Book(book_id, titles.get(book_id), text), where=str(path)))
    return books


def _find_metadata(folder: Path, given: str | Path | None) -> Path | None:
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise LocasError(f"PG-19 metadata CSV not found: {path}")
        return path
    for candidate in (folder / METADATA_FILENAME, folder.parent / METADATA_FILENAME):
        if candidate.is_file():
            return candidate
    return None


def _read_titles(path: Path | None) -> dict[str, str]:
    """book_id -> short_book_title from PG-19's headerless metadata CSV."""
    if path is None:
        return {}
    titles = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if len(row) != 4:
                raise LocasError(
                    f"{path}: line {reader.line_num}: expected 4 columns "
                    f"(book_id,short_book_title,publication_date,url), found {len(row)}"
                )
            titles[row[0]] = row[1]
    return titles


def _dataset_books(dataset_id: str, split: str, wanted: list[str] | None, max_books: int | None) -> list[Book]:
    """Rows with `short_book_title`, `url`, `text`; the id is the url's Gutenberg number, else the row index."""
    rows = load_hub_dataset(
        dataset_id, None, split, hint="check the id and the network, or pass a folder of {book_id}.txt files"
    )
    missing = {"text", "url"} - set(rows.column_names)
    if missing:
        raise LocasError(f"dataset {dataset_id!r} split {split!r}: no column {sorted(missing)[0]!r}; is this PG-19?")
    where = f"dataset {dataset_id!r} split {split!r}"
    row_ids = [_gutenberg_id(url, index) for index, url in enumerate(rows["url"])]
    position = {book_id: index for index, book_id in enumerate(row_ids)}
    books = []
    for book_id in _select(row_ids, wanted, max_books, where):
        row = rows[position[book_id]]
        book = Book(book_id, row.get("short_book_title"), row["text"])
        books.append(_checked(book, where=f"{where} row {position[book_id]}"))
    return books


def _gutenberg_id(url: str | None, index: int) -> str:
    match = _GUTENBERG_NUMBER.search(url or "")
    return match.group(1) if match else str(index)


def _checked(book: Book, where: str) -> Book:
    if not book.text or not book.text.strip():
        raise LocasError(f"{where}: book {book.book_id} is empty")
    return book


# --- the dev-set guard: tuning never looks at the test books -----------------------------------------


TEST_IDS_FILENAME = "test_split_ids.tsv"  # PG-19's test ids (index, book_id, ...), beside a books folder


def refuse_test_books(source, split: str, book_ids=(), allow_test: bool = False) -> None:
    """Sweeps tune on the dev set: refuse the test split, a folder named test, or books that a nearby
    `test_split_ids.tsv` lists as test books, unless `allow_test`."""
    if allow_test:
        return
    hint = "sweeps tune on the dev set (--split validation); pass --allow_test to sweep on test books anyway"
    if str(split).strip().lower() == "test":
        raise LocasError(f"--split test is PG-19's test split: {hint}")
    root = Path(str(source)).expanduser()
    if not root.is_dir():
        return
    folder = root / split if (root / split).is_dir() else root
    if any(p.name.lower() == "test" for p in {root.resolve(), folder.resolve()}):
        raise LocasError(f"--data {source} is a folder named test: {hint}")
    ids = {str(b) for b in book_ids}
    for listing in {folder.resolve() / TEST_IDS_FILENAME, folder.resolve().parent / TEST_IDS_FILENAME}:
        if ids and listing.is_file():
            listed = {line.split("\t")[1].strip() for line in listing.read_text(encoding="utf-8").splitlines()[1:]
                      if line.count("\t") >= 1}
            hit = sorted(ids & listed)
            if hit:
                raise LocasError(f"--data {source}: book(s) {', '.join(hit[:3])} are PG-19 test books "
                                 f"(listed in {listing}): {hint}")
