"""Sweep spaces (grids, sampled settings, YAML files) expanded into trials, and their mistakes as one line."""
from pathlib import Path

import pytest

from locas.config import AdaptConfig
from locas.errors import LocasError
from orchestration.run_sweep import main
from orchestration.sweep.space import expand_space, parse_space

EXAMPLE = Path(__file__).resolve().parents[1] / "orchestration" / "sweeps" / "example.yaml"


def test_grid_and_sampled_space_expand_to_the_same_trials_every_time():
    space = parse_space(["memory_width=16,64", "memory_init=highest,random"], ["lr=loguniform:1e-4:1e-2"],
                        num_samples=3, seed=7)
    configs = expand_space(space, AdaptConfig(window_size=256))
    assert len(configs) == 12 and len({c.config_id for c in configs}) == 12
    assert {(c.memory_width, c.memory_init) for c in configs} == {(16, "highest"), (16, "random"),
                                                                   (64, "highest"), (64, "random")}
    assert all(1e-4 <= c.lr <= 1e-2 and c.window_size == 256 for c in configs)
    again = expand_space(parse_space(["memory_width=16,64", "memory_init=highest,random"],
                                     ["lr=loguniform:1e-4:1e-2"], num_samples=3, seed=7), AdaptConfig(window_size=256))
    assert [c.config_id for c in again] == [c.config_id for c in configs]


def test_every_sweepable_setting_and_the_aliases():
    from ray import tune

    space = parse_space(["method=locas,lora", "loss_function=NTP,ST", "steps=1,2", "window_size=64",
                         "lora_rank=4,8"], ["lr=uniform:0.001:0.002", "memory_width=randint:4:8",
                                            "memory_init=choice:highest,lowest"], num_samples=4, seed=1)
    assert isinstance(space.params["lr"], tune.search.sample.Float) and space.params["method"] == \
        tune.grid_search(["locas", "lora"])  # Tune's own distributions: any Tune search algorithm takes them
    configs = expand_space(space, AdaptConfig())
    assert {c.loss for c in configs} == {"NTP", "SD"} and {c.steps_per_window for c in configs} == {1, 2}
    assert {c.method for c in configs} == {"locas", "lora"}
    assert {c.lora_rank for c in configs if c.method == "lora"} == {4, 8}
    assert {c.lora_rank for c in configs if c.method == "locas"} == {64}  # unused by locas: one trial, not two
    widths = {c.memory_width for c in configs if c.method == "locas"}
    assert widths <= {4, 5, 6, 7} and len(widths) > 1  # Tune's randint: the upper bound is excluded


def test_settings_a_method_never_reads_do_not_multiply_trials():
    configs = expand_space(parse_space(["method=none,locas", "memory_width=8,16", "lr=1e-3,1e-2"]), AdaptConfig())
    assert sum(c.method == "none" for c in configs) == 1 and sum(c.method == "locas" for c in configs) == 4


def test_example_yaml_space(tmp_path):
    space = parse_space(space_file=EXAMPLE)
    assert set(space.params) == {"memory_width", "memory_init", "loss", "lr"}
    assert len(expand_space(space, AdaptConfig())) == 2 * 2 * 2 * space.num_samples
    assert parse_space(space_file=EXAMPLE, num_samples=1).num_samples == 1  # the flag wins over the file


@pytest.mark.parametrize("grid, sample, match", [
    (["bogus=1,2"], [], "unknown sweep parameter 'bogus'"),
    (["memory_width="], [], "grid for memory_width is empty"),
    (["memory_width=16,abc"], [], "not an integer"),
    (["memory_width"], [], "NAME=VALUES"),
    ([], ["lr=gaussian:0:1"], "bad sampler"),
    ([], ["lr=loguniform:0:1"], "loguniform needs LO > 0"),
    ([], ["lr=randint:1:4"], "a number: use uniform or loguniform"),
    ([], ["memory_width=uniform:1:4"], "an integer: use randint or lograndint"),
    ([], ["lr=uniform:2:1"], "LO < HI"),
    ([], ["lr=uniform:1"], "bad sampler"),
    ([], ["memory_init=uniform:1:2"], "choice:A,B"),
    ([], ["memory_width=choice:"], "bad sampler"),
    (["lr=1e-3"], ["lr=uniform:1e-4:1e-2"], "given twice"),
    (["memory_init=sideways"], [], "unknown memory_init 'sideways'"),
    (["window_size=1"], [], "window_size=1 is too short"),
    ([], [], "nothing to sweep"),
])
def test_an_invalid_space_is_one_clear_error(grid, sample, match):
    with pytest.raises(LocasError, match=match):
        expand_space(parse_space(grid, sample), AdaptConfig())


def test_an_invalid_yaml_space_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    for text, match in [("grid:\n  memory_width: []\n", "empty"), ("grid:\n  depth: [1]\n", "unknown sweep"),
                        ("grids:\n  memory_width: [1]\n", "unknown key"), ("grid: [1, 2]\n", "mapping"),
                        ("grid: {memory_width: [8}\n", "not valid YAML")]:
        bad.write_text(text)
        with pytest.raises(LocasError, match=match):
            parse_space(space_file=bad)
    with pytest.raises(LocasError, match="file not found"):
        parse_space(space_file=tmp_path / "missing.yaml")


def test_cli_prints_a_space_mistake_as_one_line(capsys):
    assert main(["--grid", "bogus=1,2", "--output", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bogus" in err and len(err.splitlines()) == 1
