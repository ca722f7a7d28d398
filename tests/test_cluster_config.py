"""orchestration/cluster.yaml passes Ray's own cluster-config validation, names a current image, pins what the
README pins, agrees with the README on sizes, keeps weights and secrets where they belong and the dashboard
private."""
import copy
import re
from pathlib import Path

import pytest
import yaml

from orchestration.cluster import SECRETS, configured_gpus

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "orchestration" / "cluster.yaml"
README = (ROOT / "README.md").read_text()


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
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0  # a CPU head, no actors
    assert any(t["resources"].get("GPU", 0) >= 1 for name, t in types.items() if name != prepared["head_node_type"])


def test_the_validator_is_real(config):
    import jsonschema

    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_worker"]["resources"] = {"GPU": "one"}
    with pytest.raises(jsonschema.ValidationError):
        validated(bad)


def test_a_current_image_is_named_on_every_node(config):
    import ray
    from ray.autoscaler._private.aws.config import DEFAULT_AMI

    docker = config["docker"]
    assert docker["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"  # Ray, Python and CUDA of the driver
    assert docker["head_image"] == f"rayproject/ray:{ray.__version__}-py311-cpu"
    for name, node_type in config["available_node_types"].items():
        image = node_type["node_config"].get("ImageId", "")
        assert image and image not in DEFAULT_AMI.values(), f"{name}: Ray's old default AMI would be used"
        # a real AMI id, or the placeholder AWS refuses ("Invalid id") so that `ray up` cannot start without one
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", image) or "CHANGE-ME" in image


def test_torch_is_pinned_as_in_the_readme_and_installed_before_the_project(config):
    import ray

    pin = re.search(r"pip install (torch==[0-9.]+)", README).group(1)
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        torch = next(i for i, c in enumerate(commands) if "pip install -q torch" in c)
        project = next(i for i, c in enumerate(commands) if "pip install -q -e ~/locas" in c)
        assert f"{pin} " in commands[torch] + " " and torch < project
    assert "download.pytorch.org/whl/cpu" in " ".join(config["head_setup_commands"])  # the head needs no CUDA
    assert f'"ray[default,tune]=={ray.__version__}"' in " ".join(config["setup_commands"])  # the driver's Ray
    assert config["file_mounts"] == {"~/locas": "."}  # this checkout on every node


def test_the_weights_go_to_the_gpu_nodes_only(config):
    head, workers = " ".join(config["head_setup_commands"]), " ".join(config["worker_setup_commands"])
    assert "snapshot_download" not in " ".join(config["setup_commands"])
    assert "snapshot_download(os.environ['LOCAS_MODEL'], allow_patterns=['*.json'])" in head  # config only
    assert "print(snapshot_download(os.environ['LOCAS_MODEL']))" in workers  # the whole model
    assert "Qwen/Qwen3-1.7B-Base" in " ".join(config["setup_commands"])


def test_sizes_agree_with_the_readme(config):
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0  # a fresh cluster has no GPU: runs ask the autoscaler
    asked = max(int(n) for n in re.findall(r"--num_gpus (\d+)", README))
    assert configured_gpus(config) == asked == 8


def test_secrets_travel_with_jobs_not_in_the_cluster_file(config):
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"hf_[A-Za-z0-9]{10,}", text) and "HF_TOKEN" in SECRETS
    assert "--runtime-env-json" in README and "HF_TOKEN" in README


def test_dashboard_is_not_public(config):
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    for perm in config["provider"].get("security_group", {}).get("IpPermissions", []):
        assert not perm["FromPort"] <= 8265 <= perm["ToPort"], "the dashboard port is open to the outside"
        assert (perm["FromPort"], perm["ToPort"]) == (22, 22)
