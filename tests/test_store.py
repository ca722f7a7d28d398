"""The run store: manifest, append-only rows + ledger, resume, torn lines, no duplicates, no pickle."""
import json
import math
import pickle

import pytest

from locas.errors import LocasError
from locas.run_folder import StoreError, read_ledger, read_manifest, read_rows
from orchestration.store import RunStore

CONFIG = {"method": "locas", "lr": 4e-3, "window_size": 1024}


def rows_for(uid, n=2):
    return [{"kind": "window", "task": "pg19", "unit_id": uid, "window": i, "nll_sum": 1.5 * i} for i in range(n)]


def opened(path, run_id="c1", config=CONFIG, **kwargs):
    return RunStore(path).open("pg19", config, run_id, {"CPU": 2}, **kwargs)


def test_manifest_contents(tmp_path):
    opened(tmp_path / "run")
    m = read_manifest(tmp_path / "run")
    assert m["task"] == "pg19" and m["config"] == CONFIG and m["run_id"] == "c1"
    assert m["resources"] == {"CPU": 2} and m["created"]
    assert isinstance(m["code_version"], str) and m["code_version"]
    assert set(m["packages"]) >= {"torch", "transformers", "peft", "ray", "datasets", "pandas"}
    assert m["packages"]["ray"] == __import__("ray").__version__


def test_append_and_read_back(tmp_path):
    store = opened(tmp_path)
    store.append("pg19:a:c1", rows_for("pg19:a:c1", 3))
    store.append("pg19:b:c1", [{"kind": "error", "error": "ValueError: x", "attempts": 1}], status="failed")
    assert store.finished() == {"pg19:a:c1", "pg19:b:c1"}
    rows = read_rows(tmp_path)
    assert [r["unit_id"] for r in rows] == ["pg19:a:c1"] * 3 + ["pg19:b:c1"]
    assert list(store.rows()) == rows
    ledger = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert ledger == [{"unit_id": "pg19:a:c1", "status": "done", "rows": 3},
                      {"unit_id": "pg19:b:c1", "status": "failed", "rows": 1}]
    with pytest.raises(LocasError, match="already in the ledger"):
        store.append("pg19:a:c1", rows_for("pg19:a:c1"))
    with pytest.raises(LocasError, match="status"):
        store.append("pg19:c:c1", [], status="maybe")


def test_resume_same_config_keeps_rows(tmp_path):
    opened(tmp_path).append("u1", rows_for("u1"))
    store = opened(tmp_path)  # same config: resume
    assert store.finished() == {"u1"}
    store.append("u2", rows_for("u2"))
    assert [r["unit_id"] for r in read_rows(tmp_path)] == ["u1", "u1", "u2", "u2"]
    assert len(read_manifest(tmp_path)["resumes"]) == 1


def test_refuses_a_different_config_and_names_what_differs(tmp_path):
    opened(tmp_path, "c1")
    with pytest.raises(LocasError, match=r"holds another run \(lr: 0.004 -> 0.01; window_size: 1024 -> 512\)") as e:
        opened(tmp_path, "c2", {**CONFIG, "lr": 1e-2, "window_size": 512})
    assert "\n" not in str(e.value) and "another --output" in str(e.value)
    with pytest.raises(LocasError, match="locomo"):
        RunStore(tmp_path).open("locomo", CONFIG, "c1", {})


def test_refuses_rows_without_manifest(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"unit_id": "u"}\n')
    with pytest.raises(LocasError, match="no manifest.json"):
        opened(tmp_path)


def test_torn_last_lines_are_tolerated_and_cut_on_resume(tmp_path):
    store = opened(tmp_path)
    store.append("u1", rows_for("u1"))
    with open(tmp_path / "rows.jsonl", "ab") as f:
        f.write(b'{"kind": "window", "unit_id": "u2", "win')  # crash mid-row
    with open(tmp_path / "ledger.jsonl", "ab") as f:
        f.write(b'{"unit_id": "u2", "sta')  # and mid-ledger
    assert [r["unit_id"] for r in read_rows(tmp_path)] == ["u1", "u1"]
    store = opened(tmp_path)
    assert store.finished() == {"u1"}
    store.append("u2", rows_for("u2", 1))  # starts on a fresh line
    assert [r["unit_id"] for r in read_rows(tmp_path)] == ["u1", "u1", "u2"]
    for name in ("rows.jsonl", "ledger.jsonl"):
        for line in (tmp_path / name).read_text().splitlines():
            json.loads(line)


