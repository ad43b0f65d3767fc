"""Frozen weights in the compute dtype (``memory.frozen_dtype``): only trainable weights keep fp32 masters.

Under ``bf16-mixed`` autocast casts every frozen fp32 weight to bf16 again at each use, so an fp32 frozen base
costs 6 bytes per weight during a step; stored in bf16 it costs 2 and computes the same bf16 matmuls. What is
frozen: every parameter of the LightningModule that does not train (the LoRA base, the teacher / real denoiser
of distillation, the frozen text encoder; an idle A14B expert is not a submodule and stays as loaded), except the VAE, which stays fp32 (it is
small, and off the accelerator with the latent cache), and what diffusers itself keeps in fp32 in a bf16 Wan
transformer (``_keep_in_fp32_modules``: time embedder, modulation tables, norms).
"""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def keep_fp32(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters diffusers keeps in float32 when it loads a model in bf16 (``_keep_in_fp32_modules``: for Wan
    the rope, time embedder, modulation tables and the norms), for every such model inside ``module``."""
    out = []
    for model in module.modules():
        keep = getattr(model, "_keep_in_fp32_modules", None) or ()
        out += [p for n, p in model.named_parameters() if any(k in n.split(".") for k in keep)]
    return out


def frozen_parameters(
    module: torch.nn.Module, skip: tuple[torch.nn.Module, ...] = ()
) -> list[torch.nn.Parameter]:
    """Floating-point parameters of ``module`` that do not train, outside the ``skip`` submodules and the
    modules diffusers keeps in float32 (each once)."""
    skipped = {id(p) for m in skip if m is not None for p in m.parameters()}
    skipped |= {id(p) for p in keep_fp32(module)}
    seen, out = set(), []
    for p in module.parameters():
        if p.requires_grad or not p.is_floating_point() or id(p) in skipped or id(p) in seen:
            continue
        seen.add(id(p))
        out.append(p)
    return out


def cast_frozen(module: torch.nn.Module, dtype: str, skip: tuple[torch.nn.Module, ...] = ()) -> int:
    """Store every frozen parameter of ``module`` (outside ``skip``) in ``dtype`` (``fp32`` | ``bf16``), in
    place; trainable ones are left as they are. Returns the number of elements cast."""
    target = DTYPES[dtype]
    n = 0
    with torch.no_grad():
        for p in frozen_parameters(module, skip):
            if p.dtype != target:
                p.data = p.data.to(target)
                n += p.numel()
    return n
