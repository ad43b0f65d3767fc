"""``train(cfg)``: Hydra config -> backbone, data, objective, Trainer -> run folder with checkpoints and export.

Everything a run writes lives in ``cfg.paths.output_dir``; ``outputs/<name>/latest`` points at the newest
finished run so that experiments chain (``lora_rankup`` reads ``outputs/pretrain_tiny/latest/export``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

import wan2.config_resolvers  # noqa: F401
from wan2 import startup
from wan2.backbones.stack import BackboneError, build_backbone
from wan2.config_check import ConfigError  # noqa: F401  (re-exported: wan2.tasks.ConfigError)
from wan2.data.cache import StaleCacheError
from wan2.export import atomic_write_text, card_info, record_train_run, remove_leftovers, write_model_cards
from wan2.lightning.compile import compile_problem
from wan2.lightning.distributed import FSDP2Strategy, is_fsdp
from wan2.lightning.loggers import LogStep, flat_config, train_run
from wan2.lightning.reliability import (
    PREEMPTED_EXIT_CODE,
    AtomicCheckpointIO,
    CorruptCheckpointError,
    NonFiniteError,
    NonFiniteGuard,
    Preempted,
    Preemption,
    StepSeed,
    UnsafeCheckpointError,
    check_sharded_checkpoint,
    safe_torch_load,
)
from wan2.memory.apply import MemoryPlacement, apply_memory
from wan2.memory.config import MemoryConfig
from wan2.run_config import check_resume_config, record_training_config, use_job_dir

log = logging.getLogger("wan2")


def validate(cfg: DictConfig) -> None:
    """Cheap checks before any model or data is built (one-line errors naming the key)."""
    from wan2.config_check import check_train_config

    check_train_config(cfg)


def check_fits(cfg: DictConfig, gpu_memory_gib: float | None = None) -> None:
    """Refuse a run the planner (``wan2.plan``, on the meta device: no weight is read) says does not fit the
    GPU, in one line with its numbers, before anything loads. ``gpu_memory_gib``: None = this CUDA device's
    memory on a GPU run, and no check on a CPU run."""
    from omegaconf import OmegaConf

    from wan2.plan import GiB, PlanError, plan_from_config

    if gpu_memory_gib is None:
        accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="cpu")
        if compute_device(accelerator) != "cuda" or not torch.cuda.is_available():
            return
        gpu_memory_gib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GiB
    try:
        plan = plan_from_config(cfg, gpu_memory_gib=gpu_memory_gib)
    except (PlanError, BackboneError, ValueError):  # not a transformer objective, or a folder the loader vets
        return
    key = plan["configured"]
    if plan["fits"][key]:
        return
    m = plan["memory_gib"][key]
    weights = sum(v for k, v in m.items() if k.startswith("weights_") or k == "block_swap_buffers")
    try:
        from hydra.core.hydra_config import HydraConfig

        preset = HydraConfig.get().runtime.choices.get("memory", "default")
    except ValueError:  # not under Hydra's main (tests)
        preset = "memory"
    raise ConfigError(
        f"memory: memory={preset} does not fit this GPU: the plan needs {m['total']:.1f} GiB, the GPU has "
        f"{gpu_memory_gib:.1f} GiB (weights {weights:.1f}, activations {m['activations']:.1f}, grads + AdamW + "
        f"EMA {m['grads'] + m['optimizer_adamw'] + m['ema']:.1f}, overhead {m['overhead']:.1f}; "
        f"{'with' if key == 'checkpointing' else 'without'} checkpointing); pick a preset that fits with "
        "`python scripts/plan.py <these overrides> memory=auto` (configs/memory/)"
    )


def _link_latest(run_dir: Path) -> None:
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, latest)


def _resolve_ckpt(ckpt_path, out_dir: Path, sharded_ok: bool = True):
    """The checkpoint to resume from, vetted before anything is built (one-line errors naming the file): a file
    loads weights-only (tensors mapped, not read); a sharded (FSDP) folder has ``meta.pt`` weights-only and
    ``.metadata`` through the restricted unpickler (``check_sharded_checkpoint``). ``last`` is vetted the same."""
    if ckpt_path in (None, "", "none"):
        return None
    if ckpt_path == "last":
        last = out_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            return None
        ckpt_path = str(last)
    path = Path(ckpt_path)
    try:
        if path.is_dir():
            if not (path / "meta.pt").is_file():
                raise ConfigError(
                    f"ckpt_path: {ckpt_path!r} is a folder but not a sharded checkpoint (no meta.pt)"
                )
            if not sharded_ok:
                raise ConfigError(
                    f"ckpt_path: {ckpt_path!r} is a sharded (FSDP) checkpoint folder: resume it with trainer=fsdp"
                )
            check_sharded_checkpoint(path)
            return str(path)
        if not path.is_file():
            raise ConfigError(
                f"ckpt_path: {ckpt_path!r} is not a file (use 'last' to resume the run folder's last.ckpt)"
            )
        safe_torch_load(path, mmap=True)  # refuse a pickle before anything is built; mmap: tensors not read
    except CorruptCheckpointError as err:
        others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path)
        raise CorruptCheckpointError(
            f"{err}; other checkpoints in {str(path.parent)!r}: {others}" if others else str(err)
        ) from None
    return str(path)


def _remove_leftovers(out_dir: Path) -> None:
    """Rank 0, at start: delete what killed checkpoint / export writes left in the run folder."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    found = remove_leftovers(out_dir) + remove_leftovers(out_dir / "checkpoints")
    if found:
        log.warning("removed %d leftovers of interrupted writes: %s", len(found), [p.name for p in found])


