"""PG-19 books from folders (real and tiny) and from a dataset (faked, and really offline)."""

from pathlib import Path

import pytest

from locas.data.pg19 import Book, load_books
from locas.errors import LocasError

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
    assert first.text.encode("utf-8") == (real_books / "10146.txt").read_bytes()  # CRLF kept


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


def test_dataset_rows_become_books(monkeypatch):
    import datasets

    rows = datasets.Dataset.from_dict(
        {
            "short_book_title": ["Alpha", "Beta", "Gamma"],
            "publication_date": [1900, 1901, 1902],
            "url": ["http://www.gutenberg.org/ebooks/101", "", "http://www.gutenberg.org/ebooks/303"],
            "text": ["a", "b", "c"],
        }
    )
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_books(split="validation") == [
        Book("101", "Alpha", "a"),  # the Gutenberg number of the url
        Book("1", "Beta", "b"),  # no url: the row index
        Book("303", "Gamma", "c"),
    ]
    assert calls == [("emozilla/pg19", "validation")]
    assert load_books("someone/pg19", ids=["303", "1"]) == [Book("303", "Gamma", "c"), Book("1", "Beta", "b")]
    with pytest.raises(LocasError, match="dataset 'someone/pg19' split 'test': book 9 not found"):
        load_books("someone/pg19", ids=["9"])


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
