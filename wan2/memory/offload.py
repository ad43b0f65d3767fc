"""Encoders off the accelerator (issue 16 item 2): a module comes to the compute device only while it is used.

Training with the latent and text caches never needs the text encoder or the VAE on the device; validation
sampling borrows them for a moment::

    with on_device(backbone.text_encoder, device):
        embeds = backbone.encode_prompts(prompts)        # then the encoder goes back to the CPU
    with on_device(backbone.vae, device):
        video = backbone.decode_latents(latents)

Generation uses diffusers' accelerate-backed hooks instead (``offload_pipeline``): ``"model"`` moves each whole
component (text encoder -> transformer(s) -> VAE) to the device when its forward starts and back when the next
one starts; ``"sequential"`` keeps every weight on the CPU and moves each leaf module's weights in for its
forward (least memory, slowest).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

OFFLOAD_MODES = ("model", "sequential")


def offload_problem(offload, device) -> str | None:
    """One line when ``offload`` is not a mode (or None), or cannot run on ``device``; None when it can."""
    if offload is None:
        return None
    if offload not in OFFLOAD_MODES:
        return f"offload: {offload!r} is not one of {list(OFFLOAD_MODES)} (or None to keep the pipeline on the device)"
    if offload == "sequential" and torch.device(device).type == "cpu":
        # nothing to save there, and accelerate's CPU path breaks on UMT5's tied token embedding
        return "offload: 'sequential' needs an accelerator device (device='cpu'); use offload=None or 'model'"
    return None


def offload_pipeline(pipe, offload: str, device) -> None:
    """Put diffusers' offload hooks on ``pipe`` (a ``WanPipeline`` on the CPU) for compute device ``device``."""
    problem = offload_problem(offload, device)
    if problem:
        raise ValueError(problem)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def keep_off_device(module: nn.Module) -> None:
    """From now on ``module.to(...)`` / ``.cuda()`` / ``.half()`` (``Module._apply``, also when a parent module
    is moved, as Lightning moves the LightningModule) leave ``module``'s frozen tensors where and what they are;
    trainable parameters still follow. For modules kept in CPU memory between uses (block swap, the encoders).
    ``on_device`` still moves the whole module; ``allow_on_device`` undoes this."""

    def _apply(fn, recurse=True):
        for p in module.parameters():
            if p.requires_grad:
                p.data = fn(p.data)
                if p.grad is not None:
                    p.grad.data = fn(p.grad.data)
        return module

    module._apply = _apply  # an instance attribute: Module._apply of the parent calls it for this child


def allow_on_device(module: nn.Module) -> None:
    """Undo ``keep_off_device``: ``module.to(...)`` moves everything again."""
    module.__dict__.pop("_apply", None)


def kept_off_device(module: nn.Module) -> bool:
    return "_apply" in module.__dict__


@contextlib.contextmanager
def on_device(module: nn.Module | None, device, home="cpu") -> Iterator[nn.Module | None]:
    """``module`` on ``device`` inside the block and on ``home`` (the CPU) after it, also when the block raises.
    None passes through (a component the stack does not have). The module should start on ``home``. A module
    under ``keep_off_device`` is moved all the same (and stays under it)."""
    if module is None:
        yield None
        return
    kept = module.__dict__.pop("_apply", None)
    try:
        module.to(device)  # a failure half way (out of memory) still sends every part back
        yield module
    finally:
        module.to(home)
        if kept is not None:
            module._apply = kept
