"""The worker as a plain class (no Ray), then the same class as a Ray actor with a streaming generator."""
import sys

import pytest

from locas.errors import LocasError
from orchestration.scheduler import Unit
from orchestration.worker import Worker, remote_worker_class

SPEC = {"model": "fake-model", "device": "cpu"}


def fake_loader(spec):
    return {"name": spec["model"], "spec": dict(spec)}


def echo(model, unit):
    if unit.payload.get("raise"):
        raise ValueError("bad item\nsecond line")
    return [{"kind": "item", "config_id": "c", "method": "none", "model": model["name"], "i": i}
            for i in range(unit.payload.get("rows", 1))]


RUNNERS = {"echo": echo}


def unit(i, **payload):
    return Unit(f"echo:{i}:c", "echo", str(i), size=10 * i, payload=payload)


def test_loads_once_lazily_and_tags_rows():
    w = Worker(SPEC, RUNNERS, loader=fake_loader)
    assert w.load_count == 0 and w.model is None  # lazy
    out = list(w.run_units([unit(1, rows=2), unit(2)]))
    out += list(w.run_units([unit(3)]))
    assert w.load_count == 1
    assert [uid for uid, _ in out] == ["echo:1:c", "echo:2:c", "echo:3:c"]
    rows = out[0][1]
    assert len(rows) == 2
    for r in rows:
        assert r["unit_id"] == "echo:1:c" and r["task"] == "echo" and r["device"] == "cpu" and r["node"]
        assert r["model"] == "fake-model"
    assert w.model["spec"]["trust_remote_code"] is False  # off unless asked
    assert w.info()["device"] == "cpu"


def test_a_unit_that_raises_becomes_one_error_row_and_the_rest_go_on():
    w = Worker(SPEC, RUNNERS, loader=fake_loader)
    out = dict(w.run_units([unit(1), unit(2, **{"raise": True}), unit(3), Unit("nope:4:c", "nope", "4", 1)],
                           attempts={"echo:2:c": 2}))
    (err,) = out["echo:2:c"]
    assert err["kind"] == "error" and err["error"] == "ValueError: bad item second line" and "\n" not in err["error"]
    assert err["attempts"] == 2 and err["unit_id"] == "echo:2:c" and err["task"] == "echo"
    assert err["config_id"] == "c" and err["device"] == "cpu"
    assert out["echo:1:c"][0]["kind"] == out["echo:3:c"][0]["kind"] == "item"
    assert "no runner for task 'nope'" in out["nope:4:c"][0]["error"]


def test_a_load_failure_raises_out_of_run_units():
    def bad_loader(spec):
        raise OSError(f"{spec['model']} not found")

    w = Worker(SPEC, RUNNERS, loader=bad_loader)
    with pytest.raises(OSError, match="not found"):
        list(w.run_units([unit(1)]))


def test_model_spec_needs_a_model_and_passes_extra_keys_to_the_loader():
    with pytest.raises(LocasError, match="model"):
        Worker({"dtype": "float32"}, RUNNERS)
    w = Worker({**SPEC, "attn_implementation": "sdpa"}, RUNNERS, loader=fake_loader)
    assert w.load()["spec"]["attn_implementation"] == "sdpa" and w.model["spec"]["dtype"] == "float32"


def batch_echo(model, units):
    """Answers in reverse order, like a batch whose short documents end first; fails on a 'raise' unit."""
    if any(u.payload.get("raise") for u in units[1:]):
        yield units[0].unit_id, [{"kind": "item", "batch": len(units)}]
        raise ValueError("one document of the batch is broken")
    for u in reversed(units):
        yield u.unit_id, [{"kind": "item", "batch": len(units)}]


def test_batch_runner_takes_consecutive_units_of_its_task():
    w = Worker(SPEC, RUNNERS, loader=fake_loader, batch_runners={"echo": batch_echo})
    other = Unit("solo:9:c", "solo", "9", 1)
    out = list(w.run_units([unit(1), unit(2), unit(3), other, unit(4)]))
    assert [uid for uid, _ in out] == ["echo:3:c", "echo:2:c", "echo:1:c", "solo:9:c", "echo:4:c"]
    assert [rows[0].get("batch") for _, rows in out] == [3, 3, 3, None, None]  # a lone unit runs alone
    assert out[0][1][0]["unit_id"] == "echo:3:c" and out[0][1][0]["device"] == "cpu"


def test_a_failing_batch_reruns_what_it_left_one_by_one():
    w = Worker(SPEC, RUNNERS, loader=fake_loader, batch_runners={"echo": batch_echo})
    out = dict(w.run_units([unit(1), unit(2, **{"raise": True}), unit(3)]))
    assert out["echo:1:c"][0]["batch"] == 3  # answered by the batch before it failed
    assert out["echo:2:c"][0]["kind"] == "error" and "bad item" in out["echo:2:c"][0]["error"]
    assert out["echo:3:c"][0]["kind"] == "item" and "batch" not in out["echo:3:c"][0]  # rerun alone
    only_batch = Worker(SPEC, {}, loader=fake_loader, batch_runners={"echo": batch_echo})
    out = dict(only_batch.run_units([unit(1), unit(2, **{"raise": True}), unit(3)]))
    assert out["echo:1:c"][0]["kind"] == "item"
    assert out["echo:2:c"][0]["error"] == out["echo:3:c"][0]["error"] == "ValueError: one document of the batch is broken"


def test_more_than_one_visible_gpu_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    w = Worker({"model": "m", "device": "auto"}, RUNNERS, loader=fake_loader)
    with pytest.raises(LocasError, match="sees 2 CUDA devices"):
        w.load()
    assert w.load_count == 0


def test_default_loader_loads_the_tiny_checkpoint(tiny_path):
    def params(model, unit):
        return [{"kind": "info", "layers": model.num_layers}]

    w = Worker({"model": str(tiny_path), "device": "cpu"}, {"info": params})
    ((uid, rows),) = list(w.run_units([Unit("info:x:c", "info", "x", 1)]))
    assert rows[0]["layers"] == 2 and rows[0]["device"] == "cpu" and w.load_count == 1


def test_streaming_generator_on_the_remote_class(ray_local):
    ray = ray_local
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules
    actor = remote_worker_class(0).remote(SPEC, RUNNERS, fake_loader)
    try:
        gen = actor.run_units.options(num_returns="streaming").remote([unit(1), unit(2, rows=3)])
        assert type(gen).__name__ == "ObjectRefGenerator"
        out = [ray.get(ref) for ref in gen]
        assert [uid for uid, _ in out] == ["echo:1:c", "echo:2:c"] and len(out[1][1]) == 3
        info = ray.get(actor.info.remote())
        assert info["load_count"] == 1 and info["device"] == "cpu"
        assert out[0][1][0]["node"] == ray.util.get_node_ip_address()
    finally:
        ray.kill(actor)
