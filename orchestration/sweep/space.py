"""A sweep space as Ray Tune's own distributions, and its trials.

`--grid NAME=a,b` becomes `tune.grid_search`, `--sample NAME=DIST:ARGS` one of `tune.uniform`,
`tune.loguniform`, `tune.randint` / `tune.lograndint` (Tune's bounds: the upper one excluded) or
`tune.choice`; a YAML file (`--space`) holds the same under `grid:` and `sample:`. So the space can go to any
Tune search algorithm as it is; by default it is expanded here with Tune's own variant generator under a
fixed seed, so the same command always gives the same trials, each keyed by its adaptation config's id.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from locas.config import AdaptConfig
from locas.errors import LocasError
from locas.yaml_file import read_yaml

SWEEPABLE = tuple(f.name for f in fields(AdaptConfig) if f.metadata.get("sweep"))
"""AdaptConfig fields a sweep may vary (declared where each is: `option(..., sweep=True)`); their flag aliases
(loss_function, steps) are accepted too."""
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "lograndint", "choice")


@dataclass(frozen=True)
class SweepSpace:
    """`params`: field → a Tune domain or `tune.grid_search`; sampled `num_samples` times under `seed`."""

    params: dict = field(default_factory=dict)
    num_samples: int = 1
    seed: int = 0


def _aliases() -> dict[str, str]:
    return {alias: f.name for f in fields(AdaptConfig) for alias in f.metadata.get("aliases", ())}


def _kind(name: str) -> type:
    annotation = typing.get_type_hints(AdaptConfig)[name]
    return next(a for a in (*typing.get_args(annotation), annotation) if a in (int, float, str))


def _param(name: str, where: str) -> str:
    key = _aliases().get(str(name).strip(), str(name).strip())
    if key not in SWEEPABLE:
        raise LocasError(f"{where}: unknown sweep parameter {name!r}; sweepable: {', '.join(SWEEPABLE)}")
    return key


def _value(name: str, value, where: str):
    kind = _kind(name)
    text = value.strip() if isinstance(value, str) else value
    try:
        if isinstance(text, bool):
            raise ValueError
        if kind is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind is float:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
    except (TypeError, ValueError):
        raise LocasError(f"{where}: {name} value {value!r} is not {'an integer' if kind is int else 'a number'}") \
            from None
    if not isinstance(text, str) or not text:
        raise LocasError(f"{where}: {name} value {value!r} must be a non-empty word")
    return text


def _values(name: str, values, where: str) -> list:
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    elif not isinstance(values, (list, tuple)):
        values = [values]
    if not values:
        raise LocasError(f"{where}: the grid for {name} is empty; give at least one value, e.g. {name}=a,b")
    return list(dict.fromkeys(_value(name, v, where) for v in values))


def sampler(name: str, text, where: str = "--sample"):
    """A Tune domain from `uniform:LO:HI`, `loguniform:LO:HI`, `randint:LO:HI`, `lograndint:LO:HI` (HI
    excluded, as in Tune) or `choice:A,B` (a YAML list is a choice)."""
    from ray import tune

    dist, _, rest = ("choice", None, text) if isinstance(text, (list, tuple)) else str(text).strip().partition(":")
    usage = f"{where}: bad sampler {text!r} for {name}: use {', '.join(d + ':...' for d in DISTRIBUTIONS)}"
    if dist not in DISTRIBUTIONS:
        raise LocasError(usage)
    if dist == "choice":
        if not rest:
            raise LocasError(usage)
        return tune.choice(_values(name, rest, where))
    kind = _kind(name)
    if kind is str:
        raise LocasError(f"{where}: {name} takes words: sample it with choice:A,B")
    parts = str(rest).split(":")
    if len(parts) != 2:
        raise LocasError(usage)
    try:
        lo, hi = (int(p) if dist.endswith("randint") else float(p) for p in parts)
    except ValueError:
        raise LocasError(usage) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise LocasError(f"{where}: bad sampler {text!r} for {name}: need LO < HI")
    if dist.startswith("log") and lo <= 0:
        raise LocasError(f"{where}: bad sampler {text!r} for {name}: {dist} needs LO > 0")
    if dist.endswith("randint") != (kind is int):
        raise LocasError(f"{where}: {name} is {'an integer: use randint or lograndint' if kind is int else 'a number: use uniform or loguniform'}")
    return getattr(tune, dist)(lo, hi)


def _assignment(text: str, flag: str) -> tuple[str, str]:
    name, eq, value = str(text).partition("=")
    if not eq or not name.strip():
        raise LocasError(f"{flag} {text!r}: write NAME=VALUES, e.g. {flag} memory_width=16,64")
    return name, value


def load_space_file(path) -> dict:
    """A YAML space: `grid: {name: [values]}`, `sample: {name: "dist:args" or [choices]}`, optional
    `num_samples`, `seed`."""
    p = Path(path).expanduser()
    data = read_yaml(p, f"--space {p}")
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
    """A space from `--grid NAME=a,b` / `--sample NAME=DIST:...` strings and/or a YAML file. A parameter
    may appear once; `num_samples` and `seed` given here override the file's. A mistake is one LocasError."""
    from ray import tune

    file = load_space_file(space_file) if space_file else {}
    params: dict = {}

    def claim(name, where):
        key = _param(name, where)
        if key in params:
            raise LocasError(f"{where}: {key} is given twice; sweep each parameter once (grid or sample)")
        return key

    where_file = f"--space {space_file}"
    for name, values in (file.get("grid") or {}).items():
        key = claim(name, where_file)
        params[key] = tune.grid_search(_values(key, values, where_file))
    for name, text in (file.get("sample") or {}).items():
        key = claim(name, where_file)
        params[key] = sampler(key, text, where_file)
    for text in grid or ():
        name, values = _assignment(text, "--grid")
        key = claim(name, "--grid")
        params[key] = tune.grid_search(_values(key, values, f"--grid {text}"))
    for text in sample or ():
        name, spec = _assignment(text, "--sample")
        key = claim(name, "--sample")
        params[key] = sampler(key, spec, f"--sample {text}")
    if not params:
        raise LocasError("nothing to sweep: give --grid NAME=a,b, --sample NAME=DIST:... or --space FILE.yaml "
                         f"(sweepable: {', '.join(SWEEPABLE)})")
    n = num_samples if num_samples is not None else file.get("num_samples", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LocasError(f"num_samples must be a whole number >= 1, not {n!r}")
    sd = seed if seed is not None else file.get("seed", 0)
    if isinstance(sd, bool) or not isinstance(sd, int):
        raise LocasError(f"seed must be a whole number, not {sd!r}")
    return SweepSpace(params, n, sd)


def trial_config(values: dict, base: AdaptConfig) -> AdaptConfig:
    """The adaptation config of one trial: `base` with the trial's values, normalized (settings its method
    never reads are base's, so equivalent trials share one config_id)."""
    try:
        return base.replace(**values).normalized(base)
    except LocasError as e:
        raise LocasError(f"sweep space: {e}") from None


def expand_space(space: SweepSpace, base: AdaptConfig) -> list[AdaptConfig]:
    """Every trial of the space in Tune's order (grid combinations, `num_samples` rounds, samples drawn by
    Tune's variant generator from one seeded random state), duplicates (same config_id) dropped."""
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    random_state = np.random.RandomState(space.seed)
    out: dict[str, AdaptConfig] = {}
    for _ in range(space.num_samples):
        for _, values in generate_variants(space.params, random_state=random_state):
            cfg = trial_config(values, base)
            out.setdefault(cfg.config_id, cfg)
    return list(out.values())
