"""A real autoscaling Ray cluster on one machine, for tests: Ray's fake multi-node provider.

    with FakeCluster(gpu_workers=2) as cluster:
        subprocess.run([...driver...], env=cluster.client_env())
        cluster.gpu_nodes()            # node ids of the live worker nodes
        cluster.kill_node(node_id)     # node loss: SIGKILL its raylet

The head runs the autoscaler (v2) with `RAY_FAKE_CLUSTER=1`; every worker node it launches is another raylet
on this machine that declares `GPU: 1` (no GPU behind it: actors run with `--device cpu`). Worker nodes start
at `min_workers: 0`, so the cluster shows no GPU until something asks for one.

Kept apart from any other Ray on the machine: a private temp dir (so Ray's `ray_current_cluster` file under
/tmp/ray is never written), ports chosen here, everything bound to 127.0.0.1. Every process of the cluster
inherits an environment tag, and teardown signals exactly the processes that carry it (never `ray stop`,
which would stop other people's Ray too).

Ray 2.60 facts this relies on: the v2 autoscaler needs the provider as `type: external` + `module:` (with
`type: fake_multinode` its monitor dies at start while `ray start` still reports success, so the monitor is
checked here), the head's node type must be called `ray.head.default` and the head must be started with the
provider's fixed head node id; `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` keeps every node (and every client) on
loopback; short health-check periods make a lost node known within seconds. Nodes of one machine share the
session folder, so `OwnDisksProvider` gives each worker node its own runtime_env folder (a job's working dir is
unpacked once per node, deleting what was there).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
import uuid
from pathlib import Path

import psutil
import ray._private.parameter as ray_parameter
import yaml
from conftest import wait_for
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

ROOT = Path(__file__).resolve().parents[1]
HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's fixed id of the head node
TAG = "LOCAS_FAKE_CLUSTER"
PROVIDER = "fakecluster.OwnDisksProvider"  # Ray's fake provider, each node with a runtime_env folder of its own


class OwnDisksProvider(FakeMultiNodeProvider):
    """Ray's fake multi-node provider, except that every worker node keeps its runtime_env files (a job's
    `--working-dir` among them) in a folder of its own, as separate machines do. Ray's nodes of one machine share
    `<session>/runtime_resources/`, and a node that sets up a job's working dir first deletes the unpacked copy
    there: the job's driver on the head, and any actor, then find its modules gone mid-run. Loaded by the head's
    autoscaler (tests/ is on the cluster's PYTHONPATH)."""

    _patch = threading.Lock()

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        real = ray_parameter.RayParams

        def params(*args, **kwargs):
            node_id = (kwargs.get("env_vars") or {}).get("RAY_OVERRIDE_NODE_ID_FOR_TESTING", uuid.uuid4().hex)
            kwargs.setdefault("runtime_env_dir_name", f"runtime_resources_{node_id}")
            return real(*args, **kwargs)

        with self._patch:  # the base class builds its RayParams through the module attribute
            ray_parameter.RayParams = params
            try:
                super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            finally:
                ray_parameter.RayParams = real


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def autoscaling_config(gcs_address: str, gpu_workers: int, idle_minutes: float) -> dict:
    """The cluster yaml: a 1-CPU head with no GPU, GPU worker nodes (1 CPU, 1 GPU) from 0 to `gpu_workers`."""
    return {
        "cluster_name": "locas-fake",
        "max_workers": gpu_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_minutes,
        "provider": {"type": "external", "module": PROVIDER, "gcs_address": gcs_address,
                     "head_node_id": HEAD_NODE_ID, "launch_multiple": True, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 100 * 2**20},
                           "node_config": {}, "min_workers": 0, "max_workers": gpu_workers},
        },
        "head_node_type": "ray.head.default",
        "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class FakeCluster:
    """`start()` the head (its autoscaler launches worker nodes on demand), `stop()` every process it made."""

    def __init__(self, gpu_workers: int = 2, idle_minutes: float = 5.0, extra_env: dict | None = None):
        self.gpu_workers, self.idle_minutes, self.extra_env = gpu_workers, idle_minutes, extra_env or {}
        self.tag = uuid.uuid4().hex
        self.temp_dir: Path | None = None
        self.gcs_port = self.dashboard_port = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def config_path(self) -> Path:
        return self.temp_dir / "autoscaler.yaml"

    def _loopback_env(self) -> dict:
        python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "PYTHONPATH": python_path,
                "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}

    def client_env(self, **extra) -> dict:
        """The environment of a driver or `ray` command that talks to this cluster (and not to another Ray)."""
        env = {**os.environ, **self._loopback_env(), "RAY_ADDRESS": self.address, **extra}
        env.pop("RAY_API_SERVER_ADDRESS", None)
        return env

    # ---- start and stop ---------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> FakeCluster:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="lfc", dir="/tmp"))  # short: Ray's socket paths
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.config_path.write_text(yaml.safe_dump(autoscaling_config(self.address, self.gpu_workers,
                                                                      self.idle_minutes)))
        loopback = self._loopback_env()
        loopback["PYTHONPATH"] = os.pathsep.join((str(ROOT / "tests"), loopback["PYTHONPATH"]))  # the provider
        env = {**os.environ, **loopback, **self.extra_env, TAG: self.tag,
               "RAY_FAKE_CLUSTER": "1", "RAY_enable_autoscaler_v2": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               "RAY_OVERRIDE_NODE_ID_FOR_TESTING": HEAD_NODE_ID, "RAY_CLOUD_INSTANCE_ID": HEAD_NODE_ID,
               "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_timeout_ms": "1000"}
        env.pop("RAY_ADDRESS", None)
        ports = [str(free_port()) for _ in range(7)]
        command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
                   "--port", str(self.gcs_port), "--num-cpus", "1", "--num-gpus", "0",
                   "--object-store-memory", str(100 * 2**20), "--temp-dir", str(self.temp_dir),
                   "--autoscaling-config", str(self.config_path), "--disable-usage-stats",
                   "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                   "--dashboard-port", str(self.dashboard_port),
                   "--ray-client-server-port", ports[0], "--dashboard-agent-listen-port", ports[1],
                   "--dashboard-agent-grpc-port", ports[2], "--runtime-env-agent-port", ports[3],
                   "--metrics-export-port", ports[4], "--node-manager-port", ports[5],
                   "--object-manager-port", ports[6]]
        try:
            with open(self.temp_dir / "ray_start.log", "w") as log:
                subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=True,
                               cwd=self.temp_dir)
            wait_for(lambda: answers("127.0.0.1", self.gcs_port), timeout, "the head's GCS")
            wait_for(self._dashboard_up, timeout, "the dashboard")
            wait_for(self._monitor_alive, 30, "the autoscaler (monitor.py)")
        except BaseException:
            self.stop()
            raise
        return self

    def _dashboard_up(self) -> bool:
        try:
            with urllib.request.urlopen(self.dashboard_url + "/api/version", timeout=1) as reply:
                return reply.status == 200
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def _monitor_alive(self) -> bool:
        return any(any(a.endswith("monitor.py") for a in _cmdline(p)) for p in self.processes())

    def processes(self) -> list[psutil.Process]:
        """Every live process carrying this cluster's tag (orphans of a killed node included)."""
        found = []
        for p in psutil.process_iter():
            if p.pid == os.getpid():
                continue
            with contextlib.suppress(psutil.Error):
                if p.environ().get(TAG) == self.tag and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
        return found

    def stop(self, grace: float = 5.0) -> None:
        """Signal every tagged process (raylets, then the rest, then the GCS), then remove the temp dir."""
        def name(p):
            with contextlib.suppress(psutil.Error):
                return p.name()
            return ""

        procs = self.processes()
        for group in ([p for p in procs if name(p) == "raylet"],
                      [p for p in procs if name(p) not in ("raylet", "gcs_server")],
                      [p for p in procs if name(p) == "gcs_server"]):
            for p in group:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
            _, alive = psutil.wait_procs(group, timeout=grace)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        left = self.processes()
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=grace)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        left = self.processes()
        if left:
            raise RuntimeError(f"fake cluster processes survived teardown: {[p.pid for p in left]}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- nodes ------------------------------------------------------------------------------------------
    def raylets(self) -> dict[str, int]:
        """node id → raylet pid of every live node (the head included)."""
        out = {}
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                if p.name() == "raylet":
                    node = next(a.split("=", 1)[1] for a in p.cmdline() if a.startswith("--node_id="))
                    out[node] = p.pid
        return out

    def gpu_nodes(self) -> set[str]:
        """Node ids of the worker nodes that are alive (their raylet runs and the GCS counts them alive)."""
        from ray.util.state import list_nodes

        running = set(self.raylets()) - {HEAD_NODE_ID}
        alive = {n.node_id for n in list_nodes(address=self.dashboard_url, raise_on_missing_output=False)
                 if n.state == "ALIVE"}
        return running & alive

    def kill_node(self, node_id_prefix: str) -> str:
        """Node loss, as when a machine goes away: SIGKILL the raylet of the worker node whose id starts with
        `node_id_prefix` and every process it started (its actors among them) at once."""
        (node, pid), = [(n, pid) for n, pid in self.raylets().items() if n.startswith(node_id_prefix)]
        raylet = psutil.Process(pid)
        for p in [*raylet.children(recursive=True), raylet]:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        return node


def _cmdline(p: psutil.Process) -> list[str]:
    with contextlib.suppress(psutil.Error):
        return p.cmdline()
    return []
