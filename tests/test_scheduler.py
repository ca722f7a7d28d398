"""The scheduler on a local Ray with fake workers (a test runner registry and a fake loader, no model)."""
import dataclasses
import os
import random
import sys
import time

import pytest

from locas.config import ModelSpec
from locas.contract import Unit
from locas.errors import LocasError
from locas.run_folder import read_ledger, read_rows
from orchestration.progress import Progress
from orchestration.scheduler import Scheduler
from orchestration.store import RunStore
from orchestration.worker import remote_worker_class


def fake_loader(spec):
    if spec.model == "missing":
        raise OSError("model path missing does not exist")
    return {"name": spec.model}


def fake_one(model, unit):
    """Behaviour chosen by the payload: log the run, then maybe raise or kill the actor, else one row."""
    p = unit.payload
    with open(p["log"], "a") as f:
        f.write(unit.unit_id + "\n")
    if p.get("action") == "raise":
        raise RuntimeError("this item is broken")
    if p.get("action") == "die_always":
        os._exit(1)
    if p.get("action") == "die_once" and not os.path.exists(p["marker"]):
        open(p["marker"], "w").close()
        os._exit(1)
    time.sleep(p.get("sleep", 0.02))
    if p.get("action") == "not_json":
        return [{"kind": "item", "value": {1, 2}}]
    return [{"kind": "item", "size": unit.size, "pid": os.getpid()}]


def fake(model, units, slots, progress):
    """One unit at a time, each as soon as the one before is answered."""
    for u in units:
        yield u.unit_id, fake_one(model, u)


RUNNERS = {"fake": fake}


def make_units(tmp_path, n, special=None):
    """n units with shuffled sizes; special = {index: {payload overrides}}."""
    special = special or {}
    sizes = [10 * s + 5 for s in random.Random(n).sample(range(n), n)]  # distinct, shuffled
    units = []
    for i in range(n):
        payload = {"log": str(tmp_path / "log.txt"), "marker": str(tmp_path / f"marker-{i}"), **special.get(i, {})}
        units.append(Unit(f"fake:{i}:c", "fake", str(i), sizes[i], payload, config_id="c", method="none", run_id="c"))
    return units


def executions(tmp_path):
    log = tmp_path / "log.txt"
    return log.read_text().split() if log.exists() else []


def store_at(tmp_path):
    return RunStore(tmp_path / "run").open("fake", {"x": 1}, "c", {"CPU": 2})


@pytest.fixture
def ray(ray_local):
    """Local Ray; afterwards every actor a test made must be gone (both CPUs free again)."""
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests
    yield ray_local
    deadline = time.monotonic() + 20
    while ray_local.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray_local.available_resources().get("CPU", 0) == 2, "an actor was left holding a CPU"


def make_worker(model="fake"):
    return lambda: remote_worker_class(0).remote(ModelSpec(model=model, device="cpu"), RUNNERS, fake_loader)


def run_units(units, make, store, num_workers, slots=1, max_attempts=2, progress=False, on_rows=None):
    bar = Progress("fake", "units", "items", lambda rows: len(rows)) if progress else None
    units = [dataclasses.replace(u, batch=slots) for u in units]
    return Scheduler(make, store, num_workers, max_attempts, bar, on_rows).run(units)