RUN_DIR_ENV = "WAN2_RUN_DIR"


def _share_run_dir(cfg: DictConfig) -> None:
    """One run folder for all ranks. Lightning starts ranks 1.. of a DDP / FSDP run by running train.py again
    (with the environment of rank 0): there ``${now:...}`` in ``paths.output_dir`` may name a later second, and
    ``ckpt_path=last`` would look in the wrong folder. Rank 0 passes its folder on in ``WAN2_RUN_DIR``."""
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_DIR_ENV):
        cfg.paths.output_dir = os.environ[RUN_DIR_ENV]
    else:
        os.environ[RUN_DIR_ENV] = str(cfg.paths.output_dir)


def reliability_callbacks(cfg: DictConfig, out_dir: Path) -> list:
    """Always installed: per-step seeding (exact resume), the non-finite step guard, preemption handling."""
    rel = cfg.get("reliability") or {}
    return [
        StepSeed(cfg.seed),
        NonFiniteGuard(int(rel.get("max_nonfinite_in_row", 20)), dirpath=out_dir / "checkpoints"),
        Preemption(out_dir / "checkpoints", tuple(rel.get("preemption_signals", ["SIGUSR1"]))),
    ]


def memory_settings(cfg: DictConfig) -> MemoryConfig:
    """The run's ``memory`` group (``wan2.memory.config``; a config without one gets the defaults)."""
    return MemoryConfig.build(cfg.get("memory"), at="memory")


def build_module(cfg: DictConfig) -> L.LightningModule:
    """The objective's LightningModule on the backbone ``cfg.model`` builds, with the ``memory`` settings
    applied (checkpointing, activation offload, frozen weights in the compute dtype)."""
    module = hydra.utils.instantiate(cfg.objective, _partial_=True, _convert_="all")(
        backbone=build_backbone(cfg.model)
    )
    apply_memory(
        module,
        memory_settings(cfg),
        cfg.trainer.get("precision", "32-true"),
        model_checkpointing=bool(cfg.model.get("gradient_checkpointing", False)),
        fsdp=is_fsdp(cfg.trainer.get("strategy")),
    )
    return module


def memory_callbacks(cfg: DictConfig) -> list:
    """``MemoryPlacement``: block swap and the encoders' place on a GPU run (``wan2.memory.apply.place``). The
    encoders stay in CPU memory under ``encoders_on_device=auto`` when the caches feed training (as the planner
    counts: the text encoder with ``data.cache_text`` and frozen, the VAE with a latent cache)."""
    mem = memory_settings(cfg)
    auto = mem.encoders_on_device == "auto"
    data, objective = cfg.get("data") or {}, cfg.get("objective") or {}
    text_off = auto and bool(data.get("cache_text", False)) and not objective.get("train_text_encoder", False)
    vae_off = auto and bool(data.get("cache_dir"))  # data=rankjump_latents, or shards with cache_dir
    return [MemoryPlacement(mem.block_swap, text_encoder_off=text_off, vae_off=vae_off)]


def compute_device(accelerator) -> str:
    """``cuda`` when the trainer's accelerator runs on a CUDA GPU here, else ``cpu``."""
    gpu = str(accelerator) in ("gpu", "cuda") or (str(accelerator) == "auto" and torch.cuda.is_available())
    return "cuda" if gpu else "cpu"


def _export(cfg: DictConfig, trainer: L.Trainer, module, datamodule, out_dir: Path) -> dict:
    """Rank 0 writes the export. Under FSDP2 every rank first gathers the whole state dict (a collective) and
    rank 0 exports from an unsharded copy of the module built as the run built it."""
    if not isinstance(trainer.strategy, FSDP2Strategy):
        return (module.export(out_dir, datamodule=datamodule) or {}) if trainer.is_global_zero else {}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    trainer.strategy.barrier("wan2_export_gathered")  # no rank leaves while another still reads the gather
    if not trainer.is_global_zero:
        return {}
    whole = build_module(cfg)
    whole.load_state_dict(full)
    if (
        getattr(module, "ema", None) is not None
    ):  # fsdp on one device only (FlowMatchingModule.configure_model)
        whole.ema.load_state_dict(module.ema.state_dict())
    whole.trainer = trainer  # global_step, the run folder
    return whole.export(out_dir, datamodule=datamodule) or {}


