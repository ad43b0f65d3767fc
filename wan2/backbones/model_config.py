"""Settings of the Wan stack a run builds or loads (``configs/model/*.yaml`` only override them); torch-free.

The architecture blocks (``text_encoder``, ``vae``, ``transformer``, ``scheduler``) are the constructor
arguments of the transformers / diffusers classes, passed through as they are (their schema is theirs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wan2.settings import Settings, check, check_bool, check_int, check_num, err, is_int, store


@dataclasses.dataclass
class ModelConfig(Settings):
    """A Wan 2.x text-to-video stack: built from the numbers below, or loaded from ``pretrained``."""

    KEY = "model"

    name: str = "wan"  # a label for plans and logs
    pretrained: str | None = (
        None  # a local diffusers WanPipeline folder to load instead of building (real weights)
    )
    vae_pretrained: str | None = None  # a trained AutoencoderKLWan folder replacing the built VAE
    text_len: int = 512  # max_sequence_length for prompts; pass the same to stock WanPipeline
    train_text_encoder: bool = False  # the text encoder learns too (objective=flow_matching follows this)
    gradient_checkpointing: bool = (
        False  # recompute block activations in backward: less memory, ~1/3 more compute
    )
    expand_timesteps: bool = False  # WanPipeline(expand_timesteps=True): per-token timesteps (Wan2.2 TI2V)
    boundary_ratio: float | None = (
        None  # two experts (A14B): transformer for t >= ratio x T, transformer_2 below
    )
    text_encoder: dict = dataclasses.field(default_factory=dict)  # transformers UMT5Config arguments
    vae: dict = dataclasses.field(default_factory=dict)  # diffusers AutoencoderKLWan arguments
    transformer: dict = dataclasses.field(default_factory=dict)  # diffusers WanTransformer3DModel arguments
    scheduler: dict = dataclasses.field(default_factory=dict)  # FlowMatchEulerDiscreteScheduler arguments

    def check(self, at: str) -> None:
        pre = self.pretrained
        if pre not in (None, ""):
            if not Path(str(pre)).is_dir():
                err(
                    f"{at}.pretrained: {pre!r} is not a directory (train the base first or point at a diffusers "
                    "export)"
                )
            if not (Path(str(pre)) / "model_index.json").is_file():
                err(
                    f"{at}.pretrained: {pre!r} has no model_index.json (allowed: a diffusers WanPipeline folder)"
                )
        vae_pre = self.vae_pretrained
        if vae_pre not in (None, ""):
            if not Path(str(vae_pre)).is_dir():
                err(
                    f"{at}.vae_pretrained: {vae_pre!r} is not a directory (run `python train.py "
                    "experiment=vae_tiny` first)"
                )
            if not (Path(str(vae_pre)) / "config.json").is_file():
                err(
                    f"{at}.vae_pretrained: {vae_pre!r} has no config.json (allowed: an AutoencoderKLWan folder)"
                )
        check_int(f"{at}.text_len", self.text_len, 1)
        check_bool(f"{at}.train_text_encoder", self.train_text_encoder)
        check_bool(f"{at}.gradient_checkpointing", self.gradient_checkpointing)
        check_bool(f"{at}.expand_timesteps", self.expand_timesteps)
        check_num(f"{at}.boundary_ratio", self.boundary_ratio, 0, 1, lo_open=True, hi_open=True, none_ok=True)
        for key in ("text_encoder", "vae", "transformer", "scheduler"):
            check(
                f"{at}.{key}",
                getattr(self, key),
                lambda v: isinstance(v, dict),
                "a mapping of constructor arguments",
            )
        if "patch_size" in self.transformer:
            check(
                f"{at}.transformer.patch_size",
                self.transformer["patch_size"],
                lambda v: (
                    isinstance(v, list | tuple) and len(v) == 3 and all(is_int(x) and x >= 1 for x in v)
                ),
                "a list of 3 ints >= 1 (frames, height, width)",
            )
        if "num_layers" in self.transformer:
            check_int(f"{at}.transformer.num_layers", self.transformer["num_layers"], 1)

    @classmethod
    def of(cls, model_cfg) -> ModelConfig:
        """The settings of a model config (an instance, a mapping, a composed node or a ``configs/model/*.yaml``
        loaded as it is: its Hydra ``defaults`` list is dropped), absent keys from the defaults above, unknown
        keys refused. Checked, except a ``pretrained`` folder: the backbone loader vets that (``BackboneError``)."""
        if isinstance(model_cfg, cls):
            return model_cfg
        from wan2.settings import _plain

        values = {k: v for k, v in dict(_plain(model_cfg or {})).items() if k != "defaults"}
        if values.get("pretrained"):
            return cls._from_mapping(values, cls.KEY)
        return cls.build(values)


store(ModelConfig, group="model", name="base_model")  # each configs/model/*.yaml extends it
