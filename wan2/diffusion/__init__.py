"""Pure tensor functions of rectified-flow diffusion: noise, targets, timestep grids, samplers (torch only)."""

from wan2.diffusion.flow import (  # noqa: F401
    add_noise,
    bell_weight,
    euler_sample,
    inference_sigmas,
    sample_training_sigmas,
    shift_sigmas,
    velocity_target,
)
from wan2.diffusion.rng import (  # noqa: F401
    draw_per_sample,
    rand_per_sample,
    randn_per_sample,
    sample_generators,
    sample_seed,
)
