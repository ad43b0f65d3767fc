"""Gradient checkpointing and activation offload of the transformer(s) (``memory.gradient_checkpointing``,
``memory.activation_offload``).

Activation offload keeps what autograd saves for the backward pass in CPU memory instead of the accelerator:
``torch.autograd.graph.save_on_cpu`` around each transformer forward (pinned memory when CUDA is present), and,
with checkpointing, each block's input (the one tensor a checkpointed block keeps) parked in CPU memory until
its recompute. The loss and gradients are those of the plain step; the price is PCIe traffic.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _pin() -> bool:
    return torch.cuda.is_available()


class _Park(torch.autograd.Function):
    """Identity that moves a tensor to CPU memory (pinned when CUDA is present); its gradient goes back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.device = x.device
        out = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=_pin())
        return out.copy_(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.to(ctx.device, non_blocking=True)


def offloaded_checkpoint(block, hidden_states: torch.Tensor, *args):
    """diffusers' ``_gradient_checkpointing_func`` (non-reentrant, as its default) whose saved block input waits
    in CPU memory: (B, S, D) on the host per block instead of on the accelerator."""
    device = hidden_states.device
    parked = _Park.apply(hidden_states)  # (B, S, D) on the host

    def run(h, *rest):
        return block(h.to(device, non_blocking=True), *rest)

    return checkpoint(run, parked, *args, use_reentrant=False)


def _enter(module, args, kwargs=None):
    ctx = torch.autograd.graph.save_on_cpu(pin_memory=_pin())
    ctx.__enter__()
    module._wan2_saved_on_cpu.append(ctx)


def _exit(module, args, output):
    module._wan2_saved_on_cpu.pop().__exit__(None, None, None)


def set_activation_offload(transformer: torch.nn.Module, enabled: bool, checkpointing: bool) -> None:
    """Keep the saved tensors of ``transformer``'s forward in CPU memory (hooks around its forward; with
    ``checkpointing`` the blocks' saved inputs too). Idempotent; ``enabled=False`` removes it."""
    for handle in getattr(transformer, "_wan2_offload_hooks", []):
        handle.remove()
    transformer._wan2_offload_hooks = []
    transformer._wan2_saved_on_cpu = []
    if checkpointing:  # restore diffusers' default function, or park the block inputs
        transformer.enable_gradient_checkpointing(offloaded_checkpoint if enabled else None)
    if not enabled:
        return
    transformer._wan2_offload_hooks = [
        transformer.register_forward_pre_hook(_enter),
        transformer.register_forward_hook(_exit, always_call=True),  # also when the forward raises
    ]