def train(cfg: DictConfig) -> dict:
    """Run one training job; returns the final metrics (also written to ``metrics.json``)."""
    validate(cfg)
    check_fits(cfg)  # the planner's verdict for this GPU, before any weight loads
    if memory_settings(cfg).fp8_frozen:  # can this device hold and upcast e4m3 weights (a probe)
        from wan2.memory.fp8 import fp8_problem

        if (problem := fp8_problem(compute_device(cfg.trainer.get("accelerator")))) is not None:
            raise ConfigError(f"memory.{problem}")
    if (cfg.get("objective") or {}).get("compile", False):  # Inductor needs a compiler before step 1
        if (problem := compile_problem(compute_device(cfg.trainer.get("accelerator")))) is not None:
            raise ConfigError(f"objective.compile: {problem}; set objective.compile=false")
    use_job_dir(cfg)  # -m: this job's own folder under hydra.sweep.dir
    _share_run_dir(cfg)
    out_dir = Path(cfg.paths.output_dir)
    ckpt_path = _resolve_ckpt(cfg.get("ckpt_path"), out_dir, sharded_ok=is_fsdp(cfg.trainer.get("strategy")))
    check_resume_config(cfg, ckpt_path)  # no resume across configs (max_steps / max_time may grow)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        record_training_config(cfg, out_dir)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(int(cfg.get("threads") or torch.get_num_threads()))

    # _convert_="all": plain dicts / lists in hyperparameters, so checkpoints load with weights_only=True
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    module = build_module(cfg)
    if hasattr(datamodule, "bind_backbone"):
        datamodule.bind_backbone(module.backbone)
    callbacks = [LogStep()]  # first: the loggers' step is right before anything logs (resumed runs)
    callbacks += [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += reliability_callbacks(cfg, out_dir)
    callbacks += memory_callbacks(cfg)
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    # FSDP writes sharded checkpoint directories itself (no CheckpointIO): atomic single files otherwise
    plugins = [] if is_fsdp(cfg.trainer.get("strategy")) else [AtomicCheckpointIO()]
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins
    )
    launcher = getattr(trainer.strategy, "launcher", None)
    if hasattr(launcher, "kill"):  # a start-up signal to rank 0 reaches DDP ranks 1.. too
        startup.forward_to(launcher.kill)
    flat = flat_config(cfg)  # the one config of the run (modules / datamodules log no hparams of their own)
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(flat)

    start = time.time()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException as err:
        raise Preempted(
            f"preempted at step {trainer.global_step}: saved {out_dir / 'checkpoints' / 'last.ckpt'}; "
            f"resume with ckpt_path=last paths.output_dir={out_dir}"
        ) from err
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
    metrics.update({"global_step": int(trainer.global_step), "train_seconds": round(time.time() - start, 1)})
    if not trainer.interrupted and cfg.get("export", {}).get("enabled", True):
        metrics.update(_export(cfg, trainer, module, datamodule, out_dir / "export"))
        if trainer.is_global_zero and (out_dir / "export").is_dir():  # evaluations of the export link back
            record_train_run(out_dir / "export", train_run(out_dir, str(cfg.name)))
        if trainer.is_global_zero:  # the model cards get what only the run knows (wan2.export.card_info)
            write_model_cards(out_dir / "export", card_info(cfg, module, metrics, out_dir))
    if trainer.world_size > 1:  # ranks 1.. outlive rank 0's export: none exits while the group may still talk
        trainer.strategy.barrier("wan2_run_end")
    if trainer.is_global_zero:
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
        for lg in loggers:  # the same summary keys in W&B, so runs compare side by side
            if hasattr(lg, "experiment") and hasattr(lg.experiment, "summary"):
                lg.experiment.summary.update({f"final/{k}": v for k, v in metrics.items()})
        if not trainer.interrupted:
            _link_latest(out_dir)
        log.info("run folder: %s", out_dir)
    return metrics


def run_cli(fn, cfg: DictConfig):
    """Call ``fn(cfg)``; a config or input error prints one line and exits 2 (no traceback)."""
    try:
        return fn(cfg)
    except (ConfigError, BackboneError, UnsafeCheckpointError, StaleCacheError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Preempted as err:
        print(f"stopped: {err}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    finally:
        try:
            import wandb

            if wandb.run is not None:
                wandb.finish()
        except ImportError:  # pragma: no cover
            pass
