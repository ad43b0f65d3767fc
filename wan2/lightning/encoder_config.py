"""Settings of the RankJump video-text encoder objective (``encoder_module.EncoderModule``); torch-free."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from wan2.metrics.encoder_config import EncoderSizes
from wan2.objectives import ObjectiveSettings, register
from wan2.settings import check_int, check_num, err


@register("encoder")
@dataclasses.dataclass
class EncoderObjectiveConfig(ObjectiveSettings):
    """CLIP-style training of the in-domain encoder behind RJ-FD / RJ-TV (the Wan stack is not used)."""

    TARGET: ClassVar[str] = "wan2.lightning.encoder_module.EncoderModule"
    CLIP: ClassVar[str] = "any"  # the encoder resizes any clip to its own geometry

    encoder: EncoderSizes = dataclasses.field(default_factory=EncoderSizes)  # the network's sizes
    lr: float = 2e-3
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 50  # linear warm-up steps
    min_lr_ratio: float = 0.05  # cosine decay to this share of lr at trainer.max_steps

    def check(self, at: str) -> None:
        super().check(at)
        check_num(f"{at}.weight_decay", self.weight_decay, 0)
        check_int(f"{at}.warmup_steps", self.warmup_steps, 0)
        check_num(f"{at}.min_lr_ratio", self.min_lr_ratio, 0, 1)
        if not isinstance(self.encoder, EncoderSizes):
            err(f"{at}.encoder: {self.encoder!r} must be a mapping of encoder sizes")
        self.encoder.check(f"{at}.encoder")
