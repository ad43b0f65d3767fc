"""Apply the ``memory`` settings to the LightningModule a run trains (``wan2.tasks.build_module`` calls this)."""

from __future__ import annotations

import logging

import torch

from wan2.backbones.stack import set_gradient_checkpointing
from wan2.memory.activations import set_activation_offload
from wan2.memory.config import MemoryConfig
from wan2.memory.frozen import cast_frozen

log = logging.getLogger("wan2")


def apply_memory(
    module: torch.nn.Module, mem: MemoryConfig, precision, model_checkpointing: bool, fsdp: bool = False
) -> dict:
    """Gradient checkpointing (``mem`` over the model's own setting) and activation offload on the trained
    transformer(s); frozen parameters stored in ``mem.frozen(precision)``. Returns what was done (for logs)."""
    backbone = module.backbone
    ckpt = mem.checkpointing(model_checkpointing)
    set_gradient_checkpointing(backbone, ckpt)
    trained = [m for _, m in module.trained_experts()] if hasattr(module, "trained_experts") else []
    for t in trained:
        set_activation_offload(t, mem.activation_offload, ckpt)
    dtype = mem.frozen(precision, fsdp=fsdp)
    cast = cast_frozen(module, dtype, skip=(backbone.vae,))
    done = {
        "gradient_checkpointing": ckpt,
        "activation_offload": mem.activation_offload,
        "frozen_dtype": dtype,
    }
    if cast:
        log.info("memory: %s frozen parameters stored in %s", f"{cast:,}", dtype)
    return done
