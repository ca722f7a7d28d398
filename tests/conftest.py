"""Shared fixtures: tiny random checkpoints saved and reloaded from disk, and the real shared data; waiting
helpers."""
import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINYLM = SHARED / "models" / "tinylm-pg19"
PG19_BOOKS = SHARED / "data" / "pg19" / "books"


def wait_for(predicate, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def ledger_lines(output) -> int:
    """Units a run's ledger has recorded so far (0 before it exists)."""
    path = Path(output) / "ledger.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def pytest_collection_modifyitems(items):
    """Tests are marked by what they need: one that uses the session's local Ray is `ray` and `slow` (Ray takes
    seconds to start), so `-m "not slow"` is the fast inner loop."""
    for item in items:
        if "ray_local" in item.fixturenames:
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.slow)


def require(path: Path) -> Path:
    """Skip the test when a piece of ../shared is absent (a clone without the shared folder)."""
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """A 2-layer Qwen3 (hidden 64, MLP 128) with a byte-level tokenizer, saved with save_pretrained."""
    from locas.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    """The tiny checkpoint loaded in fp32 through the ordinary from_pretrained path (frozen, shared)."""
    import torch

    from locas import CausalLMWithMemory

    return CausalLMWithMemory.from_pretrained(tiny_path, dtype=torch.float32)


@pytest.fixture(scope="session")
def tokenizer(tiny_path):
    """The tiny checkpoint's tokenizer, loaded as a user loads one."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)


@pytest.fixture(scope="module")
def conversation(tmp_path_factory):
    """The LoCoMo sample of tests/locomo_inputs.py, loaded from a file as a user's is."""
    import json

    from locomo_inputs import sample

    from locas.tasks.locomo.data import load_locomo

    path = tmp_path_factory.mktemp("locomo") / "conversations.json"
    path.write_text(json.dumps([sample()]))
    return load_locomo(path, strict=False)[0]


@pytest.fixture(scope="session")
def tinylm_path():
    return require(TINYLM)


# --- orchestration: one local Ray for the whole session -------------------------------------------------
@pytest.fixture(scope="session")
def ray_local():
    """A local Ray (2 CPUs, no dashboard) started once per test session and shut down at the end."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()