def exactly_once(tmp_path, units):
    rows = read_rows(tmp_path / "run")
    assert sorted(r["unit_id"] for r in rows) == sorted(u.unit_id for u in units)
    assert set(read_ledger(tmp_path / "run")) == {u.unit_id for u in units}
    lines = (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()
    assert len(lines) == len(units)  # one ledger line per unit, never two
    return {r["unit_id"]: r for r in rows}


def test_every_unit_once_with_slots_and_progress(ray, tmp_path, capsys):
    units = make_units(tmp_path, 10)
    seen = []
    counts = run_units(units, make_worker(), store_at(tmp_path), num_workers=2, slots=2, progress=True,
                       on_rows=lambda unit, rows, status: seen.append((unit.unit_id, status)))
    assert counts["done"] == 10 and counts["failed"] == 0 and counts["skipped"] == 0
    rows = exactly_once(tmp_path, units)
    assert all(r["node"] and r["device"] == "cpu" for r in rows.values())
    assert sorted(seen) == sorted((u.unit_id, "done") for u in units)
    err = capsys.readouterr().err
    assert "10/10 units" in err and "items/s" in err and "ETA" in err


def batched_units(windows, batch):
    from benchmarks.bench_scheduler import bench_units

    return bench_units(windows, batch)


def run_batched(tmp_path, windows, actors, slots, latency=None):
    """Units of `windows` window steps each, through the real scheduler and workers, with a runner that
    sleeps a step's latency (benchmarks.bench_scheduler); returns each unit's row."""
    import benchmarks.bench_scheduler as bench
    from orchestration.policy import StepLatency

    table = StepLatency.parse(latency or "1:0.02,8:0.02")
    runner = bench.simulated_runner(table, 1.0)
    store = RunStore(tmp_path / "run").open("bench", {"x": 1}, "r")
    make = lambda: remote_worker_class(0).remote(ModelSpec(model="none", device="cpu"), {"bench": runner},  # noqa: E731
                                                 bench.fake_loader)
    Scheduler(make, store, actors, latency=StepLatency.parse(latency) if latency else None).run(
        batched_units(windows, slots))
    return {r["item_id"] if "item_id" in r else r["unit_id"].split(":")[1]: r for r in read_rows(tmp_path / "run")}


def test_a_freed_slot_takes_the_next_unit_at_once(ray, tmp_path):
    import benchmarks.bench_scheduler as bench

    ray.cloudpickle.register_pickle_by_value(bench)
    rows = run_batched(tmp_path, [12, 3, 3, 3], actors=1, slots=2)
    # 12 and the first 3 start together; each later 3 joins the moment the one before it ends, while the long
    # unit still runs: no waiting for the whole batch (as refilling only after a whole call would)
    assert rows["0"]["joined_step"] == 0 and rows["0"]["ended_step"] == 12
    assert sorted((r["joined_step"], r["ended_step"]) for k, r in rows.items() if k != "0") == [(0, 3), (3, 6), (6, 9)]


def test_the_longest_unit_runs_alone_while_short_ones_fill_a_batch(ray, tmp_path):
    import benchmarks.bench_scheduler as bench

    ray.cloudpickle.register_pickle_by_value(bench)
    # a batch of 8 costs 3.5x one step: eight short units together are cheap, but the long one alone is the
    # critical path (8 s: longer than the second actor takes to start); deadline admission keeps it alone on
    # the first actor and batches the short ones on the second
    rows = run_batched(tmp_path, [40] + [6] * 7, actors=2, slots=8, latency="1:0.2,8:0.7")
    long_pid = rows["0"]["pid"]
    assert rows["0"]["joined_batch"] == 1 and all(r["pid"] != long_pid for k, r in rows.items() if k != "0")
    assert max(r["joined_batch"] for k, r in rows.items() if k != "0") >= 4


def test_longest_first(ray, tmp_path):
    units = make_units(tmp_path, 6)
    run_units(units, make_worker(), store_at(tmp_path), num_workers=1, progress=False)
    sizes = {u.unit_id: u.size for u in units}
    order = executions(tmp_path)
    assert [sizes[uid] for uid in order] == sorted(sizes.values(), reverse=True)


def test_a_unit_that_raises_becomes_an_error_row(ray, tmp_path):
    units = make_units(tmp_path, 5, {2: {"action": "raise"}, 3: {"action": "not_json"}})
    counts = run_units(units, make_worker(), store_at(tmp_path), num_workers=2, progress=False)
    assert counts["done"] == 3 and counts["failed"] == 2 and counts["worker_deaths"] == 0
    rows = exactly_once(tmp_path, units)
    err = rows["fake:2:c"]
    assert err["kind"] == "error" and err["error"] == "RuntimeError: this item is broken" and err["attempts"] == 1
    assert read_ledger(tmp_path / "run")["fake:2:c"]["status"] == "failed"
    bad = rows["fake:3:c"]  # rows the store refuses (a set is not JSON) also become one error row
    assert bad["kind"] == "error" and "not JSON" in bad["error"] and bad["device"] == "cpu"


def test_an_actor_killed_mid_run_is_replaced_and_its_unit_requeued(ray, tmp_path):
    units = make_units(tmp_path, 6, {1: {"action": "die_once"}})
    counts = run_units(units, make_worker(), store_at(tmp_path), num_workers=2, slots=2, progress=False)
    assert (tmp_path / "marker-1").exists()  # it did die once
    assert counts["done"] == 6 and counts["failed"] == 0
    assert counts["worker_deaths"] == 1 and counts["requeued"] >= 1
    rows = exactly_once(tmp_path, units)
    assert rows["fake:1:c"]["kind"] == "item"
    assert executions(tmp_path).count("fake:1:c") == 2


def test_a_unit_that_always_kills_its_actor_fails_after_two_attempts(ray, tmp_path):
    units = make_units(tmp_path, 4, {0: {"action": "die_always"}})
    counts = run_units(units, make_worker(), store_at(tmp_path), num_workers=2, max_attempts=2, progress=False)
    assert counts["done"] == 3 and counts["failed"] == 1 and counts["worker_deaths"] == 2
    rows = exactly_once(tmp_path, units)
    err = rows["fake:0:c"]
    assert err["kind"] == "error" and err["attempts"] == 2 and "worker died" in err["error"]
    assert "\n" not in err["error"]
    assert executions(tmp_path).count("fake:0:c") == 2


def test_resume_skips_finished_units(ray, tmp_path):
    units = make_units(tmp_path, 6)
    store = store_at(tmp_path)
    for u in units[:4]:
        store.append(u.unit_id, [{"kind": "item", "size": u.size, "earlier": True}])
    counts = run_units(units, make_worker(), store_at(tmp_path), num_workers=2, progress=False)
    assert counts["skipped"] == 4 and counts["done"] == 2
    assert sorted(executions(tmp_path)) == sorted(u.unit_id for u in units[4:])
    rows = exactly_once(tmp_path, units)
    assert all(rows[u.unit_id].get("earlier") for u in units[:4])
    # everything finished: a rerun starts no actor at all
    assert run_units(units, make_worker(), store_at(tmp_path), num_workers=2, progress=False)["skipped"] == 6


def test_a_worker_that_cannot_load_stops_the_run_and_writes_nothing(ray, tmp_path):
    units = make_units(tmp_path, 3)
    with pytest.raises(LocasError, match="model path missing does not exist") as e:
        run_units(units, make_worker("missing"), store_at(tmp_path), num_workers=2, progress=False)
    assert "\n" not in str(e.value)
    assert read_ledger(tmp_path / "run") == {}


def test_duplicate_unit_ids_are_refused(tmp_path):
    u = Unit("fake:0:c", "fake", "0", 1)
    with pytest.raises(LocasError, match="listed twice"):
        run_units([u, u], make_worker(), store_at(tmp_path), num_workers=1)
    with pytest.raises(LocasError, match="size"):
        Unit("fake:1:c", "fake", "1", -1)
