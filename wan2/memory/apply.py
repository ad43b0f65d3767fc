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
from wan2.memory.offload import keep_off_device

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
    Returns what was done (for logs); nothing for a module without a Wan backbone (the VAE objective, the
    in-domain encoder, a new objective of one's own)."""
    backbone = getattr(module, "backbone", None)
    if backbone is None or getattr(backbone, "transformer", None) is None:
        return {}
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
    """Where the weights of a GPU run live, set at ``setup``, before Lightning moves the module to its device:
    block swap (``memory.block_swap``) and the encoders (``memory.encoders_on_device``, ``place``). On the CPU
    every weight already lives in CPU memory and nothing is done."""

    def __init__(self, block_swap: int = 0, text_encoder_off: bool = False, vae_off: bool = False) -> None:
        self.block_swap, self.text_encoder_off, self.vae_off = block_swap, text_encoder_off, vae_off
        self.swaps: list[BlockSwap] | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        device = trainer.strategy.root_device
        if stage != "fit" or self.swaps is not None or device.type == "cpu":
            return
        if not hasattr(pl_module, "trained_experts") or getattr(pl_module, "backbone", None) is None:
            return  # the VAE and in-domain encoder objectives, a new objective of one's own
        text_off = (
            self.text_encoder_off and trainer.world_size == 1
        )  # DDP wants every parameter on one device
        self.swaps = place(pl_module, device, self.block_swap, text_off, self.vae_off)


def place(module, device, block_swap: int, text_encoder_off: bool, vae_off: bool) -> list[BlockSwap]:
    """Put ``module``'s weights where the memory settings say, for compute on ``device``:

    - the last ``block_swap`` blocks of each trained transformer: frozen weights in CPU memory, streamed in one
      block ahead of use (``BlockSwap``; Lightning's later move of the module leaves them);
    - the text encoder (``text_encoder_off``; it must be frozen): kept in CPU memory (Lightning's move leaves it)
      and borrowed onto ``device`` for each call (``WanBackbone.borrowed``), e.g. validation's prompts;
    - the VAE (not a submodule: Lightning never moves it): in CPU memory and borrowed for each encode / decode
      with ``vae_off``, else moved to ``device`` for good.

    Returns the block swaps (they stay attached: the export reads the weights through them)."""
    backbone = module.backbone
    backbone.compute_device = torch.device(device)
    if text_encoder_off and backbone.text_encoder is not None:
        keep_off_device(backbone.text_encoder)
    if backbone.vae is not None and not vae_off:
        backbone.vae.to(device)
    swaps = (
        [BlockSwap.attach(t.blocks, block_swap, device) for _, t in module.trained_experts()]
        if block_swap
        else []
    )
    if swaps:
        log.info("memory: the last %d blocks of each trained transformer swapped from CPU memory", block_swap)
    return swaps
