"""Inputs the loop's tests share: a tiny book of generated text and a config with 48-token windows."""
from locas.config import AdaptConfig
from locas.tasks.pg19.data import Book
from locas.tiny import sample_text


def book(i=0, words=300):
    return Book(f"book{i}", None, sample_text(words, seed=i))


def cfg(**kw):
    return AdaptConfig(**{"window_size": 48, "memory_width": 8, **kw})
