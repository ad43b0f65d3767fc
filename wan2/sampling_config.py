"""Sampling defaults (steps, CFG weight, seed) declared once, for validation samples, exports, callbacks and
generation; torch-free so config checks stay fast. The sampler itself is ``wan2/sampling.py``."""

from __future__ import annotations

import dataclasses

from wan2.settings import Settings, check_int, check_num


@dataclasses.dataclass
class SampleConfig(Settings):
    """How a model samples when nothing else says (an export's ``wan2.json`` records what it was trained with)."""

    num_inference_steps: int = 25  # Euler steps of the flow sampler
    guidance_scale: float = 5.0  # classifier-free guidance weight (Wan's default; the tiny bases use 2.5)
    seed: int | None = 0  # first sample's seed (sample i uses seed + i); null: random

    def check(self, at: str) -> None:
        check_int(f"{at}.num_inference_steps", self.num_inference_steps, 1)
        check_num(f"{at}.guidance_scale", self.guidance_scale, 1)
        check_int(f"{at}.seed", self.seed, 0, none_ok=True)


SAMPLE_DEFAULTS = SampleConfig()
