"""Expansion on the shipped tiny model (tinylm-pg19, a real PG-19 book, CPU, small limits): the output at each
expansion, the widths recorded, the export to a plain checkpoint, and a resumed run equal to one run through."""
import json

import pytest
import torch
from conftest import PG19_BOOKS, require
from test_expansion import CheckedExpansion

from locas import CausalLMWithMemory
from locas.adapt import Adapter, adapted
from locas.config import AdaptConfig
from locas.run_folder import read_rows
from locas.tasks.pg19.data import load_books
from locas.tasks.pg19.run import book_document

SETTINGS = {"window_size": 256, "memory_width": 16, "expand_every": "512", "expand_width": 8, "max_tokens": 1536,
            "lr": 1e-2}


@pytest.fixture(scope="module")
def tinylm(tinylm_path):
    from transformers import AutoTokenizer

    model = CausalLMWithMemory.from_pretrained(tinylm_path, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tinylm_path)


@pytest.fixture(scope="module")
def book():
    return load_books(str(require(PG19_BOOKS)), ids=["31974"])[0]


@pytest.mark.slow
def test_the_shipped_model_keeps_its_output_at_each_expansion(tinylm, book):
    model, tokenizer = tinylm
    cfg = AdaptConfig(**SETTINGS)
    doc = book_document(tokenizer, book, cfg)
    method = CheckedExpansion(model, cfg)
    method.checks = []
    result = next(Adapter(model, method, cfg).run([doc]))
    assert len(method.checks) == 2  # windows start at 0, 255, 510, 765, 1020, 1275, 1530: past 512, past 1024
    for _, _, _, change, trained in method.checks:
        assert change <= 1e-4 and trained > 1e-3  # float32 logits of size ~10: sums in another order
    assert result.widths == [16 + 8 * (w.start // 512) for w in doc.windows] == [16, 16, 16, 24, 24, 32, 32]


@pytest.mark.slow
def test_an_expanded_memory_exports_to_a_checkpoint_stock_transformers_scores_the_same(tinylm, book, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = tinylm
    cfg = AdaptConfig(**SETTINGS)
    doc = book_document(tokenizer, book, cfg)
    ids = doc.tokens[:200].unsqueeze(0)
    with adapted(model, doc, cfg) as (result, method):
        assert result.widths[-1] == 32
        with_memory = model(ids).logits
        method.export(result.slot).save_pretrained(tmp_path / "dense")
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=torch.float32).eval()
    assert stock.config.intermediate_size == model.intermediate_size + 32
    with torch.no_grad():
        dense, base = stock(ids).logits, model(ids).logits
    assert float((with_memory - base).abs().max()) > 1e-2  # the memory changes the output, and the export has it
    torch.testing.assert_close(dense, with_memory, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_resumed_expanding_run_equals_one_run_through(ray_local, tinylm_path, tmp_path, capsys):
    from orchestration import run_pg19

    def run(output, book_ids):
        flags = [f"--{k}={v}" for k, v in SETTINGS.items()]
        argv = ["--model", str(tinylm_path), "--data", str(PG19_BOOKS), "--book_ids", book_ids, "--dtype",
                "float32", "--output", str(output), "--no_progress", *flags]
        assert run_pg19.main(argv) == 0

    run(tmp_path / "through", "31974,12204")
    run(tmp_path / "resumed", "31974")
    run(tmp_path / "resumed", "31974,12204")  # the same run, extended: 31974 is not run again
    assert "1 already finished" in capsys.readouterr().out

    def rows(output):
        kept = ("book_id", "window", "nll_sum", "train_loss", "memory_width", "final_width", "trainable_params")
        return sorted((tuple(r.get(k) for k in kept) for r in read_rows(output) if r["kind"] in ("window", "book")),
                      key=str)

    assert rows(tmp_path / "through") == rows(tmp_path / "resumed")
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["final_width"] == 32 and summary["trainable_params"] == 3 * 8 * 256 * 32


@pytest.mark.slow
def test_a_locomo_run_grows_per_session_from_the_command_line(ray_local, tiny_path, tmp_path):
    from locas.tasks.locomo.demo import sample_conversation
    from orchestration import run_locomo

    data = tmp_path / "locomo.json"
    data.write_text(json.dumps([sample_conversation("c0", seed=0, sessions=4)]))
    out = tmp_path / "locomo"
    argv = ["--model", str(tiny_path), "--data", str(data), "--output", str(out), "--dtype", "float32",
            "--memory_width", "8", "--window_size", "512", "--expand_every", "session", "--expand_width", "4",
            "--answer_context", "none", "--max_questions", "2", "--no_progress"]
    assert run_locomo.main(argv) == 0
    conversation = next(r for r in read_rows(out) if r["kind"] == "conversation")
    assert conversation["widths"] == [8, 12, 16, 20] and conversation["final_width"] == 20
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_width"] == 20 and summary["trainable_params"] == 3 * 2 * 64 * 20
