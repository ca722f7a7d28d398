"""The cluster path on a real autoscaling Ray (`tests/fakecluster.py`: Ray's fake multi-node provider, GPU worker
nodes from 0 to 2), with the shared tinylm and 4 real PG-19 books on CPU actors (`--device cpu`):
(a) a run scales the cluster up from zero and spreads over the nodes, (b) a node lost mid-run, (c) the run as a
Ray job, stopped and resubmitted. Every PPL equals a local single-node run's. Then joining Ray: a dead
address fails in seconds, a local Ray listens on loopback with token auth, GPU requests, secrets, outputs.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import PG19_BOOKS, TINYLM, ledger_lines, require, wait_for
from fakecluster import FakeCluster, free_port

from locas.errors import LocasError
from locas.run_folder import read_ledger, read_manifest, read_rows
from orchestration import cli, cluster, run_pg19

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
BOOKS = ["31974", "12204", "26618", "4128"]  # the 4 smallest shared books; 2,048 tokens each: a run outlasts
# the autoscaler replacing a lost node


def pg19_flags(output, *extra) -> list[str]:
    return ["--model", str(TINYLM), "--data", str(PG19_BOOKS), "--book_ids", ",".join(BOOKS), "--method", "locas",
            "--memory_width", "16", "--window_size", "256", "--max_tokens", "2048", "--dtype", "float32",
            "--device", "cpu", "--batch_size", "1", "--no_progress", "--output", str(output), *extra]


def driver(fake, output, *extra, **popen):
    """`python orchestration/run_pg19.py ...` against the fake cluster, as a user runs it on the head."""
    command = [sys.executable, str(ROOT / "orchestration" / "run_pg19.py"), *pg19_flags(output, *extra)]
    return subprocess.Popen(command, cwd=ROOT, env=fake.client_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **popen)


def ppl(output) -> float:
    return json.loads((Path(output) / "summary.json").read_text())["ppl"]


def every_book_once(output) -> None:
    ledger = read_ledger(output)
    assert len(ledger) == len(BOOKS) and all(e["status"] == "done" for e in ledger.values())
    lines = [json.loads(line)["unit_id"] for line in (Path(output) / "ledger.jsonl").read_text().splitlines()]
    assert len(lines) == len(set(lines)) == len(BOOKS)  # no unit ledgered twice
    assert sorted(r["book_id"] for r in read_rows(output) if r["kind"] == "book") == sorted(BOOKS)


# --------------------------------------------------------------------------- the cluster and the reference

@pytest.fixture(scope="session")
def fake(tmp_path_factory):
    """One autoscaling cluster for the session. Its nodes' home folder is a temporary one that holds
    ray_bootstrap_config.yaml, as `ray up` leaves it on a head."""
    require(TINYLM)
    require(PG19_BOOKS)
    home = tmp_path_factory.mktemp("head-home")
    started = time.monotonic()
    secrets = {"HF_TOKEN": "hf_test_not_a_token"}  # the head's drivers pass it on to their actors
    with FakeCluster(gpu_workers=2, extra_env={"HOME": str(home), **secrets}) as fake:
        (home / "ray_bootstrap_config.yaml").write_text(fake.config_path.read_text())
        fake.home = home
        print(f"fake cluster up in {time.monotonic() - started:.0f}s")
        yield fake


@pytest.fixture(scope="session")
def reference(ray_local, tmp_path_factory):
    """The PPL of the same run on a local single-node Ray (2 CPU actors)."""
    return local_ppl(tmp_path_factory)


def local_ppl(tmp_path_factory, *extra) -> float:
    require(TINYLM)
    require(PG19_BOOKS)
    out = tmp_path_factory.mktemp("reference") / "run"
    assert run_pg19.main(pg19_flags(out, "--num_workers", "2", *extra)) == 0
    every_book_once(out)
    return ppl(out)


LONGER = ("--steps_per_window", "4")  # a run that outlasts the autoscaler noticing a lost node and replacing it


# --------------------------------------------------------------------------- (a) (b) (c)

def test_a_run_scales_the_cluster_up_from_zero(fake, reference, tmp_path):
    assert fake.gpu_nodes() == set()  # min_workers 0: no GPU until a run asks
    out = tmp_path / "a"
    run = driver(fake, out, "--num_gpus", "2", "--cluster_config", str(fake.config_path))
    log, _ = run.communicate(timeout=300)
    assert run.returncode == 0, log
    assert "waiting for GPUs: asked the autoscaler for 2 (the cluster has 0 now, at most 2)" in log
    assert f"output: {out}" in log
    nodes = {w["node"] for w in read_manifest(out)["workers"]}
    assert len(nodes) >= 2 and all(w["device"] == "cpu" for w in read_manifest(out)["workers"]), nodes
    assert {n.split()[1] for n in nodes} <= fake.gpu_nodes()  # the autoscaler's GPU nodes, not the head
    every_book_once(out)
    assert ppl(out) == pytest.approx(reference, rel=1e-6)


def test_b_a_node_lost_mid_run(fake, ray_local, tmp_path_factory, tmp_path):
    reference = local_ppl(tmp_path_factory, *LONGER)
    out = tmp_path / "b"
    run = driver(fake, out, "--num_gpus", "2", *LONGER)
    try:
        wait_for(lambda: ledger_lines(out) >= 1 or run.poll() is not None, 240, "the first finished book")
        assert ledger_lines(out) < len(BOOKS), "the run ended before a node could be lost"
        first = next(r for r in read_rows(out) if r["kind"] == "book")  # its actor runs the next book now
        victim = fake.kill_node(first["node"].split()[1])
        before = set(fake.raylets())
        new_nodes = set()
        while run.poll() is None:  # the autoscaler starts a node in the lost one's place while the run goes on
            new_nodes |= fake.gpu_nodes() - before
            time.sleep(0.5)
        log = run.stdout.read()
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, log
    # the lost actor's book is retried; a replacement actor placed on the node before Ray knew it was gone may be
    # lost too, with no unit
    lost = re.search(r"units: 4 done, 0 failed, 0 already finished; (\d+) worker\(s\) lost, 1 unit\(s\) retried", log)
    assert lost and int(lost.group(1)) >= 1, [line for line in log.splitlines() if "units:" in line]
    every_book_once(out)
    assert ppl(out) == pytest.approx(reference, rel=1e-6)
    if not new_nodes:  # launched while the run went on, up just after it
        wait_for(lambda: fake.gpu_nodes() - before, 30, "a node in place of the lost one")
    assert victim not in fake.gpu_nodes()


def test_c_the_run_as_a_ray_job_stopped_and_resubmitted(fake, reference):
    client_env = fake.client_env()

    def submit(job_id, *wait):
        command = [RAY, "job", "submit", "--address", fake.dashboard_url, "--submission-id", job_id, *wait,
                   "--working-dir", str(ROOT), "--", "python", "orchestration/run_pg19.py",
                   *pg19_flags("runs/c", "--num_gpus", "1", "--verbose")]  # relative: ~/runs/c on the head
        return subprocess.run(command, env=client_env, capture_output=True, text=True, check=False, timeout=300)

    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(fake.dashboard_url)
    out = fake.home / "runs" / "c"
    assert submit("locas-c-1", "--no-wait").returncode == 0
    wait_for(lambda: ledger_lines(out) >= 1 or jobs.get_job_status("locas-c-1").is_terminal(), 240,
             "the job's first finished book")
    stop = subprocess.run([RAY, "job", "stop", "--address", fake.dashboard_url, "locas-c-1"], env=client_env,
                          capture_output=True, text=True, check=False, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert jobs.get_job_status("locas-c-1") == JobStatus.STOPPED, jobs.get_job_logs("locas-c-1")[-3000:]
    done = ledger_lines(out)
    assert 1 <= done < len(BOOKS), "the job should have stopped midway"
    first_log = jobs.get_job_logs("locas-c-1")
    # with --verbose, the actors' output (Ray's prefix: the actor class, `RemoteWorker`) reaches the job log
    assert f"output: {out}" in first_log and "(RemoteWorker pid=" in first_log

    again = submit("locas-c-2")
    assert jobs.get_job_status("locas-c-2") == JobStatus.SUCCEEDED, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"{done} already finished" in jobs.get_job_logs("locas-c-2")
    every_book_once(out)
    assert ppl(out) == pytest.approx(reference, rel=1e-6)


def test_a_sweep_on_a_cluster_needs_storage_every_node_reaches(fake, tmp_path):
    command = [sys.executable, str(ROOT / "orchestration" / "run_sweep.py"), "--model", str(TINYLM), "--data",
               str(PG19_BOOKS), "--split", "test", "--allow_test", "--book_ids", BOOKS[0], "--grid",
               "memory_width=8,16", "--output", str(tmp_path / "sweep")]
    run = subprocess.run(command, cwd=ROOT, env=fake.client_env(), capture_output=True, text=True, check=False,
                         timeout=120)
    assert run.returncode == 2 and "error: on a cluster, --tune_storage is required" in run.stderr


# --------------------------------------------------------------------------- joining Ray

def test_a_dead_cluster_address_fails_in_seconds_naming_the_way_out(tiny_path, tmp_path):
    """A `ray start` head that stopped leaves its address behind; `ray.init()` would retry it for minutes."""
    dead = f"127.0.0.1:{free_port()}"
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(dead)
    books = tmp_path / "books"
    books.mkdir()
    (books / "b.txt").write_text("a short book. " * 50)
    command = [sys.executable, str(ROOT / "orchestration" / "run_pg19.py"), "--model", str(tiny_path), "--data",
               str(books), "--output", str(tmp_path / "out"), "--window_size", "64", "--memory_width", "8"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for extra, way_out in (({"RAY_TMPDIR": str(tmp_path)}, f"delete {tmp_path / 'ray' / 'ray_current_cluster'}"),
                           ({"RAY_ADDRESS": dead}, "unset RAY_ADDRESS")):
        run = subprocess.run(command, cwd=ROOT, env={**env, **extra}, capture_output=True, text=True, check=False,
                             timeout=120)
        errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        assert run.returncode == 2 and len(errors) == 1, run.stderr
        assert f"no Ray cluster answers at {dead}" in errors[0] and way_out in errors[0]
    started = time.monotonic()
    with pytest.raises(LocasError, match="no Ray cluster answers"):
        cluster.check_address(dead, "RAY_ADDRESS")
    assert time.monotonic() - started < 5


LOCAL_RAY = """
import json, os, psutil, ray
from orchestration.cluster import start_ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled
started = start_ray(demo=True)
session = ray._private.worker._global_node.get_session_dir_path()
mine = [p for p in psutil.process_iter() if p.pid == os.getpid() or any(session in a for a in p.cmdline())]
mine += [c for p in mine for c in p.children(recursive=True)]
hosts = {c.laddr.ip for p in mine for c in p.net_connections("inet") if c.status == "LISTEN"}
print(json.dumps({"started": started, "hosts": sorted(hosts), "token": is_token_auth_enabled()}))
"""


def test_a_local_ray_listens_on_loopback_only_with_token_auth(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}  # as a user's shell
    run = subprocess.run([sys.executable, "-c", LOCAL_RAY], cwd=ROOT, capture_output=True, text=True, check=False,
                         timeout=180, env={**env, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["started"] and facts["token"] and (tmp_path / ".ray" / "auth_token").exists()
    assert facts["hosts"] and all(h in ("127.0.0.1", "::ffff:127.0.0.1") for h in facts["hosts"]), facts["hosts"]


def test_gpu_requests_on_a_ray_without_an_autoscaler(ray_local, tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({"max_workers": 2, "head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 2}}, "gpu": {"resources": {"GPU": 1}, "max_workers": 4}}}))
    refusals = [((3, 60, str(config)), "at most 2 GPUs"),  # the cluster's max_workers bounds the GPU nodes
                ((1, 60, None, True), "this machine's Ray has 0 GPUs"),
                ((1, 1, str(config)), "no GPU came up within --gpu_timeout 1 s"),
                ((1, 1, str(tmp_path / "none.yaml")), "--cluster_config .*: no such file")]
    for args, match in refusals:
        started = time.monotonic()
        with pytest.raises(LocasError, match=match), cluster.gpus(*args):
            pass
        assert time.monotonic() - started < 10
    with cluster.gpus(0, 1):  # CPU runs ask for nothing
        pass


def test_configured_gpus_count_node_types_and_the_cluster_cap():
    assert cluster.configured_gpus({"head_node_type": "h", "available_node_types": {
        "h": {"resources": {}}, "a": {"resources": {"GPU": 8}, "max_workers": 1},
        "b": {"resources": {"GPU": 1}, "max_workers": 10}}, "max_workers": 3}) == 10


def test_secrets_reach_the_actors_unless_the_job_passes_them(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("WANDB_API_KEY", "w")
    monkeypatch.delenv(cluster.JOB_CONFIG, raising=False)
    assert cluster._secrets_env() == {"HF_TOKEN": "hf_x", "WANDB_API_KEY": "w"}
    monkeypatch.setenv(cluster.JOB_CONFIG, json.dumps({"runtime_env": {"env_vars": {"HF_TOKEN": "hf_x"}}}))
    assert cluster._secrets_env() == {"WANDB_API_KEY": "w"}  # the same key twice: Ray refuses to merge


def test_relative_outputs_land_in_the_heads_home_inside_a_ray_job(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(cluster.JOB_CONFIG, raising=False)
    assert cli.resolve_output("runs/x") == tmp_path / "runs" / "x"
    monkeypatch.setenv(cluster.JOB_CONFIG, "{}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.resolve_output("runs/x") == tmp_path / "home" / "runs" / "x"
    assert cli.resolve_output("/data/runs/x") == Path("/data/runs/x")
