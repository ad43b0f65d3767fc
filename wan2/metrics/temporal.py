"""VBench-style temporal flickering (no network): (255 - mean |frame_t+1 - frame_t|) / 255 per video."""

from __future__ import annotations

import numpy as np
import torch


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as an array; bf16 / fp16 (sampled under autocast) as float32, which numpy can hold."""
    t = t.detach().cpu()
    return (t.float() if t.is_floating_point() else t).numpy()


def uint8_videos(videos) -> np.ndarray:
    """uint8 (N, F, H, W, 3), or float (N, 3, F, H, W) in [-1, 1] (tensor or array) -> uint8 (N, F, H, W, 3)."""
    if isinstance(videos, (list, tuple)):
        videos = np.stack([_numpy(v) if isinstance(v, torch.Tensor) else np.asarray(v) for v in videos])
    if isinstance(videos, torch.Tensor):
        videos = _numpy(videos)
    x = np.asarray(videos)
    if x.ndim != 5:
        raise ValueError(f"videos: expected 5 dims, got shape {x.shape}")
    if x.dtype == np.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"videos: uint8 videos must be (N, F, H, W, 3), got {x.shape}")
        return x
    if x.shape[1] != 3:
        raise ValueError(f"videos: float videos must be (N, 3, F, H, W) in [-1, 1], got {x.shape}")
    from wan2.data.video import tensor_to_frames  # the one [-1, 1] -> uint8 conversion

    return np.ascontiguousarray(tensor_to_frames(torch.from_numpy(x)))  # (N, F, H, W, 3)


def temporal_flickering(videos) -> dict:
    """Per-video and mean flicker score in [0, 1]; 1 = no change between consecutive frames (higher is steadier)."""
    x = uint8_videos(videos).astype(np.float32)  # (N, F, H, W, 3)
    if x.shape[1] < 2:
        raise ValueError(f"videos: {x.shape[1]} frame(s); temporal flickering needs at least 2")
    diff = np.abs(x[:, 1:] - x[:, :-1]).mean(axis=(2, 3, 4))  # (N, F-1) mean abs diff per frame pair
    per_video = (255.0 - diff.mean(axis=1)) / 255.0  # (N,)
    return {
        "metric": "vbench_temporal_flickering",
        "per_video": per_video.tolist(),
        "mean": float(per_video.mean()),
        "num_videos": int(len(per_video)),
    }
