"""The tiny Wan transformer with a LoRA and a fixed batch, shared by the memory tests (cheap: 4 blocks of 128)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from tests.conftest import model_cfg


def tiny_transformer(num_layers: int = 4, checkpointing: bool = False, lora: bool = True, seed: int = 0):
    """The ``wan_tiny`` transformer (random, seeded) with ``num_layers`` blocks and a rank-4 LoRA on every
    attention and feed-forward Linear (Gaussian A, zero B, as training starts)."""
    from wan2.backbones.stack import build_backbone
    from wan2.lora import add_lora, lora_config

    cfg = model_cfg("wan_tiny")
    cfg.transformer.num_layers = num_layers
    cfg = OmegaConf.merge(cfg, {"gradient_checkpointing": checkpointing})
    torch.manual_seed(seed)
    transformer = build_backbone(cfg, components=("transformer",)).transformer
    if lora:
        torch.manual_seed(seed + 1)
        add_lora(transformer, lora_config(rank=4, targets="all", init="gaussian"))
    return transformer


def batch(transformer, n: int = 2, seed: int = 1) -> dict:
    """A fixed denoiser input: latents (n, 16, 3, 8, 8), timesteps, text states (n, 8, 64), a target."""
    g = torch.Generator().manual_seed(seed)
    c = transformer.config.in_channels
    return {
        "hidden_states": torch.randn(n, c, 3, 8, 8, generator=g),
        "timestep": torch.tensor([250, 750][:n] + [500] * max(0, n - 2)),
        "encoder_hidden_states": torch.randn(n, 8, transformer.config.text_dim, generator=g),
        "target": torch.randn(n, c, 3, 8, 8, generator=g),
    }


def predict(transformer, b: dict) -> torch.Tensor:
    """The transformer's output (n, C, F, H, W) on the batch."""
    return transformer(
        hidden_states=b["hidden_states"],
        timestep=b["timestep"],
        encoder_hidden_states=b["encoder_hidden_states"],
        return_dict=False,
    )[0]


def train(transformer, steps: int = 3, lr: float = 1e-2) -> tuple[list[torch.Tensor], list[dict]]:
    """``steps`` SGD steps of an MSE loss on the trainable (LoRA) parameters; the losses and each step's grads."""
    b = batch(transformer)
    params = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(params.values(), lr=lr)
    losses, grads = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(predict(transformer, b), b["target"])
        loss.backward()
        losses.append(loss.detach().clone())
        grads.append({n: p.grad.detach().clone() for n, p in params.items()})
        opt.step()
    return losses, grads
