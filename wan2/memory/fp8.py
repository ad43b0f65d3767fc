"""fp8 storage of frozen Linear weights (issue 16 item 3): e4m3 values with one fp32 scale per output channel,
upcast to the input's dtype layer by layer in forward (and again in backward), in plain PyTorch.

    n = store_frozen_linears_fp8(transformer)    # after the LoRA adapters are added; returns the layer count

Why plain PyTorch: torchao is not a dependency here, and ``torch.float8_e4m3fn`` conversions run on the CPU and
on every CUDA GPU, so the same code is tested on the CPU and used on the accelerator. The matmul itself runs in
the compute dtype (bf16 / fp32): this halves (vs bf16) or quarters (vs fp32) the memory of the frozen weights,
it does not use fp8 tensor cores.

What stays ordinary:
- a converted layer's ``state_dict`` is an ``nn.Linear``'s (``weight`` in the dtype it had before conversion,
  ``bias``), so checkpoints, ``save_pretrained`` exports and resumes see the same keys and dtypes (the values
  are the fp8-rounded ones); loading a state dict quantizes the incoming weight;
- LoRA adapters (``lora_A`` / ``lora_B``) and trainable layers are never converted; PEFT's ``lora.Linear`` keeps
  its adapters and gets an fp8 ``base_layer``, so LoRA files are written exactly as without fp8.

Backward does not keep an upcast copy of the weight: ``Fp8LinearFunction`` saves the fp8 bits and dequantizes
again for the input gradient, so without gradient checkpointing the autograd graph holds fp8, not bf16.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0  # the largest finite e4m3fn value
# Not converted by default: the timestep / text embedders and the output projection (small, and they set the scale
# of everything downstream) and any adapter.
DEFAULT_SKIP = r"(^|\.)(condition_embedder|proj_out)(\.|$)|lora_"


def fp8_problem(device) -> str | None:
    """One line saying why ``device`` cannot store and upcast e4m3 weights, or None when it can (a probe)."""
    if FP8 is None:
        return f"fp8_frozen: torch {torch.__version__} has no float8_e4m3fn dtype"
    try:
        probe = torch.tensor([1.5, -448.0], device=device).to(FP8)
        ok = probe.view(torch.uint8).view(FP8).to(torch.bfloat16).float().tolist() == [1.5, -448.0]
    except (RuntimeError, TypeError, NotImplementedError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"fp8_frozen: {device} cannot convert float8_e4m3fn weights ({first})"
    return None if ok else f"fp8_frozen: {device} converts float8_e4m3fn values wrongly"


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) weight -> e4m3 bits as uint8 (out, in) and an fp32 scale per output channel (out, 1)."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(
        torch.finfo(torch.float32).tiny
    )  # (out, 1)
    bits = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(torch.uint8)  # (out, in)
    return bits, scale


def dequantize(bits: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """e4m3 bits (out, in) and scales (out, 1) -> the weight (out, in) in ``dtype``, scaled in place: one copy
    of the weight in ``dtype`` is the only transient (e4m3 values are exact in bf16 and fp32)."""
    return bits.view(FP8).to(dtype).mul_(scale.to(dtype))


class Fp8LinearFunction(torch.autograd.Function):
    """``F.linear`` with an fp8-stored frozen weight: saves the bits, not an upcast copy, for the input gradient."""

    @staticmethod
    def forward(ctx, x, bits, scale, bias):
        ctx.save_for_backward(bits, scale)
        return F.linear(x, dequantize(bits, scale, x.dtype), bias)  # autocast still casts both, as nn.Linear

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        bits, scale = ctx.saved_tensors
        return grad @ dequantize(bits, scale, grad.dtype), None, None, None  # (..., out) @ (out, in)


class Fp8Linear(nn.Module):
    """A frozen ``nn.Linear`` stored as e4m3 bits (``weight_fp8``, uint8 so ``.to(dtype)`` leaves it alone) and
    per-output-channel scales (``weight_scale``), both frozen parameters; ``weight`` is the dequantized weight in
    ``dtype`` (read-only: PEFT's ``merge`` cannot write into it, ``restore_linears`` first)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype = linear.weight.dtype  # what the state dict and exports hold
        bits, scale = quantize(linear.weight)
        # frozen parameters, not buffers: DDP would broadcast buffers at every forward
        self.weight_fp8 = nn.Parameter(bits, requires_grad=False)
        self.weight_scale = nn.Parameter(scale, requires_grad=False)
        self.bias = linear.bias  # frozen Parameter or None, unchanged

    @property
    def weight(self) -> torch.Tensor:
        return dequantize(self.weight_fp8, self.weight_scale, self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return Fp8LinearFunction.apply(x, self.weight_fp8, self.weight_scale, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, stored=float8_e4m3fn"

    def to_linear(self) -> nn.Linear:
        """An ordinary ``nn.Linear`` with the dequantized weight (in ``dtype``) and the same bias."""
        with torch.device("meta"):
            linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.weight = nn.Parameter(self.weight, requires_grad=False)
        linear.bias = self.bias
        return linear

    # state dict of an nn.Linear: ``weight`` in ``dtype`` (on the CPU: no device spike for big models), ``bias``
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight.detach().cpu()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + "weight"
        if key in state_dict:
            w = state_dict[key]
            if tuple(w.shape) != (self.out_features, self.in_features):
                error_msgs.append(f"size mismatch for {key}: {tuple(w.shape)} in the state dict")
            else:
                bits, scale = quantize(w.to(self.weight_fp8.device))
                with torch.no_grad():
                    self.weight_fp8.copy_(bits)
                    self.weight_scale.copy_(scale)
        elif strict:
            missing_keys.append(key)
        if self.bias is not None:
            if prefix + "bias" in state_dict:
                with torch.no_grad():
                    self.bias.copy_(state_dict[prefix + "bias"])
            elif strict:
                missing_keys.append(prefix + "bias")


def _frozen_linears(module: nn.Module, skip: str | None):
    """(parent, attribute, qualified name, layer) of every frozen ``nn.Linear`` whose name ``skip`` misses."""
    pattern = re.compile(skip) if skip else None
    for name, sub in module.named_modules():
        if type(sub) is not nn.Linear or (pattern and pattern.search(name)):
            continue
        if any(p.requires_grad for p in sub.parameters()):
            continue
        parent_name, _, attr = name.rpartition(".")
        yield module.get_submodule(parent_name) if parent_name else module, attr, name, sub


def store_frozen_linears_fp8(module: nn.Module, skip: str | None = DEFAULT_SKIP) -> int:
    """Replace every frozen ``nn.Linear`` of ``module`` (weight and bias not trainable; name not matched by the
    regex ``skip``) by an ``Fp8Linear``, in place on its device; returns how many were converted. Inside PEFT's
    ``lora.Linear`` this is the ``base_layer`` (the adapters are trainable, or skipped by name)."""
    layers = list(_frozen_linears(module, skip))
    for parent, attr, _, linear in layers:
        setattr(parent, attr, Fp8Linear(linear))
    return len(layers)


def restore_linears(module: nn.Module) -> int:
    """The reverse: every ``Fp8Linear`` back to an ``nn.Linear`` with its dequantized weight (fp8-rounded values
    in the original dtype), e.g. before merging adapters for a fused export; returns how many."""
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, Fp8Linear)]
    for name, layer in found:
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, layer.to_linear())
    return len(found)
