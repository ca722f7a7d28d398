"""orchestration/cluster.yaml passes Ray's own cluster-config validation and keeps the dashboard private."""
import copy
import re
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "orchestration" / "cluster.yaml"


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validated(config):
    """What `ray up` does before launching: fill in provider defaults, then validate against ray-schema.json."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_ray_validates_the_cluster_config(config):
    prepared = validated(config)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # a CPU head
    assert any(t["resources"].get("GPU", 0) >= 1 for name, t in types.items() if name != prepared["head_node_type"])


def test_the_validator_is_real(config):
    import jsonschema

    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_worker"]["resources"] = {"GPU": "one"}
    with pytest.raises(jsonschema.ValidationError):
        validated(bad)


def test_setup_installs_the_project_pins_ray_and_fetches_the_model(config):
    import ray

    setup = "\n".join(config["setup_commands"])
    assert f'"ray[default,tune]=={ray.__version__}"' in setup  # the driver's Ray, exactly
    assert "pip install -q -e ." in setup and "git clone" in setup
    assert re.search(r"pip install -q torch", setup)
    fetch = config["setup_commands"].index(next(c for c in config["setup_commands"] if "snapshot_download" in c))
    install = config["setup_commands"].index(next(c for c in config["setup_commands"] if "-e ." in c))
    assert fetch > install  # after huggingface_hub is installed, before Ray (and any actor) starts
    assert "Qwen/Qwen3-1.7B-Base" in setup


def test_dashboard_is_not_public(config):
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    for perm in config["provider"].get("security_group", {}).get("IpPermissions", []):
        assert not perm["FromPort"] <= 8265 <= perm["ToPort"], "the dashboard port is open to the outside"
        assert (perm["FromPort"], perm["ToPort"]) == (22, 22)
