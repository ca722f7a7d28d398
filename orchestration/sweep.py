"""Ray Tune sweeps of Locas settings on a dev set of PG-19 books (issue 6; SPEC §6: tune on validation).

A **space** names which AdaptConfig settings vary: grid values (every combination) and sampled values
(drawn `num_samples` times per grid point, like Tune). It is expanded here, on the driver, into a list of
AdaptConfigs with a seeded sampler, so the same command always yields the same trials. A trial is keyed by
its `config_id` and is one unit of the run store (`unit_id = "sweep:pg19:<config_id>"`), so a rerun of the
same command (or of a wider space on the same --output) skips every trial already in the ledger.

    space = parse_space(grid=["memory_width=16,64", "memory_init=highest,random"],
                        sample=["lr=loguniform:1e-4:1e-2"], num_samples=4)
    configs = expand_space(space, AdaptConfig(window_size=2048))
    result = run_sweep(configs, spec, books, "runs/sweep", data="emozilla/pg19", split="validation")

Each trial adapts to the books one after another (`run_pg19_books`) and reports the running PPL
(exp Σnll / Σscored over the books so far) after each book with `ray.tune.report`, so ASHA can stop it.
The trial process keeps the loaded model in a module-level cache keyed by the model spec, and Tune reuses
trial actors (`reuse_actors=True`), so a worker loads the model once for many trials; each trial records
its process id and that process's load count.

The driver alone writes the store (a Tune callback): per trial its `book` rows and one `trial` row, then a
ledger line; `trials.csv` (the per-trial table) is rewritten after every trial.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from locas.config import AdaptConfig, ModelSpec
from locas.data.pg19 import DEFAULT_DATASET, Book
from locas.errors import LocasError
from orchestration.worker import _node_name, one_line

TASK = "pg19-sweep"
TRIALS_CSV = "trials.csv"
TUNE_DIR = "tune"

# name on the command line / in YAML → (AdaptConfig field, type)
SWEEPABLE: dict[str, tuple[str, type]] = {
    "method": ("method", str),
    "memory_width": ("memory_width", int),
    "memory_init": ("memory_init", str),
    "loss_function": ("loss", str),
    "lr": ("lr", float),
    "steps_per_window": ("steps_per_window", int),
    "window_size": ("window_size", int),
    "lora_rank": ("lora_rank", int),
    "lora_alpha": ("lora_alpha", int),
}
ALIASES = {"loss": "loss_function", "steps": "steps_per_window"}
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
# settings a method never reads: reset to the fixed value so equivalent trials share one config_id
UNUSED_BY_METHOD = {
    "none": ("loss", "memory_width", "memory_init", "lr", "steps_per_window", "lora_rank", "lora_alpha"),
    "locas": ("lora_rank", "lora_alpha"),
    "lora": ("memory_width", "memory_init"),
}
CONFIG_COLUMNS = list(SWEEPABLE)
TABLE_COLUMNS = ["trial", *CONFIG_COLUMNS, "ppl", "books_done", "books_total", "seconds", "status",
                 "worker_pid", "loads", "node", "error"]
STATUSES = ("completed", "stopped", "error")  # ran every book / stopped early by ASHA / failed


# --------------------------------------------------------------------------- the space

@dataclass(frozen=True)
class Sampler:
    """One sampled parameter: `uniform:LO:HI`, `loguniform:LO:HI`, `randint:LO:HI` (inclusive), `choice:A,B`."""

    dist: str
    args: tuple

    def draw(self, rng: random.Random, kind: type):
        if self.dist == "choice":
            return rng.choice(self.args)
        lo, hi = self.args
        if self.dist == "randint":
            return rng.randint(lo, hi)
        value = math.exp(rng.uniform(math.log(lo), math.log(hi))) if self.dist == "loguniform" else rng.uniform(lo, hi)
        return int(round(value)) if kind is int else value

    def spec(self) -> str:
        if self.dist == "choice":
            return "choice:" + ",".join(map(str, self.args))
        return f"{self.dist}:{self.args[0]}:{self.args[1]}"


@dataclass(frozen=True)
class SweepSpace:
    """grid: name → values (all combinations); sample: name → Sampler, drawn `num_samples` times per grid point."""

    grid: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)
    num_samples: int = 1
    seed: int = 0

    def to_dict(self) -> dict:
        return {"grid": {k: list(v) for k, v in self.grid.items()},
                "sample": {k: s.spec() for k, s in self.sample.items()},
                "num_samples": self.num_samples, "seed": self.seed}


def _param(name: str, where: str) -> str:
    key = ALIASES.get(str(name).strip(), str(name).strip())
    if key not in SWEEPABLE:
        raise LocasError(f"{where}: unknown sweep parameter {name!r}; sweepable: {', '.join(SWEEPABLE)}")
    return key


def _convert(name: str, value, where: str):
    kind = SWEEPABLE[name][1]
    if isinstance(value, str):
        value = value.strip()
    try:
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
    except (TypeError, ValueError):
        raise LocasError(f"{where}: {name} value {value!r} is not {'an integer' if kind is int else 'a number'}") \
            from None
    if not isinstance(value, str) or not value:
        raise LocasError(f"{where}: {name} value {value!r} must be a non-empty word")
    return value


def _grid_values(name: str, values, where: str) -> list:
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()] if values.strip() else []
    elif not isinstance(values, (list, tuple)):
        values = [values]
    if not values:
        raise LocasError(f"{where}: the grid for {name} is empty; give at least one value, e.g. {name}=a,b")
    out = []
    for v in values:
        v = _convert(name, v, where)
        if v not in out:
            out.append(v)
    return out


def parse_sampler(name: str, text, where: str = "--sample") -> Sampler:
    """`uniform:LO:HI`, `loguniform:LO:HI`, `randint:LO:HI` (both ends included) or `choice:A,B,...`;
    a YAML list is a choice."""
    if isinstance(text, (list, tuple)):
        dist, rest = "choice", list(text)
    else:
        dist, _, rest = str(text).strip().partition(":")
    usage = (f"{where}: bad sampler {text!r} for {name}: use uniform:LO:HI, loguniform:LO:HI, "
             f"randint:LO:HI or choice:A,B")
    if dist not in DISTRIBUTIONS:
        raise LocasError(usage)
    kind = SWEEPABLE[name][1]
    if dist == "choice":
        values = _grid_values(name, rest, where) if rest else []
        if not values:
            raise LocasError(usage)
        return Sampler("choice", tuple(values))
    if kind is str:
        raise LocasError(f"{where}: {name} takes words: sample it with choice:A,B")
    parts = rest.split(":")
    if len(parts) != 2:
        raise LocasError(usage)
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise LocasError(usage) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise LocasError(f"{where}: bad sampler {text!r} for {name}: need finite LO < HI")
    if dist == "loguniform" and lo <= 0:
        raise LocasError(f"{where}: bad sampler {text!r} for {name}: loguniform needs LO > 0")
    if dist == "randint":
        if kind is not int or not (lo.is_integer() and hi.is_integer()):
            raise LocasError(f"{where}: bad sampler {text!r} for {name}: randint needs an integer parameter "
                             "and integer bounds")
        return Sampler("randint", (int(lo), int(hi)))
    return Sampler(dist, (lo, hi))


def _split_assignment(text: str, flag: str) -> tuple[str, str]:
    name, eq, value = str(text).partition("=")
    if not eq or not name.strip():
        raise LocasError(f"{flag} {text!r}: write NAME=VALUES, e.g. {flag} memory_width=16,64")
    return name, value


def load_space_file(path) -> dict:
    """A YAML space: `grid: {name: [values]}`, `sample: {name: "dist:args" or [choices]}`, optional
    `num_samples`, `seed`."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise LocasError(f"--space {p}: file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LocasError(f"--space {p}: not valid YAML ({' '.join(str(e).split())})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise LocasError(f"--space {p}: expected a mapping with grid:, sample:, num_samples:, seed:")
    unknown = sorted(set(data) - {"grid", "sample", "num_samples", "seed"})
    if unknown:
        raise LocasError(f"--space {p}: unknown key(s) {', '.join(map(str, unknown))}; "
                         "known: grid, sample, num_samples, seed")
    for key in ("grid", "sample"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise LocasError(f"--space {p}: {key} must be a mapping of parameter names")
    return data


def parse_space(grid=(), sample=(), space_file=None, num_samples: int | None = None,
                seed: int | None = None) -> SweepSpace:
    """Build a space from `--grid NAME=a,b` / `--sample NAME=dist:...` strings and/or a YAML file.

    A parameter may appear once (in the grid or sampled, on the command line or in the file);
    `num_samples` and `seed` given here override the file's. Any mistake is one LocasError.
    """
    file = load_space_file(space_file) if space_file else {}
    where_file = f"--space {space_file}"
    g: dict[str, list] = {}
    s: dict[str, Sampler] = {}

    def claim(name, where):
        key = _param(name, where)
        if key in g or key in s:
            raise LocasError(f"{where}: {key} is given twice; sweep each parameter once (grid or sample)")
        return key

    for name, values in (file.get("grid") or {}).items():
        key = claim(name, where_file)
        g[key] = _grid_values(key, values, where_file)
    for name, text in (file.get("sample") or {}).items():
        key = claim(name, where_file)
        s[key] = parse_sampler(key, text, where_file)
    for text in grid or ():
        name, values = _split_assignment(text, "--grid")
        key = claim(name, "--grid")
        g[key] = _grid_values(key, values, f"--grid {text}")
    for text in sample or ():
        name, spec = _split_assignment(text, "--sample")
        key = claim(name, "--sample")
        s[key] = parse_sampler(key, spec, f"--sample {text}")
    if not g and not s:
        raise LocasError("nothing to sweep: give --grid NAME=a,b, --sample NAME=dist:... or --space FILE.yaml "
                         f"(sweepable: {', '.join(SWEEPABLE)})")
    n = num_samples if num_samples is not None else file.get("num_samples", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LocasError(f"num_samples must be a whole number >= 1, not {n!r}")
    sd = seed if seed is not None else file.get("seed", 0)
    if isinstance(sd, bool) or not isinstance(sd, int):
        raise LocasError(f"seed must be a whole number, not {sd!r}")
    return SweepSpace(grid=g, sample=s, num_samples=n, seed=sd)


def normalize(cfg: AdaptConfig, base: AdaptConfig) -> AdaptConfig:
    """Reset the settings `cfg.method` never reads to `base`'s, so equivalent trials are one trial."""
    return cfg.replace(**{f: getattr(base, f) for f in UNUSED_BY_METHOD[cfg.method]})


def expand_space(space: SweepSpace, base: AdaptConfig) -> list[AdaptConfig]:
    """Every trial of the space, in a fixed order, duplicates (same config_id) dropped.

    For each of `num_samples` rounds, for each grid combination (in the order given), the sampled
    parameters are drawn from one `random.Random(space.seed)`: the same space gives the same trials.
    """
    rng = random.Random(space.seed)
    names = list(space.grid)
    combos = list(itertools.product(*(space.grid[n] for n in names))) if names else [()]
    out: dict[str, AdaptConfig] = {}
    for _ in range(space.num_samples):
        for combo in combos:
            values = dict(zip(names, combo))
            for name in sorted(space.sample):
                values[name] = space.sample[name].draw(rng, SWEEPABLE[name][1])
            changes = {SWEEPABLE[n][0]: v for n, v in values.items()}
            try:
                cfg = normalize(base.replace(**changes), base)
            except LocasError as e:
                raise LocasError(f"sweep space: {e}") from None
            out.setdefault(cfg.config_id, cfg)
    return list(out.values())


def config_columns(cfg: AdaptConfig) -> dict:
    """The table's config columns, with the method's effective lr and steps."""
    return {"method": cfg.method, "memory_width": cfg.memory_width, "memory_init": cfg.memory_init,
            "loss_function": cfg.loss, "lr": cfg.learning_rate, "steps_per_window": cfg.steps,
            "window_size": cfg.window_size, "lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha}


def trial_unit_id(cfg: AdaptConfig) -> str:
    return f"sweep:pg19:{cfg.config_id}"


# --------------------------------------------------------------------------- dev-set guard

def refuse_test_split(data: str, split: str, book_ids=(), allow_test: bool = False) -> None:
    """Sweeps tune on the dev set: refuse the test split, a folder named test, or books a nearby
    `test_split_ids.tsv` lists, unless `allow_test`."""
    if allow_test:
        return
    hint = "sweeps tune on the dev set (--split validation); pass --allow_test to sweep on test books anyway"
    if str(split).strip().lower() == "test":
        raise LocasError(f"--split test is PG-19's test split: {hint}")
    root = Path(str(data)).expanduser()
    if not root.is_dir():
        return
    folder = root / split if (root / split).is_dir() else root
    for p in {root.resolve(), folder.resolve()}:
        if p.name.lower() == "test":
            raise LocasError(f"--data {data} is a folder named test: {hint}")
    ids = {str(b) for b in book_ids}
    for listing in {folder.resolve() / "test_split_ids.tsv", folder.resolve().parent / "test_split_ids.tsv"}:
        if ids and listing.is_file():
            listed = {line.split("\t")[1].strip() for line in listing.read_text(encoding="utf-8").splitlines()[1:]
                      if line.count("\t") >= 1}
            hit = sorted(ids & listed)
            if hit:
                raise LocasError(f"--data {data}: book(s) {', '.join(hit[:3])} are PG-19 test books "
                                 f"(listed in {listing}): {hint}")


# --------------------------------------------------------------------------- inside a trial process

_MODELS: dict[str, Any] = {}
_LOADS: dict[str, int] = {}


def cached_model(spec: dict, loader: Callable[[dict], Any] | None = None) -> tuple[Any, int]:
    """The model for `spec`, loaded at most once per process while the spec stays the same.

    Returns (model, loads): how many times this process has loaded this spec (1 when reused every time).
    A different spec evicts the cached model first, so a GPU never holds two.
    """
    key = json.dumps(spec, sort_keys=True)
    if key not in _MODELS:
        if _MODELS:
            _MODELS.clear()
            _free_accelerator_memory()
        if loader is None:
            from locas.model import load_for_worker as loader
        _MODELS[key] = loader(spec)
        _LOADS[key] = _LOADS.get(key, 0) + 1
    return _MODELS[key], _LOADS[key]


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _tokenizer(model, spec: dict):
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec["model"], trust_remote_code=spec.get("trust_remote_code", False))
        model.tokenizer = tok
    return tok


def trial_function(config: dict, *, configs: dict, books: list, spec: dict, batch_size: int = 1) -> None:
    """One Tune trial: adapt to every book in turn under `configs[config["config_id"]]`; after each book,
    report the running PPL. A failure (any exception, or a book that stops with an error) ends the trial
    with a last report carrying `trial_error`; ASHA's stop arrives as SystemExit from `tune.report`."""
    from ray import tune

    from locas.tasks.pg19 import run_pg19_books
    from orchestration.store import to_json_value

    cid = config["config_id"]
    state = {"config_id": cid, "worker_pid": os.getpid(), "loads": 0, "books_total": len(books),
             "books_done": 0, "nll_sum": 0.0, "scored_tokens": 0, "ppl": float("nan"), "seconds": 0.0,
             "node": _node_name(), "trial_error": "", "book_json": ""}
    results = None
    start = time.time()
    try:
        cfg = AdaptConfig.from_dict(configs[cid])
        model, state["loads"] = cached_model(spec)
        tokenizer = _tokenizer(model, spec)
        start = time.time()
        results = run_pg19_books(model, tokenizer, books, cfg, batch_size=batch_size)
        for _book, rows in results:
            row = rows[-1]
            state["books_done"] += 1
            state["book_json"] = json.dumps(to_json_value(row, "book row"), allow_nan=False)
            if row.get("error"):
                state["trial_error"] = f"book {row.get('book_id')}: {row['error']}"
            elif math.isfinite(row["nll_sum"]) and row["scored_tokens"]:
                state["nll_sum"] += row["nll_sum"]
                state["scored_tokens"] += row["scored_tokens"]
                state["ppl"] = math.exp(state["nll_sum"] / state["scored_tokens"])
            state["seconds"] = time.time() - start
            tune.report(dict(state))
            if state["trial_error"]:
                return
            state["book_json"] = ""
    except Exception as e:  # noqa: BLE001 - any failure of a setting is that trial's recorded error
        state["trial_error"] = one_line(e)
        state["book_json"] = ""
        state["seconds"] = time.time() - start
        tune.report(dict(state))
    finally:
        if results is not None:
            results.close()  # runs the method's finish (e.g. removes a LoRA adapter from the cached model)


# --------------------------------------------------------------------------- the driver

@dataclass
class SweepResult:
    table: Any  # pandas.DataFrame, one row per trial in the store, best first
    best: dict | None
    best_command: str | None
    trials_csv: Path
    ran: int  # trials finished by this call
    skipped: int  # trials of `configs` already finished before this call
    remaining: list = field(default_factory=list)  # config ids of `configs` still unfinished: rerun for them


def store_config(spec: ModelSpec, data: str, split: str, books: list[Book]) -> tuple[dict, str]:
    """What every trial of this run folder shares (model, data, books): the store's config and its id.
    The space is not part of it, so a wider space on the same --output reuses the finished trials."""
    import hashlib

    config = {"task": TASK, "model": spec.to_dict(), "data": str(data), "split": split,
              "books": [b.book_id for b in books]}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return config, digest


def trial_table(store) -> Any:
    """The `trial` rows of the store as a DataFrame in TABLE_COLUMNS order, best (lowest PPL) first."""
    import pandas as pd

    rows = [r for r in store.rows() if r.get("kind") == "trial"]
    if not rows:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    df = pd.DataFrame([{c: r.get(c) for c in TABLE_COLUMNS} for r in rows])
    order = df["status"].map({"completed": 0, "stopped": 1}).fillna(2)
    df = df.assign(_o=order).sort_values(["_o", "ppl"], na_position="last", kind="stable").drop(columns="_o")
    return df.reset_index(drop=True)


def write_trials_csv(store) -> Path:
    """Rewrite OUT/trials.csv atomically from the store."""
    df = trial_table(store)
    path = store.path / TRIALS_CSV
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def best_trial(df) -> dict | None:
    """The completed trial with the lowest finite PPL, or None."""
    if df is None or not len(df):
        return None
    ok = df[(df["status"] == "completed") & df["ppl"].notna()]
    ok = ok[ok["ppl"].map(lambda v: math.isfinite(float(v)))]
    if not len(ok):
        return None
    return ok.loc[ok["ppl"].astype(float).idxmin()].to_dict()


def test_data_for(data: str, split: str) -> str:
    """Where the test books are, given the dev data: a hub id, or a folder with split subfolders; a plain
    folder of dev books says nothing about the test books, so the default hub id is used."""
    root = Path(str(data)).expanduser()
    if root.is_dir():
        if any((root / s).is_dir() for s in ("test", "validation", split)):
            return str(data)
        return DEFAULT_DATASET
    return str(data)


def best_command(cfg: AdaptConfig, spec: ModelSpec, test_data: str, num_gpus: int = 0) -> str:
    """The `run_pg19.py` command that runs `cfg` on the test set (whole books: dev-set truncation and book
    limits are not carried over)."""
    import shlex

    parts = ["python", "orchestration/run_pg19.py", "--model", spec.model, "--dtype", spec.dtype,
             "--method", cfg.method, "--memory_width", cfg.memory_width, "--memory_init", cfg.memory_init,
             "--loss_function", cfg.loss, "--lr", repr(float(cfg.learning_rate)),
             "--steps_per_window", cfg.steps, "--window_size", cfg.window_size, "--overlap", cfg.overlap,
             "--lora_rank", cfg.lora_rank, "--lora_alpha", cfg.lora_alpha, "--seed", cfg.seed]
    if spec.trust_remote_code:
        parts.append("--trust_remote_code")
    if num_gpus:
        parts += ["--num_gpus", num_gpus]
    parts += ["--data", test_data, "--split", "test", "--output", f"runs/pg19-test-{cfg.config_id}"]
    return " ".join(shlex.quote(str(p)) for p in parts)


def _tune_callback(store, configs: dict, books_total: int, asha_stopped: set, progress):
    """The driver's only writer: collects each trial's book rows and, when it ends, appends them and a
    `trial` row to the store with a ledger line, then rewrites trials.csv."""
    from ray.tune import Callback

    class StoreWriter(Callback):
        def __init__(self):
            self.books: dict[str, list] = {}
            self.last: dict[str, dict] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            cid = trial.config["config_id"]
            self.last[cid] = dict(result)
            if result.get("book_json"):
                row = json.loads(result["book_json"])
                self.books.setdefault(cid, []).append({**row, "config_id": cid, "trial": cid})
                if progress is not None:
                    progress.update(1)
                    ppl = result.get("ppl")
                    if ppl is not None and math.isfinite(ppl):
                        progress.set_postfix_str(f"last {cid} ppl {ppl:.3f}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            cid = trial.config["config_id"]
            print(f"trial {cid}: its worker process failed ({_trial_error(trial)}); rerun to retry it")

        def _finish(self, trial):
            cid = trial.config["config_id"]
            last = self.last.get(cid, {})
            if last.get("trial_error"):
                status = "error"
            elif last.get("books_done") == books_total:
                status = "completed"
            elif trial.trial_id in asha_stopped:
                status = "stopped"
            else:  # ended without finishing (an interrupted sweep): not ledgered, a rerun runs it again
                return
            cfg = configs[cid]
            trow = {"kind": "trial", "task": "pg19", "config_id": cid, "trial": cid,
                    **config_columns(cfg), "adapt": cfg.to_dict(),
                    "ppl": last.get("ppl"), "books_done": last.get("books_done", 0), "books_total": books_total,
                    "nll_sum": last.get("nll_sum"), "scored_tokens": last.get("scored_tokens"),
                    "seconds": last.get("seconds"), "status": status, "worker_pid": last.get("worker_pid"),
                    "loads": last.get("loads"), "node": last.get("node"), "error": last.get("trial_error") or None}
            books = [{**r, "method": cfg.method} for r in self.books.get(cid, [])]
            store.append(trial_unit_id(cfg), books + [trow], status="failed" if status == "error" else "done")
            write_trials_csv(store)
            if progress is not None and status != "completed":
                progress.update(max(0, books_total - trow["books_done"]))

    return StoreWriter()


def _trial_error(trial) -> str:
    try:
        err = trial.get_error()
        return one_line(err) if err is not None else "unknown error"
    except Exception:  # noqa: BLE001 - best effort: the message is informational
        return "unknown error"


def _asha(max_t: int):
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        """ASHA that remembers which trials it stopped (to tell them from interrupted ones)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.stopped_ids: set[str] = set()

        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP:
                self.stopped_ids.add(trial.trial_id)
            return decision

    return RecordingASHA(time_attr="books_done", max_t=max(1, max_t), grace_period=1, reduction_factor=2)


def trial_resources(num_gpus: float, gpus_per_trial: float | None, cluster: dict,
                    num_workers: int = 1) -> tuple[dict, int]:
    """(resources per trial, trials at once): GPU trials take `gpus_per_trial` (default 1) of `num_gpus`;
    CPU trials take 1 CPU each, `num_workers` at once, never more than the cluster has."""
    if num_gpus < 0 or num_workers < 1:
        raise LocasError("--num_gpus must be >= 0 and --num_workers >= 1")
    if num_gpus > cluster.get("GPU", 0):
        raise LocasError(f"--num_gpus {num_gpus:g} but the Ray cluster has {cluster.get('GPU', 0):g} GPUs")
    if num_gpus:
        gpt = 1 if gpus_per_trial is None else gpus_per_trial
        if not 0 < gpt <= num_gpus:
            raise LocasError(f"--gpus_per_trial {gpt:g} must be > 0 and at most --num_gpus {num_gpus:g}")
        return {"cpu": 1, "gpu": gpt}, max(1, int(num_gpus // gpt + 1e-9))
    if gpus_per_trial:
        raise LocasError("--gpus_per_trial needs --num_gpus > 0")
    return {"cpu": 1}, max(1, min(num_workers, int(cluster.get("CPU", 1))))


def run_sweep(configs: list[AdaptConfig], spec: ModelSpec, books: list[Book], output, *, data: str,
              split: str = "validation", num_gpus: float = 0, gpus_per_trial: float | None = None,
              num_workers: int = 1, asha: bool = False, batch_size: int = 1, test_data: str | None = None,
              progress: bool = True, max_trials: int | None = None) -> SweepResult:
    """Run every trial of `configs` not yet finished in the run folder `output`; Ray must be initialized.

    `max_trials` runs at most that many of the unfinished trials (the rest wait for a rerun). A trial that
    did not end (interrupted sweep, dead worker) is not in the ledger and is listed in `remaining`."""
    import ray
    from ray import tune

    from orchestration.store import RunStore

    if not configs:
        raise LocasError("nothing to sweep: the space has no trials")
    if not books:
        raise LocasError("nothing to sweep on: the data selection is empty")
    if batch_size < 1 or (max_trials is not None and max_trials < 1):
        raise LocasError("--batch_size and --max_trials must be >= 1")
    if not ray.is_initialized():
        raise LocasError("call ray.init() before run_sweep")
    cluster = ray.cluster_resources()
    resources, at_once = trial_resources(num_gpus, gpus_per_trial, cluster, num_workers)
    config, config_id = store_config(spec, data, split, books)
    store = RunStore(output).open(TASK, config, config_id, cluster)
    finished = store.finished()
    by_id = {c.config_id: c for c in configs}
    todo = [c for c in configs if trial_unit_id(c) not in finished]
    skipped = len(configs) - len(todo)
    if max_trials is not None:
        todo = todo[:max_trials]
    if todo:
        worker_spec = {k: v for k, v in spec.to_dict().items() if k != "attn_implementation" or v}
        scheduler = _asha(len(books)) if asha else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo) * len(books), desc=f"sweep: {len(todo)} trials", unit="book")
        trainable = tune.with_resources(
            tune.with_parameters(trial_function, configs={c.config_id: c.to_dict() for c in todo}, books=books,
                                 spec=worker_spec, batch_size=batch_size),
            resources)
        tuner = tune.Tuner(
            trainable,
            param_space={"config_id": tune.grid_search([c.config_id for c in todo])},
            tune_config=tune.TuneConfig(metric="ppl", mode="min", scheduler=scheduler,
                                        max_concurrent_trials=min(at_once, len(todo)), reuse_actors=True,
                                        trial_dirname_creator=lambda t: f"{t.config['config_id']}_{t.trial_id}"),
            run_config=tune.RunConfig(
                storage_path=str((Path(output) / TUNE_DIR).resolve()),
                name=time.strftime("trials-%Y%m%d-%H%M%S"), verbose=0,
                callbacks=[_tune_callback(store, by_id, len(books),
                                          scheduler.stopped_ids if scheduler else set(), bar)]),
        )
        try:
            tuner.fit()
        finally:
            if bar is not None:
                bar.close()
    finished = store.finished()
    ran = sum(trial_unit_id(c) in finished for c in todo)
    remaining = [c.config_id for c in configs if trial_unit_id(c) not in finished]
    csv_path = write_trials_csv(store)
    df = trial_table(store)
    best = best_trial(df)
    command = None
    if best is not None:
        cfg = AdaptConfig.from_dict(_adapt_of(store, best["trial"]))
        command = best_command(cfg, spec, test_data or test_data_for(data, split), num_gpus)
    store.write_summary({"task": TASK, "trials": len(df), "ran": ran, "skipped": skipped, "remaining": remaining,
                         "statuses": {s: int((df["status"] == s).sum()) for s in STATUSES} if len(df) else {},
                         "best": best, "best_command": command, "trials_csv": str(csv_path)})
    return SweepResult(df, best, command, csv_path, ran, skipped, remaining)


def _adapt_of(store, config_id: str) -> dict:
    for row in store.rows():
        if row.get("kind") == "trial" and row.get("config_id") == config_id:
            return row["adapt"]
    raise LocasError(f"trial {config_id} has no trial row in {store.path}")
