"""What the entry scripts share: one set of flag names, config building, checks, and the driver's run.

Every script: parse flags into configs, check the model and data before anything is written, `ray.init()`
(joins a running cluster, else starts a local one), run the units, print the table and where the rows are.
A user mistake is printed as one line `error: ...` with exit code 2.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
from pathlib import Path

from locas.config import DTYPES, LOSSES, LOSS_ALIASES, MEMORY_INITS, METHODS, AdaptConfig, ModelSpec
from locas.errors import LocasError

DEFAULT_MODEL = "Qwen/Qwen3-1.7B-Base"
GPU_BATCH = {"NTP": 8, "SD": 4, "MIX": 4}  # PG-19 books per GPU for locas/none: batch 1 is launch-bound


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every entry script shares; scripts add their own task flags."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and devices")
    g.add_argument("--model", default=DEFAULT_MODEL, help="local checkpoint folder or hub id")
    g.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    g.add_argument("--num_gpus", type=int, default=0, help="GPU actors, one GPU each; 0 runs on CPU actors")
    g.add_argument("--num_workers", type=int, default=1, help="CPU actors when --num_gpus 0")
    g.add_argument("--batch_size", type=int, default=None,
                   help="PG-19 books adapted at once per actor (locas/none); default on GPUs: 8 for NTP, "
                        "4 for SD/MIX (their teacher logits take memory), else 1")
    g.add_argument("--trust_remote_code", action="store_true", help="allow code shipped with the checkpoint")
    g.add_argument("--compile", action="store_true", help="torch.compile the backbone (pays off on GPUs)")
    g = p.add_argument_group("method, memory and optimizer")
    g.add_argument("--method", default="locas", choices=METHODS)
    g.add_argument("--memory_width", type=int, default=64, help="memory rows r per layer (keep_top)")
    g.add_argument("--memory_init", default="highest", choices=MEMORY_INITS)
    g.add_argument("--loss_function", default="NTP", choices=LOSSES + tuple(LOSS_ALIASES))
    g.add_argument("--lr", type=float, default=None, help="default: the method's own (locas 4e-3, lora 5e-5)")
    g.add_argument("--steps", "--steps_per_window", dest="steps", type=int, default=None,
                   help="optimizer steps per window/chunk; default: the method's own")
    g.add_argument("--window_size", type=int, default=2048)
    g.add_argument("--overlap", type=int, default=1)
    g.add_argument("--lora_rank", type=int, default=64)
    g.add_argument("--lora_alpha", type=int, default=64)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("data and output")
    g.add_argument("--data", default=None, help="a folder or a hub dataset id")
    g.add_argument("--output", default=None, help="run folder; rerunning the same command resumes it")
    g.add_argument("--demo", action="store_true",
                   help="a tiny model and built-in text on a local Ray: the whole path in under 2 minutes")
    g.add_argument("--no_progress", action="store_true")
    return p


def adapt_config(args, **task_defaults) -> AdaptConfig:
    values = dict(method=args.method, loss=args.loss_function, memory_width=args.memory_width,
                  memory_init=args.memory_init, lr=args.lr, steps_per_window=args.steps,
                  window_size=args.window_size, overlap=args.overlap, lora_rank=args.lora_rank,
                  lora_alpha=args.lora_alpha, seed=args.seed, max_tokens=getattr(args, "max_tokens", None))
    for key, value in task_defaults.items():
        if values.get(key) is None:
            values[key] = value
    return AdaptConfig(**values)


def batch_size(args, task: str = "pg19") -> int:
    """Units per actor: the flag, else a batch that fills a GPU where documents batch (PG-19 under locas or
    none), else 1 (LoRA, GRPO, LoCoMo and MMLU units run one at a time: more would idle other GPUs)."""
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise LocasError(f"--batch_size {args.batch_size} must be at least 1")
        return args.batch_size
    batches = task == "pg19" and args.method in ("none", "locas") and args.num_gpus
    return GPU_BATCH.get(LOSS_ALIASES.get(args.loss_function, args.loss_function), 1) if batches else 1


def model_spec(args) -> ModelSpec:
    """A local checkpoint is recorded by its absolute path: Tune trials and actors run in other folders."""
    local = Path(str(args.model)).expanduser()
    model = str(local.resolve()) if local.exists() else str(args.model)
    return ModelSpec(model=model, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                     compile=args.compile)


def check_model(spec: ModelSpec, cfg: AdaptConfig | None = None) -> None:
    """Fail before anything is written when the checkpoint cannot be found (a folder or a hub id), or
    cannot take the memory asked for."""
    path = Path(spec.model).expanduser()
    looks_local = path.exists() or spec.model.startswith((".", "/", "~")) or spec.model.count("/") > 1
    if looks_local and not (path / "config.json").is_file():
        raise LocasError(f"model not found: {path} is not a checkpoint folder (no config.json)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path) if looks_local else spec.model,
                                            trust_remote_code=spec.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any failure to resolve the id is the same user error
        raise LocasError(f"model {spec.model!r} could not be found locally or on the hub: "
                         f"{str(e).splitlines()[0]}") from None
    width, act = getattr(config, "intermediate_size", None), getattr(config, "hidden_act", None)
    if width is None or act not in ("silu", "swish"):
        raise LocasError(f"model {spec.model!r} ({config.model_type}) has no gated SiLU MLP, which Locas needs")
    if cfg is not None and cfg.method == "locas" and cfg.memory_width > width:
        raise LocasError(f"--memory_width {cfg.memory_width} is larger than the model's MLP ({width} units)")


def run_config_id(task: str, spec: ModelSpec, cfg: AdaptConfig, options: dict) -> tuple[dict, str]:
    """The run's config (what decides each unit's rows) and its stable id."""
    config = {"task": task, "model": spec.to_dict(), "adapt": cfg.to_dict(), "options": options}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return config, digest


def parse_run_args(p: argparse.ArgumentParser, argv, prepare_demo=None):
    """Parse flags; `--demo` fills in its tiny inputs (where the script has a demo); `--output` is required."""
    args = p.parse_args(argv)
    if args.demo:
        if prepare_demo is None:
            raise LocasError("--demo belongs to run_pg19.py and run_sweep.py; this command needs --data")
        prepare_demo(args)
    if not args.output:
        raise LocasError("--output is required: the run folder where the results go")
    return args


def start_ray(demo: bool) -> None:
    """Join the running cluster if there is one, else start a local Ray (2 CPUs, no dashboard for --demo)."""
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        demo_ray = {"address": "local", "num_cpus": 2, "include_dashboard": False}  # its own, even beside a cluster
        ray.init(**(demo_ray if demo else {}), log_to_driver=False)


def cli_main(main):
    """Wrap an entry script's main: a LocasError is one line on stderr and exit code 2."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        try:
            return main(argv) or 0
        except LocasError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: rerun the same command to resume", file=sys.stderr)
            return 130
    return wrapped


