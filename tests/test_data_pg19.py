"""PG-19 books from folders (real and tiny) and from a dataset (faked, and really offline)."""

from pathlib import Path

import pytest

from locas.errors import LocasError
from locas.tasks.pg19.data import Book, load_books

PG19 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pg19"


@pytest.fixture(scope="module")
def real_books():
    if not (PG19 / "books").is_dir():
        pytest.skip(f"{PG19 / 'books'} not present")
    return PG19 / "books"


def test_real_folder_with_titles_from_the_parent_metadata(real_books):
    books = load_books(real_books)
    assert len(books) == 9
    assert [book.book_id for book in books] == sorted(book.book_id for book in books)
    first = {book.book_id: book for book in books}["10146"]
    assert first.title == "Reminiscences of Pioneer Days in St. Paul by Frank Moore"
    raw = (real_books / "10146.txt").read_bytes()
    assert b"\r\n" in raw and "\r" not in first.text  # the official files' CRLF, as the HF builder reads them
    assert first.text == raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def test_real_folder_selection_keeps_the_order_of_ids(real_books):
    books = load_books(real_books, ids=[5396, "10146", "2544"], max_books=2)
    assert [book.book_id for book in books] == ["5396", "10146"]


def _folder(tmp_path: Path, books: dict[str, str]) -> Path:
    folder = tmp_path / "books"
    folder.mkdir(exist_ok=True)
    for book_id, text in books.items():
        (folder / f"{book_id}.txt").write_text(text)
    return folder


def test_tiny_folder_titles_none_without_metadata(tmp_path):
    assert load_books(_folder(tmp_path, {"7": "seven", "3": "three"})) == [
        Book("3", None, "three"),
        Book("7", None, "seven"),
    ]


def test_metadata_given_or_in_the_folder(tmp_path):
    folder = _folder(tmp_path, {"7": "seven"})
    given = tmp_path / "titles.csv"
    given.write_text('7,"Seven, a Tale",1900,http://www.gutenberg.org/ebooks/7\n')
    assert load_books(folder, metadata_csv=given)[0].title == "Seven, a Tale"
    (folder / "metadata.csv").write_text("7,Seven,1900,http://www.gutenberg.org/ebooks/7\n")
    assert load_books(folder)[0].title == "Seven"


def test_split_subfolder_layout(tmp_path):
    for split in ("validation", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / f"{split}1.txt").write_text(split)
    (tmp_path / "metadata.csv").write_text("validation1,Val,1900,u\n")
    (book,) = load_books(tmp_path, split="validation")
    assert book == Book("validation1", "Val", "validation")
    assert load_books(tmp_path)[0].book_id == "test1"


def test_bad_folders_and_books(tmp_path):
    with pytest.raises(LocasError, match="PG-19 folder not found: .*nowhere"):
        load_books(tmp_path / "nowhere")
    folder = _folder(tmp_path, {"1": "text", "2": "  \n"})
    with pytest.raises(LocasError, match=r"2.txt: book 2 is empty"):
        load_books(folder)
    with pytest.raises(LocasError, match=r"books: book 9 not found"):
        load_books(folder, ids=["9"])
    with pytest.raises(LocasError, match="PG-19 metadata CSV not found: .*none.csv"):
        load_books(folder, ids=["1"], metadata_csv=tmp_path / "none.csv")
    (folder / "metadata.csv").write_text("1,One,1900\n")
    with pytest.raises(LocasError, match=r"metadata.csv: line 1: expected 4 columns"):
        load_books(folder, ids=["1"])


def hub_layout(root: Path, splits: dict[str, list[dict]], broken_train: bool = True) -> Path:
    """A local copy of a hub PG-19 dataset (e.g. emozilla/pg19): data/{split}-00000-of-00001.parquet with the
    builder's fields. A train split that is not parquet at all shows whether loading a split reads it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    for split, rows in splits.items():
        table = pa.table({key: [row[key] for row in rows] for key in ("short_book_title", "publication_date",
                                                                        "url", "text")})
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    if broken_train:
        (root / "data" / "train-00000-of-00001.parquet").write_bytes(b"the 28,602-book train split: never read")
    return root


def row(book_id, text, title="A Book"):
    return {"short_book_title": title, "publication_date": 1900, "url": f"http://www.gutenberg.org/ebooks/{book_id}",
            "text": text}


CRLF_BOOK = "CHAPTER I\r\n\r\nThe old ship sailed.\r\nA lone carriage return\rends here.\r\n"


def test_a_crlf_folder_book_and_the_hub_copy_give_the_same_tokens_and_rows(tmp_path, tiny_model, tiny_path):
    from transformers import AutoTokenizer

    from locas.config import AdaptConfig
    from locas.tasks.pg19.run import book_tokens, run_pg19_book

    folder = tmp_path / "official"
    folder.mkdir()
    (folder / "7.txt").write_bytes((CRLF_BOOK * 30).encode("utf-8"))
    (folder / "metadata.csv").write_text("7,A Book,1900,http://www.gutenberg.org/ebooks/7\n")
    hub_text = (CRLF_BOOK * 30).replace("\r\n", "\n").replace("\r", "\n")  # what the HF builder yields
    hub = hub_layout(tmp_path / "hub", {"validation": [row(3, "other")], "test": [row(7, hub_text)]})
    (from_folder,), (from_hub,) = load_books(folder), load_books(hub, split="test")
    assert from_folder.text == from_hub.text == hub_text and from_hub.book_id == "7"
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    assert book_tokens(tokenizer, from_folder).tolist() == book_tokens(tokenizer, from_hub).tolist()
    cfg = AdaptConfig(window_size=64, memory_width=8)

    def untimed(book):  # every figure of every row, but how long it took
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in run_pg19_book(tiny_model, tokenizer, book, cfg)]

    assert untimed(from_folder) == untimed(from_hub)


def test_a_split_loads_alone_with_a_progress_bar(tmp_path, capfd):
    hub = hub_layout(tmp_path / "hub", {"validation": [row(1, "one"), row(2, "two")], "test": [row(3, "three")]})
    assert [b.book_id for b in load_books(hub, split="validation")] == ["1", "2"]
    assert "Generating validation split" in capfd.readouterr().err
    assert [(b.book_id, b.title, b.text) for b in load_books(hub, split="test")] == [("3", "A Book", "three")]
    with pytest.raises(LocasError, match="no split 'dev'"):
        load_books(hub, split="dev")


def test_missing_dataset_offline_is_one_clear_line(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Both libraries read the variables at import, which may already have happened.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(LocasError) as error:
        load_books("nobody/no-such-pg19")
    message = str(error.value)
    assert message.startswith("cannot load dataset nobody/no-such-pg19 split 'test': ")
    assert "pass a folder" in message and "\n" not in message
