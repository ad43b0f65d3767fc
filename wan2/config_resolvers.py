"""OmegaConf resolvers the configs use, and the one function that registers them: ``register()``.

Every entry point that composes or loads a config calls ``register()`` first (importing this module calls it
too): the resolvers ``${wan2.latest_export:...}`` and ``${wan2.auto_precision:...}``, and the settings
dataclasses in Hydra's ConfigStore that the YAMLs extend.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

PRECISION_ENV = "WAN2_PRECISION"  # forces ${wan2.auto_precision:...} (e.g. to run the suite both ways)
PRECISION_CHOICES = ("32-true", "bf16-mixed")


def latest_export(name: str, outputs_dir: str = "outputs", fallback: str = "") -> str:
    """``outputs/<name>/latest/export`` if it exists, else ``fallback`` if that exists (the shipped base),
    else the outputs path (config validation then says how to make it)."""
    newest = Path(outputs_dir) / name / "latest" / "export"
    if newest.is_dir():
        return str(newest)
    if fallback and Path(fallback).is_dir():
        return fallback
    return str(newest)


def forced_precision() -> str | None:
    """``$WAN2_PRECISION`` if set (one of ``PRECISION_CHOICES``), else None; anything else is a one-line error."""
    forced = os.environ.get(PRECISION_ENV, "").strip()
    if not forced:
        return None
    if forced not in PRECISION_CHOICES:
        raise ValueError(f"{PRECISION_ENV}={forced!r} is not one of {list(PRECISION_CHOICES)}")
    return forced


def auto_precision(accelerator: str = "cpu") -> str:
    """``$WAN2_PRECISION`` if set; else ``bf16-mixed`` on a CUDA GPU with bf16 and ``32-true`` on every CPU.

    fp32 on CPUs: bf16 autocast was never faster there for wan2's steps (1.3x slower on an AMX CPU, 0.99x on
    an AVX512-BF16 EPYC; docs/bench/README.md), and a fixed answer keeps a run's numerics the same whatever the
    load of the machine (a timing probe would not). ``trainer.precision=bf16-mixed`` still opts in."""
    forced = forced_precision()
    if forced:
        return forced
    if accelerator in ("gpu", "cuda", "auto"):
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
    return "32-true"


def register() -> None:
    """Register the resolvers and the settings dataclasses (idempotent): call before composing or loading a
    config (``OmegaConf.load`` of a YAML that holds ``${wan2....}`` resolves only after this)."""
    if not OmegaConf.has_resolver("wan2.latest_export"):
        OmegaConf.register_new_resolver("wan2.latest_export", latest_export)
    if not OmegaConf.has_resolver("wan2.auto_precision"):
        OmegaConf.register_new_resolver("wan2.auto_precision", auto_precision)
    # Hydra's ConfigStore must hold every settings dataclass before a config composes: the objectives (and the
    # LoRA adapter settings they import) register themselves on import.
    import wan2.backbones.model_config  # noqa: F401
    import wan2.data.config  # noqa: F401
    import wan2.memory.config  # noqa: F401
    from wan2.objectives import discover

    discover()


register()


def compose(overrides: list[str] = (), config_name: str = "train"):
    """``configs/<config_name>.yaml`` composed with ``overrides`` as ``train.py`` composes it (no run folder):
    for scripts that build what a training run would (``scripts/plan.py``, ``scripts/bench.py``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))
