"""The run folder of a job and the training config it records: one folder per multirun job, no resume across
configs, and the value a Hydra sweeper optimises (``optimized_metric``). Torch-free."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wan2.config_check import ConfigError

log = logging.getLogger("wan2")

RUN_CONFIG_FILE = "train_config.json"  # in the run folder: the training config the run started with
# compared on resume: what defines the training (validation, sampling, logging and hardware may change)
RESUME_COMPARED = ("model", "objective", "lora", "data", "seed")
TRAINER_COMPARED = ("precision", "gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches")
RESUME_IGNORED = (
    "objective.sample",
    "objective.compile",  # how the step runs, not what it computes
    "data.val_batch_size",
    "data.num_val",
    "data.num_workers",
    "data.batch_size",
)


def use_job_dir(cfg: DictConfig) -> None:
    """In a multirun (``-m``) each job writes to its own Hydra job folder (``hydra.sweep.dir``/``subdir``)
    unless the command set ``paths.output_dir`` itself (train.py refuses one fixed folder for several jobs)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    if any(o.lstrip("+~").partition("=")[0] == "paths.output_dir" for o in hc.overrides.task):
        return
    cfg.paths.output_dir = hc.runtime.output_dir


def training_config(cfg: DictConfig) -> dict[str, Any]:
    """The settings that define what a run trains, flat (``lora.rank: 4``), interpolations as written (a
    ``${now:}`` or the latest export do not differ between a run and its resume). The batch is the global one
    (``data.batch_size`` x devices x nodes): a DDP run may resume on another number of ranks."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            flat[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    kept = {
        k: v
        for k, v in flat.items()
        if k.split(".")[0] in RESUME_COMPARED
        and not any(k == i or k.startswith(f"{i}.") for i in RESUME_IGNORED)
    }
    kept.update({f"trainer.{k}": flat[f"trainer.{k}"] for k in TRAINER_COMPARED if f"trainer.{k}" in flat})
    world = [flat.get("trainer.devices", 1), flat.get("trainer.num_nodes", 1)]
    batch = flat.get("data.batch_size")
    if isinstance(batch, int) and all(isinstance(w, int) for w in world):
        kept["global batch (data.batch_size x devices x nodes)"] = batch * world[0] * world[1]
    else:  # "auto" devices: compared as written
        kept["global batch (data.batch_size x devices x nodes)"] = f"{batch} x {world[0]} x {world[1]}"
    return kept


def _run_folder_of(ckpt: Path) -> Path:
    """The run folder a checkpoint belongs to: ``<run>/checkpoints/last.ckpt`` (or a sharded folder there)."""
    for parent in ckpt.parents:
        if parent.name == "checkpoints":
            return parent.parent
    return ckpt.parent


def check_resume_config(cfg: DictConfig, ckpt_path: str | None) -> None:
    """Refuse (one line naming the differing keys) to resume a checkpoint trained with another config."""
    if ckpt_path is None:
        return
    stored = _run_folder_of(Path(ckpt_path)) / RUN_CONFIG_FILE
    if not stored.is_file():  # a checkpoint from elsewhere or from before this record existed
        log.warning("no %s next to %s: resuming without comparing configs", RUN_CONFIG_FILE, ckpt_path)
        return
    try:
        old = json.loads(stored.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"ckpt_path: cannot read {str(stored)!r}: {err}") from None
    new = json.loads(json.dumps(training_config(cfg), default=str))  # as stored: enums as text
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in diff[:8])
        more = f" (+{len(diff) - 8} more)" if len(diff) > 8 else ""
        raise ConfigError(
            f"ckpt_path: {ckpt_path!r} was trained with another config ({shown}{more}); on resume only the budget "
            "(trainer.max_steps / max_time), validation, logging and hardware may change: use a new "
            "paths.output_dir or the run's own settings"
        )


def record_training_config(cfg: DictConfig, out_dir: Path) -> None:
    """Write ``train_config.json`` in the run folder (rank 0, at start) for ``check_resume_config``."""
    from wan2.export import atomic_write_text

    text = json.dumps(training_config(cfg), indent=1, sort_keys=True, default=str)
    atomic_write_text(out_dir / RUN_CONFIG_FILE, text)


def objective_value(cfg: DictConfig, metrics: dict | None) -> float | None:
    """``metrics[optimized_metric]`` as a float for a Hydra sweeper (None when no metric is configured; NaN, with
    a warning naming the metrics there are, when the run did not log it: the sweeper marks the trial failed)."""
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    if not metrics or key not in metrics:
        log.warning(
            "optimized_metric %r was not logged (metrics: %s): returning nan", key, sorted(metrics or {})
        )
        return math.nan
    return float(metrics[key])
