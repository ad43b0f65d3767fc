"""LoRA adapter settings, declared once (``configs/lora/*.yaml`` only override them); torch-free."""

from __future__ import annotations

import dataclasses

from wan2.backbones.wan_layout import TARGET_PRESETS  # noqa: F401  (named target sets; Wan knowledge)
from wan2.settings import Settings, check, check_choice, check_int, check_num, store

LORA_INITS = (True, False, "gaussian", "default")  # PEFT's init_lora_weights (True: Kaiming A, zero B)


@dataclasses.dataclass
class LoRAConfig(Settings):
    """One adapter spec, applied to every trained transformer (``wan2.lora.adapters.lora_config`` builds it)."""

    KEY = "lora"

    rank: int = 4  # adapter rank r
    # scale alpha / r; null: alpha = rank (scale 1 at any rank, so a rank sweep keeps the scale; the shipped
    # rank-4 runs had alpha 4, the same scale)
    alpha: float | None = None
    dropout: float = 0.0  # dropout on the adapter input
    # motion (attn1) | attention (attn1 + attn2) | all (+ ffn) | a regex over module names (held-out rank-up at
    # 800 steps, ~2.5% params: attention 90.6%, motion 83.3%; docs/results.md)
    targets: str = "attention"
    init: bool | str = True  # true (Kaiming A, zero B) | gaussian

    def check(self, at: str) -> None:
        check_int(f"{at}.rank", self.rank, 1)
        check_num(f"{at}.alpha", self.alpha, 0, lo_open=True, none_ok=True)
        check_num(f"{at}.dropout", self.dropout, 0, 1, hi_open=True)
        check_choice(f"{at}.init", self.init, LORA_INITS)
        check(
            f"{at}.targets",
            self.targets,
            lambda v: isinstance(v, str) and v != "",
            f"a preset {list(TARGET_PRESETS)} or a regex over the transformer's module names",
        )


store(LoRAConfig, group="lora", name="base_lora")  # configs/lora/default.yaml extends it
