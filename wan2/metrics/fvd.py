"""FVD: Frechet distance between I3D (Kinetics-400) logits of real and generated videos.

Protocol (TF reference / StyleGAN-V): every frame resized to 224x224 bilinear (aspect not kept), values in
[-1, 1], at least 10 frames, the 400 logits as features, Frechet distance in float64. The standard setting is
2048 real and 2048 generated clips of 16 frames; always report the count, frames and resolution with the
number (``fvd`` returns them). The result's ``weights`` is the I3D file used: the project's tests run on
randomly initialised I3D files, and a number from a random network is never an FVD.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wan2.metrics.frechet import frechet_distance_from_features
from wan2.metrics.i3d import InceptionI3d

CONFIG_KEY = "metrics.fvd.i3d_path"
I3D_SIZE = 224
MIN_FRAMES = 10
NUM_LOGITS = 400


class I3DFeatures(nn.Module):
    """A loaded I3D: (B, 3, T, 224, 224) in [-1, 1] -> (B, 400) logits; remembers its weights file."""

    def __init__(self, net: nn.Module, weights: str | None, kind: str):
        super().__init__()
        self.net, self.weights, self.kind = net, weights, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "torchscript":  # StyleGAN-V port: input already in [-1, 1] and 224x224
            return self.net(x, rescale=False, resize=False, return_features=True)
        return self.net(x)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold a ``constants.pkl`` and a ``code/`` folder; torch.save archives do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def load_i3d(path, device: str | torch.device = "cpu") -> I3DFeatures:
    """Load I3D from a pytorch-i3d state dict file or a StyleGAN-V TorchScript file (in eval mode)."""
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"{CONFIG_KEY}: I3D weights file {str(path)!r} not found; FVD needs Kinetics-400 I3D weights "
            "(pytorch-i3d state dict such as i3d_pretrained_400.pt, or StyleGAN-V i3d_torchscript.pt)"
        )
    path = Path(path)
    if _is_torchscript(path):
        net = torch.jit.load(str(path), map_location="cpu")
        return I3DFeatures(net, str(path), "torchscript").to(device).eval()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{CONFIG_KEY}: {path} is not a state dict of tensors ({first})") from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{CONFIG_KEY}: {path} is not a state dict of tensors (got {type(state).__name__})")
    logits = state.get("logits.conv3d.weight")
    if logits is None or logits.shape[0] != NUM_LOGITS:
        got = "no logits.conv3d.weight" if logits is None else f"{logits.shape[0]} classes"
        raise ValueError(f"{CONFIG_KEY}: {path} is not a Kinetics-400 InceptionI3d state dict ({got})")
    net = InceptionI3d(num_classes=NUM_LOGITS)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{CONFIG_KEY}: {path} does not match InceptionI3d: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]} ({len(missing)} / {len(unexpected)} keys)"
        )
    return I3DFeatures(net, str(path), "state_dict").to(device).eval()


def to_i3d_input(videos) -> torch.Tensor:
    """uint8 (N, F, H, W, 3) or float (N, 3, F, H, W) in [-1, 1] -> float32 (N, 3, F, H, W) in [-1, 1]."""
    if isinstance(videos, (list, tuple)):
        videos = torch.stack([torch.as_tensor(np.asarray(v)) for v in videos])
    x = torch.as_tensor(videos)
    if x.ndim != 5:
        raise ValueError(f"videos: expected 5 dims, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"videos: uint8 videos must be (N, F, H, W, 3), got {tuple(x.shape)}")
        return x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    if x.shape[1] != 3:
        raise ValueError(f"videos: float videos must be (N, 3, F, H, W) in [-1, 1], got {tuple(x.shape)}")
    x = x.float()
    if x.numel() and (x.min() < -1.001 or x.max() > 1.001):
        raise ValueError(f"videos: float values must lie in [-1, 1], got [{x.min():.3g}, {x.max():.3g}]")
    return x.clamp(-1.0, 1.0)


def resize_frames(x: torch.Tensor, size: int = I3D_SIZE) -> torch.Tensor:
    """(B, 3, F, H, W) -> (B, 3, F, size, size), bilinear per frame, aspect not kept (TF protocol)."""
    B, C, T, H, W = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return frames.reshape(B, T, C, size, size).permute(0, 2, 1, 3, 4).clamp(-1.0, 1.0)


@torch.inference_mode()
def fvd_features(videos, model: nn.Module, batch_size: int = 8) -> np.ndarray:
    """I3D logits (N, 400) float64 of videos, uint8 (N, F, H, W, 3) or float (N, 3, F, H, W) in [-1, 1]."""
    x = to_i3d_input(videos)  # (N, 3, F, H, W)
    if x.shape[2] < MIN_FRAMES:
        raise ValueError(f"videos: {x.shape[2]} frames; I3D features for FVD need at least {MIN_FRAMES}")
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    out = []
    for i in range(0, x.shape[0], batch_size):
        batch = resize_frames(x[i : i + batch_size].to(device))  # (B, 3, F, 224, 224)
        logits = model(batch)
        if logits.ndim != 2 or logits.shape[1] != NUM_LOGITS:
            raise ValueError(f"model: expected (B, {NUM_LOGITS}) logits, got {tuple(logits.shape)}")
        out.append(logits.double().cpu().numpy())
    return np.concatenate(out, axis=0)


def fvd(real, fake, model: nn.Module, batch_size: int = 8) -> dict:
    """FVD between two video sets with the protocol details; ``weights`` names the I3D file (None = unknown)."""
    xr, xf = to_i3d_input(real), to_i3d_input(fake)
    if xr.shape[2] != xf.shape[2]:
        raise ValueError(
            f"videos: real have {xr.shape[2]} frames, fake {xf.shape[2]}; FVD compares equal lengths"
        )
    fr = fvd_features(xr, model, batch_size)
    ff = fvd_features(xf, model, batch_size)
    weights = getattr(model, "weights", None)
    warnings = []
    if weights is None:
        warnings.append("I3D not loaded from a weights file (random?): this number is not an FVD")
    n = min(len(fr), len(ff))
    if n <= NUM_LOGITS:
        warnings.append(
            f"{n} videos <= {NUM_LOGITS} feature dims: rank-deficient covariance, not comparable to "
            "published FVD (standard: 2048 clips of 16 frames)"
        )
    res_r, res_f = tuple(xr.shape[3:]), tuple(xf.shape[3:])
    return {
        "fvd": frechet_distance_from_features(fr, ff),
        "num_real": len(fr),
        "num_fake": len(ff),
        "frames": int(xr.shape[2]),
        "resolution": f"{res_f[0]}x{res_f[1]}"
        if res_r == res_f
        else f"real {res_r[0]}x{res_r[1]}, fake {res_f[0]}x{res_f[1]}",
        "feature_resolution": I3D_SIZE,
        "weights": weights,
        "warning": "; ".join(warnings) or None,
    }
