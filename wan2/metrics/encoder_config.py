"""Sizes of the in-domain RankJump video-text encoder (``wan2.metrics.indomain``), declared once; torch-free."""

from __future__ import annotations

import dataclasses

from wan2.settings import Settings, check_int, err


@dataclasses.dataclass
class EncoderSizes(Settings):
    """Both towers' sizes and the clip geometry the video tower expects (others are resized to it)."""

    num_frames: int = 17
    height: int = 32
    width: int = 32
    pool_width: int = 4  # columns averaged first: rows (rank, colour) and time keep full resolution
    channels: int = 16  # first conv width; doubles twice
    embed_dim: int = 64  # shared embedding size
    text_dim: int = 64  # text transformer width
    text_layers: int = 2
    text_heads: int = 4
    text_len: int = 32  # tokens per caption

    def check(self, at: str) -> None:
        for f in dataclasses.fields(EncoderSizes):
            check_int(f"{at}.{f.name}", getattr(self, f.name), 1)
        if self.text_dim % self.text_heads:
            err(f"{at}.text_dim: {self.text_dim} must be a multiple of {at}.text_heads={self.text_heads}")
