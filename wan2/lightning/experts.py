"""Wan2.2 A14B experts: which of the two transformers an objective trains, and a batch routed to them by sigma.

The A14B has two transformers of the same shape: ``transformer``, the high-noise expert, runs the steps with
timestep t >= boundary_ratio * 1000, and ``transformer_2``, the low-noise expert, the rest (``WanPipeline`` and
``wan2.sampling`` switch the same way). ``objective.expert`` picks what trains:

- ``high``: ``transformer`` alone, on sigma in [boundary, 1];
- ``low``: ``transformer_2`` alone, on sigma in [0, boundary];
- ``both``: both, on sigma over the whole range; each sample of a batch goes to the expert its sigma belongs to,
  and the two halves make one loss;
- null: the one transformer of a single-expert model (Wan2.1, TI2V-5B, wan_tiny); ``both`` for a two-expert one.

The expert that does not train is frozen, is not part of the Lightning module (so checkpoints and the EMA hold
only what trains, and it stays off the GPU during training steps) and joins the GPU for validation sampling only.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from wan2.backbones.wan_layout import is_high_noise, is_moe
from wan2.diffusion.flow import NUM_TRAIN_TIMESTEPS, sample_training_sigmas
from wan2.lightning.flow_config import EXPERTS  # noqa: F401  (declared once, torch-free: the config check uses it)

log = logging.getLogger("wan2")


def resolve_expert(backbone, expert: str | None) -> str | None:
    """``high`` / ``low`` / ``both`` for a two-expert stack; None for a single transformer."""
    if expert is not None and expert not in EXPERTS:
        raise ValueError(f"objective.expert: {expert!r} is not one of {list(EXPERTS)} (or null)")
    if not is_moe(backbone):
        if expert in (None, "high"):  # "high" was the LoRA default before `both`: the single transformer
            return None
        raise ValueError(
            f"objective.expert: {expert!r} needs a two-expert model (Wan2.2 A14B: transformer_2 and "
            "boundary_ratio); this model has one transformer (allowed: null or 'high')"
        )
    return expert or "both"


def expert_timesteps(timesteps: dict, expert: str | None, boundary: float | None) -> dict:
    """The training sigma range narrowed to the expert's part of [0, 1] (``both`` / single: unchanged)."""
    if expert == "both":
        share = high_share(timesteps, boundary)
        if share < 0.1:
            log.warning(
                "objective.expert=both: only %.1f%% of training samples reach the high-noise expert "
                "(sigma >= %s); raise objective.timesteps.shift (logit_normal: 5 gives ~36%%, 12 ~70%%)",
                100 * share,
                boundary,
            )
    if expert not in ("high", "low"):
        return dict(timesteps)
    lo, hi = float(timesteps.get("sigma_min", 0.0)), float(timesteps.get("sigma_max", 1.0))
    lo, hi = (max(lo, boundary), hi) if expert == "high" else (lo, min(hi, boundary))
    if lo >= hi:
        raise ValueError(
            f"objective.timesteps: sigma_min/sigma_max leave nothing of the {expert}-noise expert's "
            f"range ({'[' + str(boundary) + ', 1]' if expert == 'high' else '[0, ' + str(boundary) + ']'})"
        )
    return {**timesteps, "sigma_min": lo, "sigma_max": hi}


def high_share(timesteps: dict, boundary: float, n: int = 4096) -> float:
    """Share of training sigmas drawn from ``timesteps`` that the high-noise expert gets (fixed seed)."""
    sigma = sample_training_sigmas(n, generator=torch.Generator().manual_seed(0), **timesteps)
    return float(high_noise(sigma, boundary).float().mean())


def high_noise(sigma: torch.Tensor, boundary: float) -> torch.Tensor:
    """(B,) bool: the samples the high-noise expert runs, compared as timesteps exactly as WanPipeline does
    (``wan2.backbones.wan_layout.is_high_noise``, the one routing rule, also used by ``wan2.sampling``)."""
    return is_high_noise(sigma * NUM_TRAIN_TIMESTEPS, boundary, NUM_TRAIN_TIMESTEPS)


def _run(model, zt: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, timestep=None) -> torch.Tensor:
    t = sigma * NUM_TRAIN_TIMESTEPS if timestep is None else timestep  # (B,) or per token (B, L)
    return model(hidden_states=zt, timestep=t, encoder_hidden_states=cond, return_dict=False)[0]


def _zero_touch(model) -> torch.Tensor | None:
    """0 x (sum of the trainable weights): gives them a zero gradient, so DDP finds every weight used even when
    no sample of this rank's batch went to this expert."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.stack([p.sum() for p in params]).sum() * 0.0 if params else None


def routed_velocity(
    high,
    low,
    zt: torch.Tensor,
    sigma: torch.Tensor,
    cond: torch.Tensor,
    boundary: float | None,
    timestep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Velocity prediction (B, C, F', H', W'): with one model (the other None) it runs every sample; with both,
    samples with t >= boundary go to ``high`` and the rest to ``low``, and the outputs return in batch order.
    ``timestep``: per-token timesteps (B, L) (first-frame conditioning); None: 1000 sigma per sample."""
    if low is None or high is None:
        return _run(high if low is None else low, zt, sigma, cond, timestep)
    is_high = high_noise(sigma, boundary)  # (B,)
    outs, order, touch = [], [], []
    for model, idx in ((high, is_high.nonzero().squeeze(1)), (low, (~is_high).nonzero().squeeze(1))):
        if idx.numel():
            ts = None if timestep is None else timestep[idx]
            outs.append(_run(model, zt[idx], sigma[idx], cond[idx], ts))  # (b, C, F', H', W')
            order.append(idx)
        elif (t := _zero_touch(model)) is not None:
            touch.append(t)
    pred = torch.cat(outs)[torch.argsort(torch.cat(order))]  # back in batch order
    return pred + sum(touch).to(pred.dtype) if touch else pred


@contextlib.contextmanager
def experts_on(backbone, device: torch.device):
    """Both experts on ``device`` for the duration (validation sampling needs the one that does not train)."""
    moved = []
    for m in (backbone.transformer, backbone.transformer_2):
        if m is None:
            continue
        here = next(m.parameters()).device
        if here != torch.device(device):
            moved.append((m, here))
            m.to(device)
    try:
        yield
    finally:
        for m, here in moved:
            m.to(here)