def execute(task: str, units: list, args, spec: ModelSpec, config: dict, config_id: str):
    """Open the store, start or join Ray, run every unit not yet finished; returns the store."""
    import ray

    from orchestration.scheduler import run_units
    from orchestration.store import RunStore
    from orchestration.units import BATCH_RUNNERS, RUNNERS
    from orchestration.worker import remote_worker_class

    if not units:
        raise LocasError("nothing to run: the data selection is empty")
    if args.num_gpus < 0 or args.num_workers < 1:
        raise LocasError("--num_gpus must be >= 0 and --num_workers >= 1")
    start_ray(args.demo)
    resources = ray.cluster_resources()
    if args.num_gpus > resources.get("GPU", 0):
        raise LocasError(f"--num_gpus {args.num_gpus} but the Ray cluster has {resources.get('GPU', 0):g} GPUs")
    store = RunStore(args.output).open(task, config, config_id, resources)
    actor_class = remote_worker_class(num_gpus=1 if args.num_gpus else 0)
    num_workers = args.num_gpus or args.num_workers
    worker_spec = {k: v for k, v in spec.to_dict().items() if k != "attn_implementation" or v}

    def make_worker():
        return actor_class.remote(worker_spec, RUNNERS, batch_runners=BATCH_RUNNERS)

    counts = run_units(units, make_worker, store, num_workers=num_workers, slots=batch_size(args, task),
                       progress=not args.no_progress)
    print(f"units: {counts['done']} done, {counts['failed']} failed, {counts['skipped']} already finished")
    workers = {(r.get("node"), r.get("device")) for r in store.rows() if r.get("node")}
    store.update_manifest(workers=[{"node": n, "device": d} for n, d in sorted(workers, key=str)])
    return store


def print_table(rows: list[dict], columns: list[str]) -> None:
    import pandas as pd

    if rows:
        print(pd.DataFrame(rows)[[c for c in columns if c in rows[0]]].to_string(index=False))
