"""Apply the ``memory`` settings to the LightningModule a run trains (``wan2.tasks.build_module`` calls this)."""

from __future__ import annotations

import logging

import lightning as L
import torch

from wan2.backbones.stack import set_gradient_checkpointing
from wan2.memory.activations import set_activation_offload
from wan2.memory.block_swap import BlockSwap
from wan2.memory.config import MemoryConfig
from wan2.memory.fp8 import store_frozen_linears_fp8
from wan2.memory.frozen import cast_frozen

log = logging.getLogger("wan2")


def apply_memory(
    module: torch.nn.Module,
    mem: MemoryConfig,
    precision,
    model_checkpointing: bool,
    fsdp: bool = False,
) -> dict:
    """Gradient checkpointing (``mem`` over the model's own setting) and activation offload on the trained
    transformer(s); frozen parameters stored in ``mem.frozen(precision)``, and the frozen Linear weights of the
    trained transformer(s) (the base under LoRA) in fp8 with ``mem.fp8_frozen`` (``wan2.tasks.train`` probes the
    device first). Block swap needs the module on its device: ``MemoryPlacement`` attaches it.
    Returns what was done (for logs)."""
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
    if mem.fp8_frozen:
        done["fp8_layers"] = sum(store_frozen_linears_fp8(t) for t in trained)
        log.info("memory: %d frozen Linear layers stored in fp8 (e4m3 + scales)", done["fp8_layers"])
    return done


class MemoryPlacement(L.Callback):
    """Block swap (``memory.block_swap``): once Lightning has put the module on its device (and restored a
    checkpoint), the last ``block_swap`` blocks of each trained transformer keep their frozen weights in CPU
    memory and are streamed in one block ahead of use (``wan2.memory.block_swap``)."""

    def __init__(self, block_swap: int) -> None:
        self.block_swap = block_swap
        self.swaps: list[BlockSwap] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.block_swap and not self.swaps:
            for _, t in pl_module.trained_experts():
                self.swaps.append(BlockSwap.attach(t.blocks, self.block_swap, pl_module.device))
            log.info("memory: %d blocks per transformer swapped from CPU memory", self.block_swap)

    def on_fit_end(self, trainer, pl_module) -> None:
        for swap in self.swaps:  # every block back on the device (export, a second fit)
            swap.detach()
        self.swaps = []