def test_crash_between_rows_and_ledger_gives_no_duplicates(tmp_path):
    store = opened(tmp_path)
    store.append("u1", rows_for("u1"))
    with open(tmp_path / "rows.jsonl", "a") as f:  # u2's rows were written, its ledger line was not
        for r in rows_for("u2", 3):
            f.write(json.dumps({**r, "window": 100 + r["window"]}) + "\n")
    assert [r["unit_id"] for r in read_rows(tmp_path)] == ["u1", "u1"]  # unledgered rows are dropped
    store = opened(tmp_path)
    assert "u2" not in store.finished()
    store.append("u2", rows_for("u2", 2))  # the rerun
    rows = [r for r in read_rows(tmp_path) if r["unit_id"] == "u2"]
    assert [r["window"] for r in rows] == [0, 1]  # only the rerun's rows, once


def test_non_finite_becomes_null_and_non_json_is_refused(tmp_path):
    import torch

    store = opened(tmp_path)
    store.append("u1", [{"kind": "book", "ppl": math.inf, "nll_sum": math.nan, "n": torch.tensor(3),
                         "pair": (1, 2)}])
    (row,) = read_rows(tmp_path)
    assert row["ppl"] is None and row["nll_sum"] is None and row["n"] == 3 and row["pair"] == [1, 2]
    assert "NaN" not in (tmp_path / "rows.jsonl").read_text()
    with pytest.raises(LocasError, match="not JSON"):
        store.append("u2", [{"kind": "book", "blob": object()}])
    assert store.finished() == {"u1"}  # nothing written for the refused unit
    assert [r["unit_id"] for r in read_rows(tmp_path)] == ["u1"]
    store.write_summary({"ppl": math.nan, "tokens": 10})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"ppl": None, "tokens": 10}


class _Boom:
    """Unpickling this runs code: the store must never do it."""

    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['LOCAS_PICKLE_MARKER'], 'w').write('pwned')",))


def test_pickle_bytes_are_refused_never_unpickled(tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"
    monkeypatch.setenv("LOCAS_PICKLE_MARKER", str(marker))

    def no_unpickling(*a, **k):
        raise AssertionError("the store tried to unpickle")

    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    run = tmp_path / "run"
    opened(run)
    payload = pickle.dumps([_Boom(), {"unit_id": "u1"}], protocol=0)  # protocol 0 has newlines
    assert b"\n" in payload
    (run / "rows.jsonl").write_bytes(payload)
    (run / "ledger.jsonl").write_text('{"unit_id": "u1", "status": "done", "rows": 1}\n')
    with pytest.raises(StoreError, match="not a JSON object"):
        read_rows(run)
    (run / "rows.jsonl").write_bytes(pickle.dumps(_Boom(), protocol=5).replace(b"\n", b""))
    with pytest.raises(StoreError, match="damaged"):  # a torn line is skipped: u1's ledgered row is missing
        read_rows(run)
    (run / "ledger.jsonl").write_bytes(payload)
    with pytest.raises(StoreError):
        opened(run)
    (run / "manifest.json").write_bytes(pickle.dumps({"run_id": "c1"}))
    with pytest.raises(StoreError, match="not valid JSON"):
        opened(run)
    assert not marker.exists()


def test_retry_failed_reruns_failed_units_and_supersedes_their_rows(tmp_path):
    store = opened(tmp_path)
    store.append("u1", rows_for("u1"))
    store.append("u2", [{"kind": "error", "error": "CUDA out of memory", "attempts": 1}], status="failed")
    assert opened(tmp_path).finished() == {"u1", "u2"}  # a plain rerun skips the failed unit too
    store = opened(tmp_path, retry_failed=True)
    assert store.finished() == {"u1"}
    store.append("u2", rows_for("u2", 3))
    assert [r.get("window") for r in read_rows(tmp_path) if r["unit_id"] == "u2"] == [0, 1, 2]
    assert read_ledger(tmp_path)["u2"]["status"] == "done"
    with pytest.raises(LocasError, match="already in the ledger"):
        store.append("u2", rows_for("u2"))


def test_a_failed_units_traceback_goes_to_a_file_and_its_row_keeps_one_line(tmp_path):
    store = opened(tmp_path)
    trace = "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: CUDA out of memory\n"
    store.append("pg19:book/1:c1", [{"kind": "error", "error": "RuntimeError: CUDA out of memory", "traceback": trace}],
                 status="failed")
    (row,) = read_rows(tmp_path)
    assert row["traceback"] == "tracebacks/pg19_book_1_c1.txt" and "\n" not in row["error"]
    assert (tmp_path / row["traceback"]).read_text() == trace
