"""The online loop (SPEC §4-6) against independent re-computations on tiny random models."""
import math
import time

import pytest
import torch
import torch.nn.functional as F
from adapt_inputs import book, cfg
from conftest import PG19_BOOKS, require

from locas.adapt import Adapter
from locas.config import AdaptConfig
from locas.documents import sliding_windows
from locas.errors import LocasError
from locas.methods import make_method
from locas.tasks.pg19.data import Book
from locas.tasks.pg19.run import book_document, run_pg19_book, run_pg19_books


def test_recorded_nll_is_pre_update_and_matches_an_independent_loop(tiny_model, tokenizer):
    c = cfg(lr=1e-2)
    doc = book_document(tokenizer, book(), c)
    rows = run_pg19_book(tiny_model, tokenizer, book(), c)
    recorded = [r["nll_sum"] for r in rows if r["kind"] == "window"]

    first = doc.windows[0]
    memory = tiny_model.memorize(doc.tokens[first.start:first.end][None], keep_top=8).requires_grad_(True)
    optimizer = torch.optim.AdamW([memory], lr=1e-2, weight_decay=0.0)
    expected = []
    for w in doc.windows:
        ids = doc.tokens[w.start:w.end][None]
        logits = tiny_model(ids, memory=memory).logits[0, :-1]
        nll = F.cross_entropy(logits, ids[0, 1:], reduction="none")[w.scored_from - w.start - 1:]
        expected.append(nll.sum().item())  # scored before this window's update
        nll.mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert len(recorded) == len(expected) > 3
    for got, want in zip(recorded, expected):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_shared_forward_gives_the_same_numbers_as_separate_scoring(tiny_model, tokenizer):
    c = cfg(lr=1e-2)
    docs = [book_document(tokenizer, book(), c)]
    shared = Adapter(tiny_model, make_method(tiny_model, c), c)
    separate = Adapter(tiny_model, make_method(tiny_model, c), c)
    assert shared.shared_forward
    separate.shared_forward = False
    a = [w.nll_sum for w in next(shared.run(docs)).windows]
    b = [w.nll_sum for w in next(separate.run(docs)).windows]
    assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.parametrize("n", [2, 5, 47, 48, 49, 95, 96, 97, 500])
@pytest.mark.parametrize("overlap", [1, 7])
def test_every_token_but_the_first_is_scored_exactly_once(n, overlap):
    scored = [t for w in sliding_windows(n, 48, overlap) for t in range(w.scored_from, w.end)]
    assert sorted(scored) == list(range(1, n))
    assert all(w.end - w.start <= 48 and w.scored_from - w.start in (1, overlap) for w in sliding_windows(n, 48, overlap))


@pytest.mark.parametrize("overlap", [0, 48, 60])
def test_overlap_outside_range_is_refused(overlap):
    with pytest.raises(LocasError, match="overlap"):
        cfg(overlap=overlap)


def test_too_short_book_is_an_error_row_and_the_batch_goes_on(tiny_model, tokenizer):
    results = dict(run_pg19_books(tiny_model, tokenizer, [book(0), Book("tiny", None, "a"), book(1)], cfg(),
                                  batch_size=3))
    (tiny,) = [rows for b, rows in results.items() if b.book_id == "tiny"]
    assert len(tiny) == 1 and tiny[0]["kind"] == "error" and "too short" in tiny[0]["error"]
    assert sorted(b.book_id for b, rows in results.items() if rows[-1]["kind"] == "book") == ["book0", "book1"]


def test_book_rows_cover_the_book(tiny_model, tokenizer):
    rows = run_pg19_book(tiny_model, tokenizer, book(words=120), cfg())
    windows, summary = rows[:-1], rows[-1]
    assert summary["kind"] == "book" and summary["scored_tokens"] == summary["tokens"] - 1
    assert sum(w["scored_tokens"] for w in windows) == summary["tokens"] - 1
    assert summary["ppl"] == pytest.approx(math.exp(sum(w["nll_sum"] for w in windows) / summary["scored_tokens"]))
    assert summary["trainable_params"] == 3 * 2 * 64 * 8


def test_none_equals_the_plain_model(tiny_model, tokenizer):
    c = cfg(method="none")
    doc = book_document(tokenizer, book(), c)
    rows = run_pg19_book(tiny_model, tokenizer, book(), c)
    with torch.no_grad():
        plain = tiny_model.model(doc.tokens[None]).logits  # the book fits in the model's context
    for row, w in zip(rows, doc.windows):
        with torch.no_grad():
            nll = tiny_model.compute_nll(doc.tokens[w.start:w.end][None])[0, w.scored_from - w.start - 1:]
        assert row["nll_sum"] == pytest.approx(nll.sum().item(), rel=1e-5)
        assert row["train_loss"] is None
    assert rows[-1]["trainable_params"] == 0 and plain.shape[1] == len(doc.tokens)


def test_batched_documents_equal_one_at_a_time(tiny_model, tokenizer):
    books = [book(i, words=80 + 70 * i) for i in range(5)]
    c = cfg(lr=1e-2)
    single = {b.book_id: rows for b, rows in run_pg19_books(tiny_model, tokenizer, books, c, batch_size=1)}
    batched = {b.book_id: rows for b, rows in run_pg19_books(tiny_model, tokenizer, books, c, batch_size=3)}
    assert single.keys() == batched.keys()
    for book_id in single:
        assert [r["nll_sum"] for r in batched[book_id]] == pytest.approx([r["nll_sum"] for r in single[book_id]],
                                                                         rel=1e-4)


