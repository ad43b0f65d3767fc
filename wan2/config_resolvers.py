"""OmegaConf resolvers the configs use (registered on import of wan2.tasks / train.py)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def latest_export(name: str, outputs_dir: str = "outputs", fallback: str = "") -> str:
    """``outputs/<name>/latest/export`` if it exists, else ``fallback`` if that exists (the shipped base),
    else the outputs path (config validation then says how to make it)."""
    newest = Path(outputs_dir) / name / "latest" / "export"
    if newest.is_dir():
        return str(newest)
    if fallback and Path(fallback).is_dir():
        return fallback
    return str(newest)


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """Intel AMX (``amx_bf16``) makes bf16 matmuls several times faster than fp32 on a CPU; AVX512-BF16 alone
    does not (measured: fp32/bf16 step time 0.99 on an EPYC with avx512_bf16, docs/bench/README.md)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return "amx_bf16" in cpuinfo


def auto_precision(accelerator: str = "cpu") -> str:
    """``bf16-mixed`` where it pays (a CUDA GPU with bf16, or a CPU with AMX), else ``32-true``."""
    if accelerator in ("gpu", "cuda", "auto"):
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        if accelerator != "auto":
            return "32-true"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def register() -> None:
    if not OmegaConf.has_resolver("wan2.latest_export"):
        OmegaConf.register_new_resolver("wan2.latest_export", latest_export)
    if not OmegaConf.has_resolver("wan2.auto_precision"):
        OmegaConf.register_new_resolver("wan2.auto_precision", auto_precision)


register()


# Hydra's ConfigStore must hold every settings dataclass before a config composes: the objectives (and the
# LoRA adapter settings they import) register themselves on import.
import wan2.backbones.model_config  # noqa: E402, F401
import wan2.data.config  # noqa: E402, F401
from wan2.objectives import discover  # noqa: E402

discover()
