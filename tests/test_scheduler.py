"""The scheduler on a local Ray with fake workers (a test runner registry and a fake loader, no model)."""
import os
import random
import sys
import time

import pytest

from analysis.rows import read_ledger, read_rows
from locas.config import ModelSpec
from locas.errors import LocasError
from orchestration.progress import Progress
from orchestration.scheduler import Scheduler
from orchestration.store import RunStore
from orchestration.units import Unit
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
    """Units of one call together: each row records the batch it ran in."""
    for u in units:
        yield u.unit_id, [{**r, "batch": len(units)} for r in fake_one(model, u)]


RUNNERS = {"fake": fake}


def make_units(tmp_path, n, special=None):
    """n units with shuffled sizes; special = {index: {payload overrides}}."""
    special = special or {}
    sizes = [10 * s + 5 for s in random.Random(n).sample(range(n), n)]  # distinct, shuffled
    units = []
    for i in range(n):
        payload = {"log": str(tmp_path / "log.txt"), "marker": str(tmp_path / f"marker-{i}"), **special.get(i, {})}
        units.append(Unit(f"fake:{i}:c", "fake", str(i), sizes[i], payload, config_id="c", method="none"))
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
    return Scheduler(make, store, num_workers, slots, max_attempts, bar, on_rows).run(units)


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
    assert len({r["pid"] for r in rows.values()}) == 2  # both actors worked
    assert all(r["node"] and r["device"] == "cpu" for r in rows.values())
    assert sorted(seen) == sorted((u.unit_id, "done") for u in units)
    err = capsys.readouterr().err
    assert "10/10 units" in err and "items/s" in err and "ETA" in err


def test_slots_give_whole_batches(ray, tmp_path):
    units = make_units(tmp_path, 5)
    run_units(units, make_worker(), store_at(tmp_path), num_workers=1, slots=2, progress=False)
    rows = exactly_once(tmp_path, units)
    by_size = sorted(rows.values(), key=lambda r: -r["size"])
    assert [r.get("batch", 1) for r in by_size] == [2, 2, 2, 2, 1]  # longest two together, and so on


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
