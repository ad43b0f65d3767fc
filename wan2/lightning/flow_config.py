"""Settings of the flow-matching objective (``flow_module.FlowMatchingModule``), declared once; torch-free.

``configs/objective/flow_matching.yaml`` extends ``objective/base_flow_matching`` (these defaults) and only
overrides; the checks give one line naming the key (``objective.lr: 'abc' must be a number > 0``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from wan2.objectives import ObjectiveSettings, register
from wan2.sampling_config import SampleConfig
from wan2.settings import Settings, check, check_bool, check_choice, check_int, check_num, err, is_num

# The choice lists, declared once here (torch-free); the torch code imports them.
TIMESTEP_MODES = ("logit_normal", "uniform", "grid")  # wan2.diffusion.flow.sample_training_sigmas(mode=...)
LOSS_WEIGHTINGS = ("none", "bell")  # bell: DiffSynth-Studio's per-timestep weight
EXPERTS = ("high", "low", "both")  # wan2.lightning.experts.resolve_expert


@dataclasses.dataclass
class TimestepConfig(Settings):
    """How training noise levels are drawn (``wan2.diffusion.flow.sample_training_sigmas``)."""

    mode: str = "logit_normal"  # logit_normal | uniform | grid (index on the shifted 1000-step grid)
    shift: float = 1.0  # sigma shift, as the sampler's scheduler shift (more training at high noise when > 1)
    mean: float = 0.0  # logit_normal: mean of the logit
    std: float = 1.0  # logit_normal: std of the logit
    sigma_min: float = 0.0  # train only sigmas in [sigma_min, sigma_max] (e.g. 0.5: the high-noise half)
    sigma_max: float = 1.0

    def check(self, at: str) -> None:
        check_choice(f"{at}.mode", self.mode, TIMESTEP_MODES)
        check_num(f"{at}.shift", self.shift, 0, lo_open=True)
        check_num(f"{at}.mean", self.mean)
        check_num(f"{at}.std", self.std, 0, lo_open=True)
        lo = check_num(f"{at}.sigma_min", self.sigma_min, 0, 1)
        hi = check_num(f"{at}.sigma_max", self.sigma_max, 0, 1)
        if lo >= hi:
            err(f"{at}.sigma_min: {lo} must be < {at}.sigma_max={hi}")


@register("flow_matching")
@dataclasses.dataclass
class FlowMatchingConfig(ObjectiveSettings):
    """Rectified-flow training of the whole transformer (pretraining or full fine-tuning)."""

    TARGET: ClassVar[str] = "wan2.lightning.flow_module.FlowMatchingModule"
    PLAN: ClassVar[str] = "full"

    weight_decay: float = 0.01  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW betas
    warmup_steps: int = 100  # linear warm-up steps, then cosine decay
    min_lr_ratio: float = 0.1  # the cosine ends at this share of lr at trainer.max_steps
    caption_dropout: float = 0.1  # share of captions replaced by "" so CFG works
    timesteps: TimestepConfig = dataclasses.field(default_factory=TimestepConfig)  # training noise levels
    loss_weighting: str = "none"  # none | bell (DiffSynth-Studio's per-timestep weight)
    # Wan2.2 A14B: high (transformer, sigma >= boundary 0.875) | low (transformer_2, below) | both (each sample
    # to its expert by sigma); null: the single transformer, or both on A14B (wan2/lightning/experts.py)
    expert: str | None = None
    ema_decay: float = 0.995  # EMA of the trained weights (exported); 0: none
    train_text_encoder: bool = (
        False  # the text encoder trains too (flow_matching.yaml: model.train_text_encoder)
    )
    text_lr_scale: float = 1.0  # the text encoder's lr = lr x this
    # TI2V (Wan2.2 text-image-to-video): the share of samples conditioned on their clean first latent frame
    # (t = 0 on its tokens, left out of the loss; the export then has expand_timesteps and continues a given
    # first frame in WanImageToVideoPipeline). 0: text-to-video only; Wan2.2's own code hints 0.2.
    first_frame_p: float = 0.0
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)  # validation / export sampling
    # torch.compile the transformer's training forward + backward (Inductor; on a CPU it needs a C++ compiler).
    # Validation sampling and the export stay eager. Pays on long runs: the first step compiles for about a
    # minute, later ones are 1.3x faster on the demo's LoRA step (docs/bench/README.md).
    compile: bool = False

    def check(self, at: str) -> None:
        super().check(at)
        check_num(f"{at}.weight_decay", self.weight_decay, 0)
        check(
            f"{at}.betas",
            self.betas,
            lambda v: (
                isinstance(v, list | tuple) and len(v) == 2 and all(is_num(b) and 0 <= b < 1 for b in v)
            ),
            "two numbers in [0, 1)",
        )
        check_int(f"{at}.warmup_steps", self.warmup_steps, 0)
        check_num(f"{at}.min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_num(f"{at}.caption_dropout", self.caption_dropout, 0, 1)
        check_num(f"{at}.ema_decay", self.ema_decay, 0, 1, hi_open=True)
        check_num(f"{at}.text_lr_scale", self.text_lr_scale, 0)
        check_num(f"{at}.first_frame_p", self.first_frame_p, 0, 1)
        check_bool(f"{at}.train_text_encoder", self.train_text_encoder)
        check_bool(f"{at}.compile", self.compile)
        check_choice(f"{at}.loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        check_choice(f"{at}.expert", self.expert, EXPERTS, none_ok=True)
        _nested(self, "timesteps", TimestepConfig, at)
        _nested(self, "sample", SampleConfig, at)


def _nested(obj, name: str, cls: type[Settings], at: str) -> None:
    """Check the nested settings ``obj.name`` (a mapping there is a type error, caught in ``Settings.build``)."""
    v = getattr(obj, name)
    if not isinstance(v, cls):
        err(f"{at}.{name}: {v!r} must be a mapping of {[f.name for f in dataclasses.fields(cls)]}")
    v.check(f"{at}.{name}")
