"""Settings of the ``memory`` group (``configs/memory/*.yaml`` only override them); torch-free.

Each field switches one mechanism; the presets (``memory=default | 24gb | 80gb``) are YAML files that set
several. ``wan2.plan`` counts each mechanism, and ``train.py`` refuses a preset that cannot fit before any
weight loads.
"""

from __future__ import annotations

import dataclasses

from wan2.settings import Settings, check_bool, check_choice, check_int, err, store

FROZEN_DTYPES = ("auto", "fp32", "bf16")  # auto: bf16 under bf16-mixed / bf16-true, else fp32
ENCODER_PLACEMENTS = ("auto", "always")  # auto: off the accelerator while training steps use the caches
# trainer.precision values whose compute dtype is bf16 (frozen_dtype "auto" stores frozen weights in bf16)
BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")


@dataclasses.dataclass
class MemoryConfig(Settings):
    """Where and in which dtype the weights and activations of a training step live."""

    KEY = "memory"

    # frozen weights (the base under LoRA, the teacher / real denoiser of distillation, an idle A14B expert,
    # the frozen text encoder; not the VAE): auto = the trainer precision's compute dtype (bf16 under
    # bf16-mixed / bf16-true, fp32 otherwise; fp32 under FSDP, which gathers in its param_dtype) | fp32 | bf16
    frozen_dtype: str = "auto"
    fp8_frozen: bool = (
        False  # frozen transformer Linear weights stored as fp8 e4m3 + scales (wan2/memory/fp8.py)
    )
    block_swap: int = 0  # transformer blocks kept in pinned CPU memory, streamed in one block ahead of use
    # text encoder and VAE: auto = off the accelerator during training steps when the latent / text caches feed
    # them (validation brings them in for the moment it needs them) | always = resident
    encoders_on_device: str = "auto"
    gradient_checkpointing: bool | None = None  # null: model.gradient_checkpointing (on for the real models)
    activation_offload: bool = False  # autograd's saved tensors of the transformer forward kept in CPU memory

    def check(self, at: str) -> None:
        check_choice(f"{at}.frozen_dtype", self.frozen_dtype, FROZEN_DTYPES)
        check_bool(f"{at}.fp8_frozen", self.fp8_frozen)
        check_int(f"{at}.block_swap", self.block_swap, 0)
        check_choice(f"{at}.encoders_on_device", self.encoders_on_device, ENCODER_PLACEMENTS)
        check_bool(f"{at}.gradient_checkpointing", self.gradient_checkpointing, none_ok=True)
        check_bool(f"{at}.activation_offload", self.activation_offload)

    def checkpointing(self, model_default: bool) -> bool:
        """Whether the transformer recomputes block activations: this group's setting, else the model's."""
        return bool(model_default if self.gradient_checkpointing is None else self.gradient_checkpointing)

    def frozen(self, precision, fsdp: bool = False, at: str = "memory") -> str:
        """``fp32`` or ``bf16``: the storage dtype of frozen weights under ``precision`` (trainer.precision).

        An explicit ``bf16`` needs a bf16 compute dtype: without autocast a bf16 frozen Linear would get fp32
        inputs. FSDP2 gathers every weight in its own ``param_dtype`` already, so ``auto`` is fp32 there."""
        bf16_compute = str(precision) in BF16_PRECISIONS
        if self.frozen_dtype == "bf16":
            if not bf16_compute:
                err(
                    f"{at}.frozen_dtype: 'bf16' needs trainer.precision bf16-mixed or bf16-true (got "
                    f"{str(precision)!r}); allowed with it: 'auto' or 'fp32'"
                )
            if fsdp:
                err(
                    f"{at}.frozen_dtype: 'bf16' is not supported with trainer=fsdp (FSDP2 gathers the weights in "
                    "trainer.strategy.param_dtype already); allowed with it: 'auto' or 'fp32'"
                )
            return "bf16"
        if self.frozen_dtype == "auto" and bf16_compute and not fsdp:
            return "bf16"
        return "fp32"


store(MemoryConfig, group="memory", name="base_memory")  # each configs/memory/*.yaml extends it
