"""Settings of the LoRA objective (``lora_module.LoRAModule``): flow matching on a frozen base, declared once
as overrides of the flow-matching defaults; the adapter itself is ``wan2.lora.config.LoRAConfig``. Torch-free."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from wan2.lightning.flow_config import FlowMatchingConfig
from wan2.lora.config import LoRAConfig
from wan2.objectives import register
from wan2.settings import check_bool, err


@register("lora")
@dataclasses.dataclass
class LoRAObjectiveConfig(FlowMatchingConfig):
    """Adapters only: the base transformer(s), text encoder and VAE stay frozen."""

    TARGET: ClassVar[str] = "wan2.lightning.lora_module.LoRAModule"
    PLAN: ClassVar[str] = "lora"

    lr: float = 2e-3
    warmup_steps: int = 20
    ema_decay: float = 0.99
    train_text_encoder: bool = False  # always false: the text encoder stays frozen
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)  # the adapter (lora.yaml: ${lora})
    fuse: bool = False  # also write export/fused: a full pipeline with the adapter merged

    def check(self, at: str) -> None:
        super().check(at)
        check_bool(f"{at}.fuse", self.fuse)
        if not isinstance(self.lora, LoRAConfig):
            err(f"{at}.lora: {self.lora!r} must be a mapping of LoRA settings (rank, alpha, targets, ...)")
        # objective.lora is ${lora} in the shipped configs: name the key the user sets
        self.lora.check("lora" if at == "objective" else f"{at}.lora")
