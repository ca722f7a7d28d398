"""Ray Tune sweeps (issue 6): spaces, the dev-set guard, the per-process model cache, and whole sweeps on a
local Ray with the tiny model (a 4-trial grid, an interrupted sweep resumed, ASHA with failing trials)."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from locas.config import AdaptConfig, ModelSpec
from locas.errors import LocasError
from orchestration import sweep
from orchestration.run_sweep import main
from orchestration.sweep import (best_command, cached_model, expand_space, parse_space, refuse_test_split,
                                 trial_resources)

EXAMPLE = Path(__file__).resolve().parents[1] / "orchestration" / "sweeps" / "example.yaml"


# --------------------------------------------------------------------------- spaces

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
    space = parse_space(["method=locas,lora", "loss_function=NTP,ST", "steps=1,2", "window_size=64",
                         "lora_rank=4,8"], ["lr=uniform:0.001:0.002", "memory_width=randint:4:8",
                                            "memory_init=choice:highest,lowest"], seed=1)
    configs = expand_space(space, AdaptConfig())
    assert {c.loss for c in configs} == {"NTP", "SD"} and {c.steps_per_window for c in configs} == {1, 2}
    assert {c.method for c in configs} == {"locas", "lora"}
    assert {c.lora_rank for c in configs if c.method == "lora"} == {4, 8}
    assert {c.lora_rank for c in configs if c.method == "locas"} == {64}  # unused by locas: one trial, not two
    assert all(4 <= c.memory_width <= 8 for c in configs if c.method == "locas")


def test_settings_a_method_never_reads_do_not_multiply_trials():
    configs = expand_space(parse_space(["method=none,locas", "memory_width=8,16", "lr=1e-3,1e-2"]), AdaptConfig())
    assert sum(c.method == "none" for c in configs) == 1 and sum(c.method == "locas" for c in configs) == 4


def test_example_yaml_space(tmp_path):
    space = parse_space(space_file=EXAMPLE)
    assert set(space.grid) == {"memory_width", "memory_init", "loss_function"} and set(space.sample) == {"lr"}
    assert len(expand_space(space, AdaptConfig())) == 2 * 2 * 2 * space.num_samples
    assert parse_space(space_file=EXAMPLE, num_samples=1).num_samples == 1  # the flag wins over the file


@pytest.mark.parametrize("grid, sample, match", [
    (["bogus=1,2"], [], "unknown sweep parameter 'bogus'"),
    (["memory_width="], [], "grid for memory_width is empty"),
    (["memory_width=16,abc"], [], "not an integer"),
    (["memory_width"], [], "NAME=VALUES"),
    ([], ["lr=gaussian:0:1"], "bad sampler"),
    ([], ["lr=loguniform:0:1"], "loguniform needs LO > 0"),
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


# --------------------------------------------------------------------------- dev set, resources, commands

def test_the_test_split_is_refused_unless_allowed(tmp_path, capsys):
    with pytest.raises(LocasError, match="--allow_test"):
        refuse_test_split("emozilla/pg19", "test")
    (tmp_path / "pg19" / "test").mkdir(parents=True)
    with pytest.raises(LocasError, match="folder named test"):
        refuse_test_split(str(tmp_path / "pg19" / "test"), "validation")
    books = tmp_path / "shared" / "books"
    books.mkdir(parents=True)
    (tmp_path / "shared" / "test_split_ids.tsv").write_text("index\tbook_id\ttitle\n0\t10146\tReminiscences\n")
    with pytest.raises(LocasError, match="10146 are PG-19 test books"):
        refuse_test_split(str(books), "validation", ["10146"])
    refuse_test_split(str(books), "validation", ["999"])
    refuse_test_split("emozilla/pg19", "test", allow_test=True)
    refuse_test_split("emozilla/pg19", "validation")
    assert main(["--grid", "memory_width=8,16", "--split", "test", "--output", str(tmp_path / "o")]) == 2
    assert "--allow_test" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_trial_resources():
    assert trial_resources(4, None, {"GPU": 8, "CPU": 64}) == ({"cpu": 1, "gpu": 1}, 4)
    assert trial_resources(2, 0.5, {"GPU": 2, "CPU": 64}) == ({"cpu": 1, "gpu": 0.5}, 4)
    assert trial_resources(0, None, {"CPU": 2}, num_workers=8) == ({"cpu": 1}, 2)
    with pytest.raises(LocasError, match="has 0 GPUs"):
        trial_resources(1, None, {"CPU": 2})
    with pytest.raises(LocasError, match="needs --num_gpus"):
        trial_resources(0, 1, {"CPU": 2})


def test_best_command_runs_the_setting_on_the_test_split():
    cfg = AdaptConfig(method="locas", memory_width=16, memory_init="random", loss="SD", lr=1e-3, window_size=512)
    cmd = best_command(cfg, ModelSpec(model="Qwen/Qwen3-1.7B-Base"), "emozilla/pg19", num_gpus=8)
    assert cmd.startswith("python orchestration/run_pg19.py --model Qwen/Qwen3-1.7B-Base")
    for flag in ("--method locas", "--memory_width 16", "--memory_init random", "--loss_function SD", "--lr 0.001",
                 "--steps_per_window 1", "--window_size 512", "--lora_rank 64", "--data emozilla/pg19",
                 "--split test", "--num_gpus 8"):
        assert flag in cmd
    from orchestration.run_pg19 import build_parser

    args = build_parser().parse_args(cmd.split()[2:])  # the printed flags are the run script's own
    assert (args.split, args.memory_width, args.loss_function, args.lr) == ("test", 16, "SD", 1e-3)


def test_the_model_is_loaded_once_per_process_and_spec(monkeypatch):
    monkeypatch.setattr(sweep, "_MODELS", {})
    monkeypatch.setattr(sweep, "_LOADS", {})
    loaded = []

    def loader(spec):
        loaded.append(spec["model"])
        return object()

    a, n1 = cached_model({"model": "a"}, loader)
    b, n2 = cached_model({"model": "a"}, loader)
    assert a is b and (n1, n2) == (1, 1) and loaded == ["a"]
    c, n3 = cached_model({"model": "b"}, loader)
    assert c is not a and n3 == 1 and len(sweep._MODELS) == 1  # a new spec evicts the old model
    cached_model({"model": "a"}, loader)
    assert sweep._LOADS == {json.dumps({"model": "a"}): 2, json.dumps({"model": "b"}): 1}


# --------------------------------------------------------------------------- sweeps on a local Ray

@pytest.fixture(scope="module")
def dev_books(tmp_path_factory):
    from locas.tiny import sample_text

    folder = tmp_path_factory.mktemp("dev-books")
    for i in range(3):
        (folder / f"book{i}.txt").write_text(sample_text(250 + 100 * i, seed=10 + i))
    return folder


def sweep_args(tiny_path, dev_books, output, *extra):
    return ["--model", str(tiny_path), "--dtype", "float32", "--data", str(dev_books), "--window_size", "64",
            "--memory_width", "8", "--output", str(output), "--no_progress", *extra]


def test_a_4_trial_grid_writes_one_row_per_trial(ray_local, tiny_path, dev_books, tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = ["--grid", "memory_width=4,8", "--grid", "memory_init=highest,random"]
    assert main(sweep_args(tiny_path, dev_books, out, *grid)) == 0
    printed = capsys.readouterr().out
    df = pd.read_csv(out / "trials.csv")
    assert len(df) == 4 and df["trial"].is_unique
    assert set(zip(df["memory_width"], df["memory_init"])) == {(4, "highest"), (4, "random"), (8, "highest"),
                                                               (8, "random")}
    assert (df["status"] == "completed").all() and (df["books_done"] == 3).all()
    assert df["ppl"].map(math.isfinite).all() and (df["ppl"] > 1).all()
    assert (df["method"] == "locas").all() and (df["lr"] == 4e-3).all() and (df["window_size"] == 64).all()
    assert (df["loads"] == 1).all()  # each worker process loaded the model once, however many trials it ran
    assert list(df["ppl"]) == sorted(df["ppl"])  # best first
    best = df.iloc[0]
    assert f"--memory_width {best['memory_width']} --memory_init {best['memory_init']}" in printed
    assert "orchestration/run_pg19.py" in printed and "--split test" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["trial"] == best["trial"] and summary["statuses"]["completed"] == 4
    # the store holds each trial's book rows and its trial row, one ledger line per trial
    from orchestration.store import read_ledger, read_rows

    assert len(read_ledger(out)) == 4
    rows = read_rows(out)
    assert sum(r["kind"] == "book" for r in rows) == 12 and sum(r["kind"] == "trial" for r in rows) == 4
    book_ppl = {r["config_id"]: r for r in rows if r["kind"] == "trial"}
    for cid, trow in book_ppl.items():
        books = [r for r in rows if r["kind"] == "book" and r["config_id"] == cid]
        assert trow["ppl"] == pytest.approx(math.exp(sum(b["nll_sum"] for b in books) /
                                                     sum(b["scored_tokens"] for b in books)))


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_local, tiny_path, dev_books, tmp_path,
                                                                         capsys):
    out = tmp_path / "sweep"
    cmd = sweep_args(tiny_path, dev_books, out, "--grid", "memory_width=4,8", "--grid", "loss_function=NTP,SD",
                     "--max_books", "2")
    assert main(cmd + ["--max_trials", "2"]) == 0  # stops after 2 trials, as an interruption would
    assert "2 ran now, 0 already finished, 2 not finished yet" in capsys.readouterr().out
    first = pd.read_csv(out / "trials.csv")
    assert len(first) == 2
    assert main(cmd) == 0  # the same command again
    assert "2 ran now, 2 already finished" in capsys.readouterr().out
    df = pd.read_csv(out / "trials.csv")
    assert len(df) == 4 and df["trial"].is_unique and (df["books_done"] == 2).all()
    assert set(first["trial"]) < set(df["trial"])
    kept = df.set_index("trial").loc[first["trial"]]
    assert list(kept["seconds"]) == list(first.set_index("trial")["seconds"])  # not rerun
    assert main(cmd) == 0
    assert "0 ran now, 4 already finished" in capsys.readouterr().out
    from orchestration.store import read_ledger

    assert len(read_ledger(out)) == 4
    # another model or other books in the same folder is refused, not mixed in
    assert main(sweep_args(tiny_path, dev_books, out, "--grid", "memory_width=4,8")) == 2
    assert "use another --output" in capsys.readouterr().err


def test_asha_and_a_too_wide_memory(ray_local, tiny_path, dev_books, tmp_path, capsys):
    out = tmp_path / "sweep"
    # a width larger than the MLP is refused before any trial runs
    assert main(sweep_args(tiny_path, dev_books, out, "--grid", "memory_width=4,512")) == 2
    assert "larger than the model's MLP" in capsys.readouterr().err and not out.exists()
    assert main(sweep_args(tiny_path, dev_books, out, "--grid", "memory_width=4,8", "--grid",
                           "method=locas,none", "--asha")) == 0
    capsys.readouterr()
    df = pd.read_csv(out / "trials.csv")
    assert len(df) == 3  # 2 widths for locas, one trial for none
    assert set(df["status"]) <= {"completed", "stopped"} and (df["status"] == "completed").any()
    assert df["ppl"].map(math.isfinite).all()
    assert (df.loc[df["status"] == "stopped", "books_done"] < 3).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["status"] == "completed" and summary["remaining"] == []
