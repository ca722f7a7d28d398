"""The worker as a plain class (no Ray), then the same class as a Ray actor with a streaming generator."""
import sys

import pytest

from locas.config import ModelSpec
from locas.contract import Unit
from locas.errors import LocasError
from orchestration.worker import Worker, remote_worker_class

SPEC = ModelSpec(model="fake-model", device="cpu")


def fake_loader(spec):
    return {"name": spec.model, "spec": spec}


def echo(model, units, slots, progress):
    """Takes every unit of its group, then answers in reverse order, like a batch whose short documents end
    first (`slots` of them at once); fails on a unit whose payload says raise, once it is the first unit left."""
    units = list(units)
    for u in reversed(units):
        if u.payload.get("raise"):
            raise ValueError("bad item\nsecond line")
        yield u.unit_id, [{"kind": "item", "model": model["name"], "i": i, "batch": len(units), "slots": slots}
                          for i in range(u.payload.get("rows", 1))]


RUNNERS = {"echo": echo}


def unit(i, config="c", batch=1, **payload):
    return Unit(f"echo:{i}:r", "echo", str(i), size=10 * i, payload=payload, config_id=config, method="locas",
                batch=batch)


def test_loads_once_lazily_and_stamps_every_row():
    w = Worker(SPEC, RUNNERS, loader=fake_loader)
    assert w.load_count == 0 and w.model is None  # lazy
    out = list(w.run_units([unit(1, batch=3, rows=2), unit(2, batch=3)]))
    out += list(w.run_units([unit(3)]))
    assert w.load_count == 1
    assert [uid for uid, _ in out] == ["echo:2:r", "echo:1:r", "echo:3:r"]
    rows = dict(out)["echo:1:r"]
    assert len(rows) == 2 and rows[0]["slots"] == 3 and rows[0]["batch"] == 2
    for r in rows:
        assert (r["unit_id"], r["task"], r["config_id"], r["method"]) == ("echo:1:r", "echo", "c", "locas")
        assert r["device"] == "cpu" and r["node"] and r["model"] == "fake-model"
    assert w.model["spec"].trust_remote_code is False and w.model["spec"].device == "cpu"
    assert w.info()["device"] == "cpu"


def test_units_of_one_task_and_config_run_together_the_others_apart():
    w = Worker(SPEC, RUNNERS, loader=fake_loader)
    out = list(w.run_units([unit(1), unit(2), unit(3, config="d"), unit(4)]))
    assert [(uid, rows[0]["batch"]) for uid, rows in out] == [("echo:2:r", 2), ("echo:1:r", 2), ("echo:3:r", 1),
                                                             ("echo:4:r", 1)]


def test_a_failing_group_reruns_what_it_left_one_by_one_so_only_the_culprit_fails():
    w = Worker(SPEC, RUNNERS, loader=fake_loader)
    out = dict(w.run_units([unit(1), unit(2, **{"raise": True}), unit(3)], attempts={"echo:2:r": 2}))
    assert out["echo:3:r"][0]["batch"] == 3  # answered by the group before it failed
    assert out["echo:1:r"][0]["batch"] == 1  # rerun alone
    (err,) = out["echo:2:r"]
    assert err["kind"] == "error" and err["error"] == "ValueError: bad item second line" and "\n" not in err["error"]
    assert err["attempts"] == 2 and (err["unit_id"], err["task"], err["config_id"]) == ("echo:2:r", "echo", "c")
    assert err["device"] == "cpu" and err["item_id"] == "2"
    assert "Traceback" in err["traceback"] and "in echo" in err["traceback"]  # the whole story, for a file


def test_an_unknown_task_is_an_error_row_and_the_rest_go_on():
    w = Worker(SPEC, RUNNERS, loader=fake_loader)
    out = dict(w.run_units([unit(1), Unit("nope:4:r", "nope", "4", 1)]))
    assert out["echo:1:r"][0]["kind"] == "item"
    assert "no runner for task 'nope'" in out["nope:4:r"][0]["error"]


def test_a_load_failure_raises_out_of_run_units():
    def bad_loader(spec):
        raise OSError(f"{spec.model} not found")

    w = Worker(SPEC, RUNNERS, loader=bad_loader)
    with pytest.raises(OSError, match="not found"):
        list(w.run_units([unit(1)]))


def test_more_than_one_visible_gpu_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    w = Worker(ModelSpec(model="m", device="auto"), RUNNERS, loader=fake_loader)
    with pytest.raises(LocasError, match="sees 2 CUDA devices"):
        w.load()
    assert w.load_count == 0


def test_an_actor_with_a_gpu_but_no_cuda_refuses_to_run_on_the_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    w = Worker(ModelSpec(model="m", device="auto"), RUNNERS, loader=fake_loader, require_cuda=True)
    with pytest.raises(LocasError, match="has a GPU but runs on cpu.*--device cpu") as e:
        w.load()
    assert "\n" not in str(e.value) and w.load_count == 0


def test_the_default_loader_and_runners_run_the_tiny_checkpoint(tiny_path):
    from locas.config import AdaptConfig
    from locas.tasks import make_unit
    from locas.tasks.pg19.data import Book
    from locas.tiny import sample_text

    w = Worker(ModelSpec(model=str(tiny_path), dtype="float32", device="cpu"))
    book = Book("b", None, sample_text(200))
    ((uid, rows),) = list(w.run_units([make_unit("pg19", "b", 1, AdaptConfig(window_size=64, memory_width=8),
                                                 "run", book)]))
    assert uid == "pg19:b:run" and rows[-1]["kind"] == "book" and rows[-1]["device"] == "cpu"
    assert w.load_count == 1 and w.model.num_layers == 2


def slow_one_by_one(model, units, slots, progress):
    """Takes a unit only when the one before is answered, as a batch of one slot does."""
    import time

    for u in units:
        time.sleep(0.2)
        yield u.unit_id, [{"kind": "item", "pid": __import__("os").getpid()}]


def test_units_given_while_the_stream_runs_join_it(ray_local):
    ray = ray_local
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules
    actor = remote_worker_class(0).remote(SPEC, {"echo": slow_one_by_one}, fake_loader)
    try:
        stream = actor.run_stream.options(num_returns="streaming").remote()
        assert type(stream).__name__ == "ObjectRefGenerator"
        actor.give.remote([unit(1)])
        first = ray.get(next(stream))
        actor.give.remote([unit(2), unit(3)])  # while the stream waits for more
        actor.close.remote()
        out = [first] + [ray.get(ref) for ref in stream]
        assert [uid for uid, _ in out] == ["echo:1:r", "echo:2:r", "echo:3:r"]
        assert len({rows[0]["pid"] for _, rows in out}) == 1  # one process, one stream
        info = ray.get(actor.info.remote())
        assert info["load_count"] == 1 and info["device"] == "cpu"
        node = ray.get_runtime_context().get_node_id()
        assert out[0][1][0]["node"] == f"{ray.util.get_node_ip_address()} {node}"
    finally:
        ray.kill(actor)