def test_book_seconds_are_shares_of_the_batched_steps(tiny_model, tokenizer):
    """Accelerator time, not wall time: three books adapted together cost the steps once, not three times."""
    books = [book(i, words=200) for i in range(3)]
    started = time.perf_counter()
    results = [rows for _, rows in run_pg19_books(tiny_model, tokenizer, books, cfg(), batch_size=3)]
    wall = time.perf_counter() - started
    for rows in results:
        windows, summary = rows[:-1], rows[-1]
        assert summary["seconds"] == pytest.approx(summary["memorize_seconds"] + sum(w["seconds"] for w in windows))
    total = sum(rows[-1]["seconds"] for rows in results)
    assert 0.3 * wall < total <= wall


def test_a_tokenizer_that_adds_a_bos_starts_the_book_with_it_unscored(tiny_model, tokenizer):
    import copy

    from tokenizers.processors import TemplateProcessing

    from locas.tasks.pg19.run import adds_bos, book_tokens

    llama_style = copy.deepcopy(tokenizer)
    llama_style.bos_token = "<|endoftext|>"
    llama_style.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    assert adds_bos(llama_style) and not adds_bos(tokenizer)
    b = book(words=80)
    ids = book_tokens(llama_style, b)
    assert ids[0] == 0 and ids[1:].tolist() == book_tokens(tokenizer, b).tolist()
    rows = run_pg19_book(tiny_model, llama_style, b, cfg())
    assert rows[0]["start"] == 1 and rows[-1]["scored_tokens"] == len(ids) - 1  # the text's tokens, all scored


def test_window_rows_keep_their_nll_split_at_every_50k(tiny_model, tokenizer, monkeypatch):
    """The cut a window carries is the sum of its tokens' NLL before the cut (here every 50 positions)."""
    import locas.tasks.pg19.run as pg19_task

    monkeypatch.setattr(pg19_task, "BUCKET_WIDTH", 50)
    c = cfg(method="none")
    doc = book_document(tokenizer, book(words=150), c)
    rows = run_pg19_book(tiny_model, tokenizer, book(words=150), c)[:-1]
    straddling = [r for r in rows if r["cuts"]]
    assert len(straddling) >= 3
    for r in rows:
        end = r["start"] + r["scored_tokens"]
        assert [cut[0] for cut in r["cuts"]] == [n for n in range(50, end, 50) if r["start"] < n]
    for r in straddling:
        w = doc.windows[r["window"]]
        with torch.no_grad():  # by hand: the window's own forward, its scored tokens before the cut
            nll = tiny_model.compute_nll(doc.tokens[w.start:w.end][None])[0]
        for position, before in r["cuts"]:
            assert before == pytest.approx(nll[w.scored_from - w.start - 1:position - w.start - 1].sum().item(), rel=1e-4)


def test_windows_padded_to_the_window_size_give_the_same_numbers(tiny_model, tokenizer):
    """Eager runs pad a batch only to its longest window, compiled ones to the window size (one graph)."""
    books = [book(i, words=90 + 40 * i) for i in range(3)]
    c = cfg(lr=1e-2)
    docs = [book_document(tokenizer, b, c) for b in books]
    runs = []
    for static in (False, True):
        adapter = Adapter(tiny_model, make_method(tiny_model, c), c)
        adapter.static_shapes = static
        runs.append({r.doc.doc_id: r.nll_sum for r in adapter.run(docs, batch_size=2)})
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)


def test_memory_width_larger_than_the_mlp_is_refused(tiny_model, tokenizer):
    with pytest.raises(LocasError, match="memory_width=999"):
        run_pg19_book(tiny_model, tokenizer, book(), cfg(memory_width=999))


@pytest.mark.slow
def test_real_model_locas_beats_none_on_a_pg19_book(tinylm_path):
    from transformers import AutoTokenizer

    from locas import CausalLMWithMemory

    path = sorted(require(PG19_BOOKS).glob("*.txt"), key=lambda p: p.stat().st_size)[-1]
    real = Book(path.stem, None, path.read_text())
    model = CausalLMWithMemory.from_pretrained(tinylm_path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tinylm_path)
    ppl = {}
    for method in ("none", "locas"):
        c = AdaptConfig(method=method, loss="NTP", memory_width=64, memory_init="highest", lr=4e-3,
                        window_size=512, max_tokens=20_000)
        ppl[method] = run_pg19_book(model, tok, real, c)[-1]["ppl"]
    print(f"tinylm-pg19 on book {real.book_id}, first 20,000 tokens, 512-token windows: "
          f"none PPL {ppl['none']:.3f}, locas PPL {ppl['locas']:.3f}")
    assert ppl["locas"] < ppl["none"]


@pytest.mark.parametrize("bad", [dict(lr="4e-3"), dict(memory_width="64"), dict(window_size=2048.0),
                                 dict(lr=float("inf")), dict(lora_dropout=1.5), dict(teacher_context=-5)])
def test_config_types_and_ranges_are_checked(bad):
    with pytest.raises(LocasError):
        AdaptConfig(**bad)


def test_lora_adapter_trains_in_fp32_on_a_bf16_base(tiny_path):
    from locas import CausalLMWithMemory

    model = CausalLMWithMemory.from_pretrained(tiny_path, dtype=torch.bfloat16)
    method = make_method(model, cfg(method="lora", lora_rank=4))
    method.start(1)
    try:
        assert method.params and all(p.dtype == torch.float32 for p in method.params)
        x = torch.randint(1, 512, (1, 16))
        method.reset(0, x)
        loss = model.compute_nll(x).mean()
        loss.backward()
        method.step(torch.tensor([0]))
        assert torch.isfinite(loss) and all(p.dtype == torch.float32 for p in method.params)
    finally:
        method.finish()
    assert not any("lora" in name for name, _ in model.model.named_modules())
