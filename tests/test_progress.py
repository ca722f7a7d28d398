"""The progress bar inside units: workers say how far their units are, through Ray, and the bar's rate and
ETA follow from it. The runner is benchmarks.bench_scheduler's, whose step latency the test sets."""
import pytest

from locas.config import ModelSpec
from locas.contract import Unit
from orchestration.progress import Progress, fraction_done


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_rate_and_eta_count_work_inside_units_from_when_it_began():
    clock = Clock()
    bar = Progress("run", "books", "tokens", lambda rows: sum(r["tokens"] for r in rows), enabled=False, clock=clock)
    units = [Unit(f"u{i}", "pg19", str(i), size=1000, payload=None) for i in range(3)]
    bar.start(units)
    clock.now += 30  # a model loads: not work
    clock.now += 10  # the first unit has run 10 s, a quarter of its windows, 250 tokens
    bar.heard(units[0], {"windows": (5, 20), "tokens": 250, "seconds": 10.0})
    rate, eta, done = bar.figures()
    assert rate == pytest.approx(25.0) and done == pytest.approx(0.25 / 3)
    assert eta == pytest.approx(110.0)  # 10 s per quarter unit: 2.75 units left
    clock.now += 30
    bar.advance(units[0], [{"tokens": 1000}])
    assert bar.figures()[:2] == (pytest.approx(25.0), pytest.approx(80.0))
    assert fraction_done({"windows": (3, 3), "questions": (1, 3), "tokens": 99, "seconds": 4.0}) == pytest.approx(4 / 6)


def test_a_run_shows_real_tokens_per_second_and_eta_inside_its_first_unit(ray_local, tmp_path):
    """Two units of 12 windows, one actor, 0.25 s a window (400 tokens/s): while the first unit runs, the
    driver hears it and the bar's rate and ETA are within 20% of the truth."""
    import benchmarks.bench_scheduler as bench
    from orchestration.policy import StepLatency
    from orchestration.scheduler import Scheduler
    from orchestration.store import RunStore
    from orchestration.worker import remote_worker_class

    latency, windows = 0.25, 12
    seen = []

    class Watched(Progress):
        def heard(self, unit, counts):
            super().heard(unit, counts)
            seen.append((unit.unit_id, counts["windows"], self.finished, *self.figures()))

    runner = bench.simulated_runner(StepLatency.parse(f"1:{latency}"), 1.0)

    def make():
        spec = ModelSpec(model="none", device="cpu")
        return remote_worker_class(0).remote(spec, {"bench": runner}, bench.fake_loader)

    store = RunStore(tmp_path / "run").open("bench", {"x": 1}, "r")
    bar = Watched("bench", "units", "tokens", lambda rows: sum(r["windows"] for r in rows) * bench.TOKENS_PER_WINDOW,
                  enabled=False)
    Scheduler(make, store, 1, progress=bar).run(bench.bench_units([windows, windows], batch=1))
    first = [s for s in seen if s[2] == 0]
    assert first and all(0 < s[1][0] < windows for s in first[:-1]), "no progress heard inside the first unit"
    truth = bench.TOKENS_PER_WINDOW / latency
    settled = [s for s in seen if s[1][0] >= 4 and (2 * windows - s[2] * windows - s[1][0]) * latency >= 1.0]
    assert settled
    for unit_id, (done, total), finished, rate, eta, _ in settled:
        left = (2 * windows - finished * windows - done) * latency
        assert rate == pytest.approx(truth, rel=0.2) and eta == pytest.approx(left, rel=0.2), (unit_id, done)


@pytest.mark.slow
def test_a_sweeps_console_is_its_bar_and_tables_unless_verbose(ray_local, tiny_path, tmp_path):
    """Tune's banners, its per-trial warnings and the actors' lines stay off the console; --verbose shows them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from locas.tiny import sample_text

    books = tmp_path / "books"
    books.mkdir()
    for i in range(2):
        (books / f"b{i}.txt").write_text(sample_text(200, seed=i))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    noise = ("Configuration for experiment", "View detailed results", "sample_from", "Checkpoint successfully created",
             "(run_trial pid=", "Loading weights")

    def console(output, *extra):
        command = [sys.executable, str(root / "orchestration" / "run_sweep.py"), "--model", str(tiny_path), "--data",
                   str(books), "--window_size", "64", "--grid", "memory_width=4,8", "--output", str(output),
                   "--tune_storage", str(output / "tune"), *extra]  # a storage: it joins the session's Ray
        done = subprocess.run(command, check=False, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    quiet = console(tmp_path / "quiet")
    assert "best: trial" in quiet and not [line for line in noise if line in quiet]
    verbose = console(tmp_path / "verbose", "--verbose")
    assert "Checkpoint successfully created" in verbose and "(run_trial pid=" in verbose
