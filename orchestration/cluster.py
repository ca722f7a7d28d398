"""Joining Ray, and getting GPUs from its autoscaler.

    local = start_ray(demo=False)     # the cluster there is (RAY_ADDRESS, or the head `ray start` left on this
                                      # machine), else a local Ray of this machine; True when it started one
    with gpus(8, timeout=1200, cluster_config=None, local=local):
        ...                           # asked the autoscaler for 8 GPUs; at least one is up

- A cluster address that is found but does not answer (a head that stopped leaves its address in
  /tmp/ray/ray_current_cluster, and `ray.init()` would retry it for many minutes) is one LocasError line that
  names the address, where it came from and the way out, within seconds.
- Joining leaves Ray's auth mode as the cluster and the environment have it (RAY_AUTH_MODE is never set here);
  a cluster that refuses the driver's token (or its absence) is one LocasError line naming the way in.
  A local Ray started here listens on 127.0.0.1 only (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: every address of
  its processes is the loopback one) and, RAY_AUTH_MODE being unset, Ray turns token auth on for it (the
  token in ~/.ray/auth_token).
- A quiet console: actors' output (their bars, library warnings) stays in Ray's logs and the dashboard, and
  Ray's and Tune's banners are off; `verbose` brings them back (actors' output on the driver, or in
  `ray job logs` for a Ray job).
- Secrets named in SECRETS reach every actor through the job's runtime_env when the driver has them (unless
  the job was submitted with them already, `ray job submit --runtime-env-json`).
- GPUs: the run asks the autoscaler for its GPUs (`request_resources`, one {"GPU": 1} bundle per actor), waits
  for the first one with a message, and refuses only a request the cluster can never meet (more GPUs than
  its autoscaling config allows, or none up after `--gpu_timeout` seconds). The request is cleared when
  the run ends. (It is the cluster's one standing request: a second run replaces it, but the actors each
  run waits for still make the autoscaler start their nodes.)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

from locas.errors import LocasError

SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN",
           "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the cluster's yaml on its head
JOB_CONFIG = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the environment of a Ray job's driver
PROBE_SECONDS = 3.0


# --------------------------------------------------------------------------- where Ray is

def in_ray_job() -> bool:
    """Whether this process is the driver of a Ray job (`ray job submit`)."""
    return JOB_CONFIG in os.environ


def address_file() -> Path:
    """The file in which `ray start --head` leaves its address for `ray.init()` on this machine."""
    try:
        from ray._common.utils import get_ray_address_file

        return Path(get_ray_address_file(None))
    except ImportError:  # another Ray layout: its documented default
        return Path("/tmp/ray/ray_current_cluster")


def cluster_address() -> tuple[str | None, str]:
    """(address, where it was found) of the cluster a plain `ray.init()` would join, as Ray finds it (RAY_ADDRESS,
    else the address file of a `ray start` head on this machine); (None, "") when it would start a local Ray."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env == "local":
        return None, ""
    if env and env != "auto":
        return env, "RAY_ADDRESS"
    path = address_file()
    try:
        found = path.read_text().strip()
    except OSError:
        found = ""
    return (found, str(path)) if found else (None, "")


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def answers(host: str, port: int, timeout: float = PROBE_SECONDS) -> bool:
    """Whether something accepts a TCP connection at host:port (a refused port answers at once)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _dialled(host: str) -> str:
    """The host `ray.init()` will dial for `host` (Ray replaces a loopback address by the node's own address)."""
    try:
        from ray._private.services import resolve_ip_for_localhost

        return resolve_ip_for_localhost(host)
    except Exception:  # noqa: BLE001 - keep the address as given
        return host


def check_address(address: str, source: str) -> None:
    """Refuse, in seconds and in one line, a cluster address that nothing answers at."""
    parsed = _host_port(address)
    if parsed is None:
        return  # not host:port: let Ray say what it makes of it
    host, port = parsed
    dialled = _dialled(host) if "://" not in address else host
    if answers(dialled, port):
        if "://" not in address:  # a GCS (not a Ray Client server): does it take this driver's token?
            check_token(f"{dialled}:{port}", address, source)
        return
    if dialled != host and answers(host, port):
        raise LocasError(f"the Ray cluster at {address} (from {source}) listens on {host} only: set "
                         "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in this shell to join it")
    if source == "RAY_ADDRESS":
        way_out = "unset RAY_ADDRESS to run on a local Ray of this machine"
    else:
        way_out = f"delete {source} (left behind by a `ray start` head that stopped) to run on a local Ray"
    raise LocasError(f"no Ray cluster answers at {address} (from {source}): start its head again (`ray start "
                     f"--head`, `ray up`), or {way_out}")


def check_token(gcs: str, address: str, source: str) -> None:
    """Refuse, in one line and at once, a cluster whose GCS refuses the token this driver would send (or its
    absence), instead of Ray's minute of retries: one call, as `ray.init()` would make it."""
    import grpc
    from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, get_authentication_mode
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    token = get_authentication_mode() == AuthenticationMode.TOKEN
    header = AuthenticationTokenLoader.instance().get_token_for_http_header() if token else {}
    with grpc.insecure_channel(gcs) as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=PROBE_SECONDS, metadata=list(header.items()))
            return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                return  # anything else: Ray says what it makes of it
    way_in = "its token in ~/.ray/auth_token (or RAY_AUTH_TOKEN) on this machine"
    if not token:
        raise LocasError(f"the Ray cluster at {address} (from {source}) requires token authentication: set "
                         f"RAY_AUTH_MODE=token in this shell, with {way_in}")
    raise LocasError(f"the Ray cluster at {address} (from {source}) refuses this driver's token: put {way_in}")


