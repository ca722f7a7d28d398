"""Strict input: whole flag names only (command line and study files), a folder holding another run refused
before Ray starts, help texts and hints that say the right thing, and a token-auth cluster that refuses the
driver's token in one line."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import wait_for

from locas.errors import LocasError
from orchestration import run_locomo, run_pg19

ROOT = Path(__file__).resolve().parents[1]


def test_an_abbreviated_flag_is_refused_on_the_command_line_and_in_a_study(tmp_path, capsys):
    from orchestration.study import plan_study

    with pytest.raises(SystemExit) as exit_info:
        run_pg19.main(["--max_book", "3", "--output", "x"])  # not taken for --max_books
    assert exit_info.value.code == 2 and "unrecognized arguments: --max_book 3" in capsys.readouterr().err
    study = tmp_path / "study.yaml"
    study.write_text("runs:\n  a: {task: pg19, method: none, max_book: 3}\n")
    with pytest.raises(LocasError, match="run a: unrecognized arguments: --max_book 3"):
        plan_study(study, tmp_path / "out", check_models=False)


def test_a_folder_holding_another_run_is_refused_before_ray_starts(tiny_path, tmp_path, monkeypatch, capsys):
    from locas.tiny import sample_text
    from orchestration import cluster
    from orchestration.store import RunStore

    books = tmp_path / "books"
    books.mkdir()
    (books / "b.txt").write_text(sample_text(200, seed=1))
    RunStore(tmp_path / "run").open("pg19", {"other": 1}, "another")
    monkeypatch.setattr(cluster, "start_ray", lambda *a, **k: pytest.fail("Ray started before the folder's check"))
    argv = ["--model", str(tiny_path), "--data", str(books), "--output", str(tmp_path / "run"), "--no_progress"]
    assert run_pg19.main(argv) == 2
    assert "holds another run" in capsys.readouterr().err


def test_help_says_each_default_once_and_the_right_batch(capsys):
    def help_of(main):
        with pytest.raises(SystemExit):
            main(["--help"])
        return " ".join(capsys.readouterr().out.split())

    pg19, locomo = help_of(run_pg19.main), help_of(run_locomo.main)
    assert "(default: None)" not in pg19 + locomo and "(default: all) (default" not in pg19
    assert "unset: float32 on CPU actors" in pg19 and "PG-19 books" not in locomo
    assert "conversations at once per actor" in locomo


def test_a_pg19_folder_with_its_books_in_a_subfolder_is_pointed_at_it(tmp_path):
    from locas.tasks.pg19.data import load_books

    (tmp_path / "pg19" / "books").mkdir(parents=True)
    (tmp_path / "pg19" / "books" / "1.txt").write_text("a book")
    with pytest.raises(LocasError, match=f"subfolder books/ holds them \\(--data {tmp_path / 'pg19' / 'books'}\\)"):
        load_books(tmp_path / "pg19")


@pytest.fixture
def token_head():
    """A token-auth Ray head of its own (its own temp dir and address file, a token of its own), stopped by
    the pids of its processes; no other driver joins it."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="the-cluster-token")
    subprocess.run(["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--temp-dir",
                    str(temp), "--num-cpus", "0", "--include-dashboard", "false", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)

    def pids():
        out = subprocess.run(["ps", "-eww", "-o", "pid,args"], check=True, capture_output=True,
                             text=True).stdout.splitlines()
        return [int(line.split()[0]) for line in out[1:] if str(temp) in line]

    try:
        yield f"127.0.0.1:{port}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if not pids():
                break
            time.sleep(5)
        wait_for(lambda: not pids(), 20, "the token head's processes to end")
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_cluster_that_refuses_the_drivers_token_is_one_line_naming_the_way_in(token_head):
    script = "from orchestration.cli import cli_main\nfrom orchestration.cluster import start_ray\n" \
             "raise SystemExit(cli_main(lambda argv: start_ray())([]))"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base.update(RAY_ADDRESS=token_head, PYTHONPATH=str(ROOT))
    for extra, says in (({}, ("requires token authentication: set RAY_AUTH_MODE=token in this shell, with its "
                              "token in ~/.ray/auth_token (or RAY_AUTH_TOKEN)")),
                        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong"}, "refuses this driver's token")):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", script], check=False, env={**base, **extra}, capture_output=True,
                              text=True, timeout=60)
        assert time.monotonic() - started < 30  # not Ray's minute of retries
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    probe = "from orchestration.cluster import check_address\ncheck_address(" + repr(token_head) + ", 'RAY_ADDRESS')"
    right = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=60,
                           env={**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "the-cluster-token"})
    assert right.returncode == 0, right.stderr  # the right token passes the check
