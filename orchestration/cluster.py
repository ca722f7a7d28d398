"""Joining Ray: the running cluster when there is one, else a local Ray of this machine."""
from __future__ import annotations

import os


def start_ray(demo: bool) -> None:
    """Join the running cluster if there is one, else start a local Ray (2 CPUs, no dashboard for --demo)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        demo_ray = {"address": "local", "num_cpus": 2, "include_dashboard": False}  # its own, even beside a cluster
        ray.init(**(demo_ray if demo else {}), log_to_driver=False)
