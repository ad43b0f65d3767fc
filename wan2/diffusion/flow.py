"""Rectified flow as Wan trains it: z_t = (1 - t) x0 + t eps, velocity u = eps - x0, Euler sampling.

Only torch here. Sigmas are in [0, 1]; the transformer sees ``timestep = 1000 * sigma``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan / SD3 timestep shift: s' = shift * s / (1 + (shift - 1) s); shift > 1 spends more time at high noise."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def inference_sigmas(
    num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """The (num_steps + 1,) sigma grid that diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps makes.

    Reproduces its float arithmetic (including shifting the already-shifted sigma_min), ending with 0, so
    that the repo's sampler and stock WanPipeline visit the same points.
    """
    n = num_train_timesteps
    base = torch.linspace(1, n, n, dtype=torch.float32).flip(0) / n  # (n,) as in the scheduler's __init__
    table = shift_sigmas(base, shift)
    sigma_max, sigma_min = table[0].item(), table[-1].item()
    t = torch.linspace(sigma_max * n, sigma_min * n, num_steps, dtype=torch.float64)  # numpy.linspace in f64
    s = shift_sigmas(t / n, shift).to(torch.float32)
    return torch.cat([s, torch.zeros(1)])


def sample_training_sigmas(
    batch: int,
    *,
    mode: str = "logit_normal",
    shift: float = 1.0,
    mean: float = 0.0,
    std: float = 1.0,
    sigma_min: float = 0.0,
    sigma_max: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training noise levels (B,): ``logit_normal`` (SD3), ``uniform`` or ``grid`` (an index on the shifted
    1000-step inference grid, as DiffSynth-Studio trains Wan); then shifted, clipped to [sigma_min, sigma_max]
    (restricting the range is how one A14B expert or a high-noise LoRA is trained)."""
    if mode == "logit_normal":
        s = torch.sigmoid(mean + std * torch.randn(batch, generator=generator))
        s = shift_sigmas(s, shift)
    elif mode == "uniform":
        s = shift_sigmas(torch.rand(batch, generator=generator), shift)
    elif mode == "grid":
        grid = inference_sigmas(NUM_TRAIN_TIMESTEPS, shift)[:-1]
        s = grid[torch.randint(0, len(grid), (batch,), generator=generator)]
    else:  # the list is declared once, torch-free, where the config check reads it (imported only here)
        from wan2.lightning.flow_config import TIMESTEP_MODES

        raise ValueError(f"timestep mode: {mode!r} is not one of {list(TIMESTEP_MODES)}")
    if (
        sigma_min > 0.0 or sigma_max < 1.0
    ):  # resample into the range by rescaling (keeps the shape of the law)
        s = sigma_min + (sigma_max - sigma_min) * s
    return s


def bell_weight(sigma: torch.Tensor) -> torch.Tensor:
    """DiffSynth-Studio's per-timestep loss weight: a bell around t=500, min 0, mean ~1 over the grid."""
    t = sigma * NUM_TRAIN_TIMESTEPS
    grid = torch.arange(NUM_TRAIN_TIMESTEPS, dtype=torch.float32)
    g = torch.exp(-2 * ((grid - 500) / 1000) ** 2)
    w = torch.exp(-2 * ((t - 500) / 1000) ** 2)
    return (w - g.min()) / (g - g.min()).mean()


def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """z_t = (1 - sigma) x0 + sigma eps, sigma (B,) broadcast over (B, C, F, H, W)."""
    s = _bcast(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target u = eps - x0."""
    return noise - x0


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euler_sample(
    velocity_fn: VelocityFn,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    uncond_velocity_fn: VelocityFn | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Integrate from sigmas[0] to sigmas[-1] with Euler steps; classifier-free guidance when
    ``guidance_scale > 1``: u = u_uncond + w (u_cond - u_uncond) (2 forward passes per step).

    ``velocity_fn(z, timestep)`` takes timestep = 1000 * sigma as a (B,) float tensor, like WanPipeline.
    """
    z = latents.float()
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        t = (sigma * NUM_TRAIN_TIMESTEPS).expand(z.shape[0])  # (B,)
        u = velocity_fn(z, t).float()
        if guidance_scale > 1.0 and uncond_velocity_fn is not None:
            u_uncond = uncond_velocity_fn(z, t).float()
            u = u_uncond + guidance_scale * (u - u_uncond)
        z = z + (sigma_next - sigma) * u
    return z
