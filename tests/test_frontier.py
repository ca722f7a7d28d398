"""The tuned-LoRA sweep (issue 23): the shipped space, the best trial per cost level, and the study of test runs
it writes, read back by the study parser."""
import json
from pathlib import Path

import pandas as pd
import pytest

from locas.config import AdaptConfig, ModelSpec
from locas.errors import LocasError
from orchestration.study import plan_study
from orchestration.sweep.frontier import best_per_level, cost_levels, write_frontier
from orchestration.sweep.plan import plan_sweep

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_lora_sweep_covers_rank_lr_and_steps_on_the_dev_books():
    sweep = plan_sweep(["--space", str(ROOT / "orchestration/sweeps/lora.yaml"), "--data", "emozilla/pg19",
                        "--best_per", "steps", "--output", "x"], check_models=False)
    configs = sweep.configs
    assert len(configs) == 45 and {c.method for c in configs} == {"lora"}
    assert {(c.lora_rank, c.lr, c.steps) for c in configs} == {
        (rank, lr, steps) for rank in (8, 32, 128) for lr in (1e-5, 3e-5, 1e-4, 3e-4, 1e-3) for steps in (1, 2, 4)}
    assert sweep.plan.options.split == "validation" and cost_levels(sweep.sweep.best_per) == ("steps_per_window",)


def test_a_cost_level_that_is_not_a_setting_is_refused_before_the_sweep():
    with pytest.raises(LocasError, match="unknown sweep parameter 'speed'"):
        cost_levels("steps_per_window,speed")


def test_the_best_trial_of_each_cost_level_runs_on_the_test_books_beside_locas(tmp_path):
    configs = {}
    rows = []
    for steps, rank, ppl, status in [(1, 8, 30.0, "completed"), (1, 32, 29.0, "completed"), (2, 8, 27.5, "completed"),
                                     (2, 32, 26.0, "error"), (4, 8, 25.0, "stopped"), (4, 32, None, "completed")]:
        cfg = AdaptConfig(method="lora", lora_rank=rank, steps_per_window=steps, lr=1e-4, window_size=256,
                          max_tokens=4096)
        configs[cfg.config_id] = cfg
        rows.append({"trial": cfg.config_id, "steps_per_window": steps, "lora_rank": rank, "ppl": ppl,
                     "status": status})
    table = pd.DataFrame(rows).iloc[::-1]  # the order of the table does not matter
    best = best_per_level(table, ("steps_per_window",), configs)
    assert [(c.steps, c.lora_rank) for c in best] == [(1, 32), (2, 8)]  # level 4 has no completed trial with a PPL

    folder = tmp_path / "sweep-lora"
    folder.mkdir()
    path, command = write_frontier(folder, table, ("steps_per_window",), configs, ModelSpec(model="org/m"),
                                   "emozilla/pg19", num_gpus=8)
    assert command == (f"python orchestration/run_study.py {path} --num_gpus 8 --output "
                       f"{tmp_path / 'sweep-lora-frontier'}")
    runs = {run.name: run.plans[0][1] for run in plan_study(path, tmp_path / "out", check_models=False)}
    assert sorted(runs) == ["frozen", "locas", "lora-steps-per-window-1", "lora-steps-per-window-2"]
    for name, cfg in zip(["lora-steps-per-window-1", "lora-steps-per-window-2"], best):
        assert runs[name].cfg == cfg.replace(max_tokens=None)  # whole test books
    assert all(p.options.split == "test" and p.spec.model == "org/m" for p in runs.values())
    assert (runs["locas"].cfg.method, runs["locas"].cfg.window_size, runs["frozen"].cfg.method) == ("locas", 256,
                                                                                                    "none")


def test_one_command_tunes_lora_then_runs_the_best_of_each_level_beside_locas(ray_local, tmp_path, capsys):
    """`--frontier_output`: the sweep, then its best_per_cost.yaml as a study, in one command."""
    from orchestration.run_sweep import main

    frontier = tmp_path / "frontier"
    assert main(["--demo", "--grid", "method=lora", "--grid", "steps_per_window=1,2", "--best_per", "steps_per_window",
                 "--max_books", "1", "--no_progress", "--output", str(tmp_path / "sweep"),
                 "--frontier_output", str(frontier)]) == 0
    status = json.loads((frontier / "study.json").read_text())
    assert status["study"] == str(tmp_path / "sweep" / "best_per_cost.yaml") and status["state"] == "finished"
    assert sorted(status["runs"]) == ["frozen", "locas", "lora-steps-per-window-1", "lora-steps-per-window-2"]
    assert all(run["done"] == run["units"] > 0 and not run["failed"] for run in status["runs"].values())
    assert (frontier / "report.md").exists() and "frontier: running" in capsys.readouterr().out
