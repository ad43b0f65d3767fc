"""Map-style datasets: RankJump clips generated on the fly, as video tensors, and their collate."""

from __future__ import annotations

import torch
from einops import rearrange
from torch.utils.data import Dataset

from wan2.data.rankjump import RankJump, RankJumpConfig


def frames_to_video(frames) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (3, F, H, W) in [-1, 1]."""
    x = torch.as_tensor(frames).float() / 127.5 - 1.0
    return rearrange(x, "f h w c -> c f h w")


class RankJumpVideoDataset(Dataset):
    """RankJump as training samples: ``{"video": (3, F, H, W) in [-1, 1], "caption": str, "meta": dict, "index"}``.

    ``index`` (a 0-d long tensor; (B,) after ``collate``) is the sample's position in the dataset: training keys
    its noise by it (``wan2.diffusion.rng``), so any world size draws the same noise for the same sample.
    """

    def __init__(self, cfg: RankJumpConfig, split: str, size: int):
        self.rj = RankJump(cfg, split, size)

    def __len__(self) -> int:
        return len(self.rj)

    def __getitem__(self, i: int) -> dict:
        clip = self.rj[i]
        return {
            "video": frames_to_video(clip.frames),
            "caption": clip.caption,
            "meta": clip.meta,
            "index": torch.tensor(i, dtype=torch.long),
        }


def collate(samples: list[dict]) -> dict:
    """Stack tensors, keep strings and metadata as lists."""
    out = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def collate_videos(samples: list[dict]) -> dict:
    """Stack videos, keep captions, metadata and keys as lists."""
    return {
        "video": torch.stack([s["video"] for s in samples]),  # (B, C, F, H, W)
        "caption": [s["caption"] for s in samples],
        "meta": [s["meta"] for s in samples],
        "key": [s["key"] for s in samples],
    }
