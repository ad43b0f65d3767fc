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