def _secrets_env() -> dict[str, str]:
    """The SECRETS this driver has and the job does not pass to its actors already."""
    taken = {}
    if in_ray_job():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            taken = json.loads(os.environ[JOB_CONFIG]).get("runtime_env", {}).get("env_vars") or {}
    return {name: os.environ[name] for name in SECRETS if os.environ.get(name) and name not in taken}


def _loopback_only() -> None:
    """Make the Ray started next (and each of its processes, through the environment) bind 127.0.0.1 only."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read once, when Ray was imported


def start_ray(demo: bool = False, verbose: bool = False) -> bool:
    """Join the running cluster if there is one, else start a local Ray on loopback (always for --demo: 2 CPUs,
    no dashboard). Returns whether this process started the Ray it is connected to. Unless `verbose`, actors'
    output stays in Ray's logs and Ray says only its errors."""
    import logging

    import ray

    from orchestration.progress import quiet_console

    quiet_console(verbose)
    if ray.is_initialized():
        return started_here()
    secrets = _secrets_env()
    common = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR,
              **({"runtime_env": {"env_vars": secrets}} if secrets else {})}
    address, source = (None, "") if demo else cluster_address()
    if address is not None:
        check_address(address, source)
        ray.init(**common)  # as Ray finds it: the auth mode is the cluster's
        return False
    _loopback_only()
    local = {"num_cpus": 2, "include_dashboard": False} if demo else {}
    ray.init(address="local", **local, **common)
    return True


def started_here() -> bool:
    """Whether the connected Ray was started by this process (a local Ray: no autoscaler behind it)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return bool(getattr(node, "head", False))


# --------------------------------------------------------------------------- GPUs from the autoscaler

def configured_gpus(config: dict) -> float:
    """The most GPUs a cluster yaml can bring up: the head's, plus each worker type's at its max_workers, at most
    the cluster's max_workers nodes in all (the types with the most GPUs per node first)."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    total = float((types.get(head, {}).get("resources") or {}).get("GPU", 0))
    nodes_left = config.get("max_workers", math.inf)
    shapes = sorted(((float((t.get("resources") or {}).get("GPU", 0)), t.get("max_workers", nodes_left))
                     for name, t in types.items() if name != head), reverse=True)
    for per_node, count in shapes:
        take = min(count, nodes_left)
        total += per_node * take
        nodes_left -= take
    return total


def max_gpus(cluster_config: str | None = None) -> tuple[float | None, str]:
    """(the most GPUs the cluster's autoscaling config allows, the file it was read from); (None, "") when no
    config is found (`cluster_config`, else ~/ray_bootstrap_config.yaml, which `ray up` leaves on the head)."""
    from locas.yaml_file import read_yaml

    path = Path(cluster_config or BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        if cluster_config:
            raise LocasError(f"--cluster_config {cluster_config}: no such file")
        return None, ""
    config = read_yaml(path, f"--cluster_config {path}")
    if not isinstance(config, dict) or "available_node_types" not in config:
        raise LocasError(f"{path} is not a Ray cluster yaml (no available_node_types)")
    return configured_gpus(config), str(path)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def wait_for_gpu(want: int, timeout: float, every: float = 30.0) -> float:
    """Wait until the cluster shows a GPU, saying so now and then; refuse after `timeout` seconds. Returns the
    seconds waited."""
    import ray

    started = time.monotonic()
    said = started
    while ray.cluster_resources().get("GPU", 0) < 1:
        waited = time.monotonic() - started
        if waited > timeout:
            raise LocasError(f"no GPU came up within --gpu_timeout {timeout:g} s (asked the autoscaler for {want}): "
                             "see `ray status` and the autoscaler's log (`ray monitor <cluster.yaml>`), or allow "
                             "more time with --gpu_timeout")
        if time.monotonic() - said >= every:
            _say(f"still waiting for the first GPU ({waited:.0f} s of {timeout:g})")
            said = time.monotonic()
        time.sleep(0.5)
    return time.monotonic() - started


@contextlib.contextmanager
def gpus(num_gpus: float, timeout: float, cluster_config: str | None = None, local: bool = False):
    """Ask the autoscaler for `num_gpus` GPUs and wait for the first; the run starts on it and the others join
    as they come. Refused at once when the cluster can never have that many: a local Ray has the GPUs it has,
    a cluster at most what its autoscaling config allows (no config found: only the timeout decides).
    The request is withdrawn when the block ends."""
    import ray

    if not num_gpus:
        yield
        return
    want = math.ceil(num_gpus)
    have = ray.cluster_resources().get("GPU", 0)
    if local:
        if want > have:
            raise LocasError(f"--num_gpus {num_gpus:g} but this machine's Ray has {have:g} GPUs (no cluster was "
                             "found: set RAY_ADDRESS, or run on a cluster's head as `ray job submit`)")
        yield
        return
    ceiling, source = max_gpus(cluster_config)
    if ceiling is not None and want > ceiling:
        raise LocasError(f"--num_gpus {num_gpus:g} but the cluster can have at most {ceiling:g} GPUs ({source}): "
                         "ask for fewer, or raise max_workers there and `ray up` again")
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"GPU": 1}] * want)
    try:
        if have < 1:
            limit = f"at most {ceiling:g}" if ceiling is not None else "its maximum unknown"
            _say(f"waiting for GPUs: asked the autoscaler for {want} (the cluster has 0 now, {limit}); "
                 f"--gpu_timeout {timeout:g} s")
            waited = wait_for_gpu(want, timeout)
            _say(f"first GPU up after {waited:.0f} s; the run starts there and the others join as they come")
        yield
    finally:
        with contextlib.suppress(Exception):
            request_resources(bundles=[])
