"""Methods and losses come from their registries: a new one is one class and a registry line, and the loop,
the config, the flags, the checks and the sweeps then know it (docs/design.md)."""
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from locas import losses
from locas.adapt import Adapter, adapt_documents
from locas.checks import check_model_config
from locas.config import AdaptConfig
from locas.documents import Document, sliding_windows
from locas.errors import LocasError
from locas.methods import make_method
from locas.objectives import LOSSES, LossOutput, NextToken, register_loss, window_nll
from locas.settings import Settings, option


class HalfNextToken(NextToken):
    """A toy loss: half the NTP loss. Adam's update does not change when the loss is scaled (up to its eps)."""

    name, description = "HALF", "toy: half of NTP"

    def __call__(self, batch, prepared, step: int) -> LossOutput:
        nll = window_nll(self.model, self.method, batch)
        return LossOutput(0.5 * losses.ntp(nll, batch.score), nll, [True] * len(batch.windows))


@pytest.fixture
def half_registered():
    register_loss(HalfNextToken)
    yield
    LOSSES.pop(HalfNextToken.name)


def random_document(length=200, seed=0, window=32):
    tokens = torch.randint(1, 512, (length,), generator=torch.Generator().manual_seed(seed))
    return Document(f"doc{seed}", tokens, sliding_windows(length, window, 1))


def test_a_registered_loss_runs_in_the_loop_with_nothing_else_changed(tiny_model, half_registered):
    docs = [random_document(seed=i) for i in range(3)]
    ntp, half = (AdaptConfig(loss=name, window_size=32, memory_width=8, lr=1e-2) for name in ("NTP", "HALF"))
    adapter = Adapter(tiny_model, make_method(tiny_model, half), half)
    assert adapter.shared_forward and isinstance(adapter.loss, HalfNextToken)
    assert half.batch_on_gpu() == ntp.batch_on_gpu() == 8  # the GPU batch it declares (NTP's, inherited)
    by_ntp = list(adapt_documents(tiny_model, docs, ntp, batch_size=2))
    by_half = list(adapter.run(docs, batch_size=2))
    for a, b in zip(by_ntp, by_half):
        assert [w.nll_sum for w in b.windows] == pytest.approx([w.nll_sum for w in a.windows], rel=1e-4)
        assert [w.train_loss for w in b.windows] == pytest.approx([0.5 * w.train_loss for w in a.windows], rel=1e-4)


@dataclass(frozen=True)
class LateOptions(Settings):
    late_weight: float = option(1.0, "an option AdaptConfig never gathered")


class LateLoss(HalfNextToken):
    name, description, options = "LATE", "toy: registered after locas.config", LateOptions


def test_a_loss_is_registered_once_and_before_the_config_gathers_its_options():
    with pytest.raises(LocasError, match="registered already"):
        register_loss(NextToken)
    with pytest.raises(LocasError, match="unknown loss_function 'HALF'"):
        AdaptConfig(loss="HALF")  # registered only inside the test that uses it
    register_loss(LateLoss)
    try:
        with pytest.raises(LocasError, match="option 'late_weight' is no config field: register it before"):
            AdaptConfig()
    finally:
        LOSSES.pop(LateLoss.name)


def test_a_config_reads_its_method_and_loss_options_only():
    lora_sd = AdaptConfig(method="lora", loss="SD")
    assert {"lora_rank", "teacher_context", "temperature", "lr"} <= lora_sd.read_fields()
    assert not {"memory_width", "mix_lambda", "grpo_group"} & lora_sd.read_fields()
    none = AdaptConfig(method="none", loss="GRPO", lr=1e-3, memory_width=8, grpo_group=8)
    assert none.normalized(AdaptConfig()) == AdaptConfig(method="none") and none.steps == 0


def test_the_library_checks_a_model_config_as_the_cli_does(tiny_model):
    config = tiny_model.config  # intermediate 128, 4096 positions
    with pytest.raises(LocasError, match=r"^memory_width=200 is larger than the model's MLP \(128 units\)$"):
        check_model_config(config, AdaptConfig(memory_width=200))
    with pytest.raises(LocasError, match="--memory_width 200 is larger"):
        check_model_config(config, AdaptConfig(memory_width=200), as_flags=True)
    check_model_config(config, AdaptConfig(method="lora", memory_width=200))  # lora has no memory
    with pytest.raises(LocasError, match="window_size=3000 plus the SD teacher's 2000 tokens before it is more"):
        check_model_config(config, AdaptConfig(loss="SD", window_size=3000, teacher_context=2000))
    check_model_config(config, AdaptConfig(method="none", loss="SD", window_size=3000))  # nothing trains
    with pytest.raises(LocasError, match="is more than the model's 4096 positions"):
        Adapter(tiny_model, make_method(tiny_model, AdaptConfig(window_size=5000)), AdaptConfig(window_size=5000))


TOY_RUN = """
import json, sys
sys.path.insert(0, {tests!r})
import toy_method  # registers the method: before locas.config gathers the options
import argparse, torch
from locas import CausalLMWithMemory
from locas.adapt import adapt_documents
from locas.config import AdaptConfig
from locas.documents import Document, sliding_windows
from orchestration.flags import add_flags, from_flags, to_flags

parser = argparse.ArgumentParser()
add_flags(parser, AdaptConfig, "adaptation")
cfg = from_flags(parser.parse_args(["--method", "sgd", "--sgd_momentum", "0.5", "--window_size", "32"]), AdaptConfig)
other = AdaptConfig(method="locas", sgd_rows=3).normalized(AdaptConfig())
model = CausalLMWithMemory.from_pretrained({path!r}, dtype=torch.float32)
tokens = torch.randint(1, 512, (150,), generator=torch.Generator().manual_seed(0))
(result,) = adapt_documents(model, [Document("d", tokens, sliding_windows(150, 32, 1))], cfg)
print(json.dumps({{"flags": to_flags(cfg), "normalized_rows": other.sgd_rows, "lr": cfg.learning_rate,
                  "params": result.trainable_params, "nll": [w.nll_sum for w in result.windows]}}))
"""


@pytest.mark.slow  # a fresh process: torch and transformers imported again
def test_a_method_with_options_of_its_own_is_one_file(tiny_path, tiny_model):
    """tests/toy_method.py alone: its options become flags, enter the config and its normalization, and the
    loop runs it; the numbers equal a plain SGD loop written here."""
    code = TOY_RUN.format(tests=str(Path(__file__).parent), path=str(tiny_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["flags"] == ["--method", "sgd", "--window_size", "32", "--sgd_momentum", "0.5"]
    assert got["normalized_rows"] == 8 and got["lr"] == 0.05 and got["params"] == 3 * 2 * 64 * 8

    tokens = torch.randint(1, 512, (150,), generator=torch.Generator().manual_seed(0))
    windows = sliding_windows(150, 32, 1)
    memory = tiny_model.memorize(tokens[:32][None], keep_top=8).requires_grad_(True)
    optimizer = torch.optim.SGD([memory], lr=0.05, momentum=0.5)
    expected = []
    for w in windows:
        ids = tokens[w.start:w.end][None]
        nll = torch.nn.functional.cross_entropy(tiny_model(ids, memory=memory).logits[0, :-1], ids[0, 1:],
                                                reduction="none")[w.scored_from - w.start - 1:]
        expected.append(nll.sum().item())
        nll.mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert got["nll"] == pytest.approx(expected, rel=1e-4, abs=1e-3)
