"""Settings of VAE training (``vae_module.VAEModule``), declared once; torch-free."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from wan2.objectives import ObjectiveSettings, register
from wan2.settings import check_bool, check_int, check_num


@register("vae")
@dataclasses.dataclass
class VAEConfig(ObjectiveSettings):
    """Reconstruction + KL training of the Wan VAE on clips (the transformer is not used)."""

    TARGET: ClassVar[str] = "wan2.lightning.vae_module.VAEModule"
    CLIP: ClassVar[str] = "vae"

    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW weight decay
    kl_weight: float = 1e-6  # weight of the KL term
    highlight_boost: float = 8.0  # extra loss weight on saturated (highlight) pixels
    first_frame_weight: float = 3.0  # the causal VAE encodes frame 0 alone
    warmup_steps: int = 20  # linear warm-up steps
    freeze_encoder: bool = False  # true: fine-tune the decoder only (latents, caches and bases stay valid)

    def check(self, at: str) -> None:
        super().check(at)
        for key in ("weight_decay", "kl_weight", "highlight_boost", "first_frame_weight"):
            check_num(f"{at}.{key}", getattr(self, key), 0)
        check_int(f"{at}.warmup_steps", self.warmup_steps, 0)
        check_bool(f"{at}.freeze_encoder", self.freeze_encoder)
