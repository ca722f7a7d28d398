"""What the driver does with a registered task (`locas.tasks`): its options' data paths made absolute, the run
id of a run, how many of its documents an actor adapts at once, and the workers' runners."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from locas.config import AdaptConfig, ModelSpec, Settings
from locas.contract import content_id
from locas.tasks import Task, tasks


def resolved(options: Settings) -> Settings:
    """Local data paths as absolute paths: actors and Ray jobs run in other folders."""
    changes = {}
    for name in ("data", "books"):
        value = getattr(options, name, None)
        if value is not None and Path(value).expanduser().exists():
            changes[name] = str(Path(value).expanduser().resolve())
    return options.replace(**changes)


def run_config(task: Task, spec: ModelSpec, cfg: AdaptConfig, options: Settings) -> tuple[dict, str]:
    """What decides every unit's rows (the options that only select units are left out, so a run can be
    extended), and its hash: the run id."""
    kept = {f.name: getattr(options, f.name) for f in fields(options) if not f.metadata.get("selects")}
    config = {"task": task.name, "model": spec.to_dict(), "adapt": cfg.to_dict(), "options": kept}
    if task.text:
        config["text"] = task.text
    return config, content_id(config)


def documents_at_once(task: Task, cfg: AdaptConfig, on_gpu: bool, flag: int | None = None) -> int:
    """Documents adapted at once per actor: the `--batch_size` flag, else on GPUs the method's batch where the
    task batches documents (PG-19 under locas or none: 8 for NTP, 4 for SD/MIX), else 1 (LoRA, GRPO, LoCoMo
    and MMLU units run one at a time: more would idle other GPUs)."""
    if flag is not None:
        return flag
    return cfg.batch_on_gpu() if task.batches and on_gpu else 1


def runners() -> dict:
    """task → its worker-side runner, for the registered tasks."""
    return {name: task.run for name, task in tasks().items()}
