"""First-frame conditioning (Wan2.2 TI2V, ``WanImageToVideoPipeline(expand_timesteps=True)``), torch only.

Latent frame 0 of a conditioned sample is the clean encoding of the given image: it is pasted over the noisy
latents before every transformer call, its tokens get timestep 0 while the others get t, and training leaves
it out of the loss (docs: /work/shared/reference/ti2v.md section 6; the sampler in ``wan2.sampling``).
"""

from __future__ import annotations

import torch


def paste_first_frame(z: torch.Tensor, first: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """``z`` (B, C, T, h, w) with latent frame 0 replaced by ``first`` (B or 1, C, 1, h, w) where ``cond`` (B,)
    bool is true (None: every sample). A new tensor; ``z`` is unchanged."""
    out = z.clone()
    first = first.to(z.dtype).expand(z.shape[0], -1, -1, -1, -1)  # (B, C, 1, h, w)
    if cond is None:
        out[:, :, :1] = first
    else:
        keep = cond.to(z.device).view(-1, 1, 1, 1, 1)
        out[:, :, :1] = torch.where(keep, first, z[:, :, :1])
    return out


def token_timesteps(
    t: torch.Tensor, latent_fhw, patch_size, cond: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token timesteps (B, L) for latents of (T, h, w): ``t`` (B,) on every token, 0 on the latent-frame-0
    tokens of samples where ``cond`` (B,) bool is true (None: all). Token order is the transformer's, a
    flatten over (T / pt, h / ph, w / pw), as the pipeline's ``(mask[0][0][:, ::2, ::2] * t).flatten()``."""
    T, h, w = (int(s) for s in latent_fhw)
    pt, ph, pw = (int(p) for p in patch_size)
    per_frame = (h // ph) * (w // pw)  # tokens of one latent frame (pt == 1 for every Wan2.x model)
    ts = t.float()[:, None].expand(t.shape[0], (T // pt) * per_frame).clone()  # (B, L)
    first = torch.ones(t.shape[0], dtype=torch.bool, device=t.device) if cond is None else cond.to(t.device)
    ts[first, :per_frame] = 0.0
    return ts


def first_frame_loss(pred: torch.Tensor, target: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """Per-sample MSE (B,) over (C, T, h, w), leaving out latent frame 0 of the samples where ``cond`` is true."""
    err = (pred.float() - target.float()) ** 2  # (B, C, T, h, w)
    if cond is None or not bool(cond.any()):
        return err.mean(dim=(1, 2, 3, 4))
    weight = torch.ones_like(err[:, :1, :, :1, :1])  # (B, 1, T, 1, 1)
    weight[cond.to(err.device), :, 0] = 0.0
    per_frame = err.mean(dim=(1, 3, 4), keepdim=True)  # (B, 1, T, 1, 1)
    return (per_frame * weight).sum(dim=(1, 2, 3, 4)) / weight.sum(dim=(1, 2, 3, 4))
