"""Settings of step distillation (``distill_module.DistillModule``), declared once as overrides of the
flow-matching defaults plus the schedule of phases; torch-free."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from wan2.lightning.flow_config import FlowMatchingConfig
from wan2.objectives import register
from wan2.sampling_config import SAMPLE_DEFAULTS
from wan2.settings import check_int, check_num, err, is_int, is_num


@register("distill")
@dataclasses.dataclass
class DistillConfig(FlowMatchingConfig):
    """Guidance distillation, then progressive halving teacher_steps -> ... -> student_steps, then optional
    distribution matching; the text encoder and VAE stay frozen."""

    TARGET: ClassVar[str] = "wan2.lightning.distill_module.DistillModule"
    PLAN: ClassVar[str] = "distill"

    lr: float = 2e-4
    warmup_steps: int = 20
    ema_decay: float = 0.0
    caption_dropout: float = 0.0
    train_text_encoder: bool = False  # always false
    teacher_steps: int = 32  # halves each round: 32 -> 16 -> 8 -> 4
    student_steps: int = 4  # the student's sampling steps
    guidance_scale: float = (
        SAMPLE_DEFAULTS.guidance_scale
    )  # the CFG weight baked into the student (cfg phase)
    cfg_steps: int = 300  # guidance-distillation steps (0: skip)
    round_steps: int = 300  # steps per halving round
    # distribution matching (DMD2) after the rounds, on the student's own samples; 0: off. A trainable copy of
    # the guided base (the fake denoiser) trains beside the student: about 3 transformers + 2 AdamW states.
    dm_steps: int = 0
    dm_teacher: str | None = None  # the guided base as a diffusers export (null: model.pretrained)
    dm_sigma_range: tuple[float, float] = (0.02, 0.98)  # noise levels at which the two denoisers are compared
    dm_fake_lr_scale: float = 1.0  # the fake denoiser's lr = lr x this

    def check(self, at: str) -> None:
        super().check(at)
        check_num(f"{at}.guidance_scale", self.guidance_scale, 1)
        check_int(f"{at}.cfg_steps", self.cfg_steps, 0)
        check_int(f"{at}.round_steps", self.round_steps, 1)
        check_int(f"{at}.dm_steps", self.dm_steps, 0)
        check_num(f"{at}.dm_fake_lr_scale", self.dm_fake_lr_scale, 0)
        if self.first_frame_p:  # the rounds and distribution matching are text-to-video only
            err(f"{at}.first_frame_p: {self.first_frame_p} is not supported by distillation (allowed: 0)")
        if self.dm_teacher is not None and not (Path(str(self.dm_teacher)) / "model_index.json").is_file():
            err(
                f"{at}.dm_teacher: {str(self.dm_teacher)!r} is not a diffusers export (no model_index.json; "
                "allowed: null or an export folder such as pretrained/wan_tiny_base)"
            )
        rng = self.dm_sigma_range
        if not (
            isinstance(rng, list | tuple)
            and len(rng) == 2
            and all(is_num(v) for v in rng)
            and 0 < rng[0] < rng[1] <= 1
        ):
            err(
                f"{at}.dm_sigma_range: {list(rng)!r} must be two noise levels 0 < lo < hi <= 1 (e.g. [0.02, 0.98])"
            )
        teacher = check_int(f"{at}.teacher_steps", self.teacher_steps, 1)
        student = check_int(f"{at}.student_steps", self.student_steps, 1)
        if is_int(teacher) and is_int(student):
            n = teacher
            while n > student and n % 2 == 0:
                n //= 2
            if n != student:
                options = [student * 2**k for k in range(1, 5)]
                err(
                    f"{at}.teacher_steps: {teacher} must halve down to {at}.student_steps={student} "
                    f"(allowed: {student} x a power of 2, e.g. {options})"
                )
