"""Validation of composed configs before anything heavy is built: one line per problem, naming the key."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is allowed."""


def _err(msg: str):
    raise ConfigError(msg)


def check_train_config(cfg: DictConfig) -> None:
    model = cfg.model
    pre = model.get("pretrained")
    if pre and not Path(str(pre)).is_dir():
        _err(f"model.pretrained: {pre!r} is not a directory (train the base first or point at a diffusers export)")
    vae_pre = model.get("vae_pretrained")
    if vae_pre and not Path(str(vae_pre)).is_dir():
        _err(f"model.vae_pretrained: {vae_pre!r} is not a directory (run `python train.py experiment=vae_tiny` first)")
    rj = (cfg.data.get("rankjump") or {}) if "data" in cfg else {}
    frames = rj.get("num_frames")
    if frames is not None:
        if not isinstance(frames, int) or frames < 1 or (frames - 1) % 4:
            _err(f"data.rankjump.num_frames: {frames!r} must be 4k+1 (5, 9, 13, 17, ...)")
    if not pre and "vae" in model and rj:
        s = int(model.vae.get("scale_factor_spatial", 8)) * int(model.transformer.patch_size[1])
        for key in ("height", "width"):
            v = rj.get(key)
            if v is not None and (not isinstance(v, int) or v % s):
                _err(f"data.rankjump.{key}: {v!r} must be a multiple of {s} (VAE stride x patch size)")
        t = int(model.vae.get("scale_factor_temporal", 4))
        if frames is not None and (frames - 1) % t:
            _err(f"data.rankjump.num_frames: {frames} must be {t}k+1 for a VAE with temporal stride {t}")
