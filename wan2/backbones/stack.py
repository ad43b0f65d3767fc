"""The one place that builds or loads a Wan text-to-video stack.

``build_backbone(model_cfg)`` makes the stack from a named config (``configs/model/*.yaml``: tiny and random,
or the official Wan 2.2 sizes on the meta device) or loads it from a local diffusers directory
(``model.pretrained=PATH``). Everything downstream (training objectives, samplers, export) talks to the
returned ``WanBackbone`` only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from wan2.backbones.files import BackboneError, read_wan2_json, vet_component, vet_pipeline
from wan2.backbones.model_config import ModelConfig
from wan2.backbones.tokenizer import build_tokenizer
from wan2.backbones.wan_layout import PATCH_SIZE

__all__ = [
    "BackboneError",
    "WanBackbone",
    "build_backbone",
    "load_backbone",
    "load_vae",
]  # BackboneError: files

COMPONENTS = ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")


@dataclass
class WanBackbone:
    """A diffusers Wan stack plus the few conventions the repo's samplers and trainers share."""

    tokenizer: Any
    text_encoder: UMT5EncoderModel | None
    vae: AutoencoderKLWan | None
    transformer: WanTransformer3DModel | None
    scheduler: FlowMatchEulerDiscreteScheduler
    transformer_2: WanTransformer3DModel | None = None
    boundary_ratio: float | None = None
    text_len: int = 512  # max_sequence_length used when encoding prompts (also at inference)
    expand_timesteps: bool = False  # per-token timesteps, as WanPipeline(expand_timesteps=True) (Wan2.2 TI2V)
    extra: dict = field(default_factory=dict)
    # where the text encoder and VAE compute when they live elsewhere between calls (wan2.memory.apply: kept in
    # CPU memory on a GPU run, borrowed onto the GPU for each call); None: compute where they are
    compute_device: Any = None

    # -- geometry ---------------------------------------------------------------------------------------
    @property
    def t_stride(self) -> int:
        return int(self.vae.config.scale_factor_temporal)

    @property
    def s_stride(self) -> int:
        return int(self.vae.config.scale_factor_spatial)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """(frames, height, width) the transformer's patch embedding cuts latents into."""
        return tuple(int(p) for p in self.transformer.config.patch_size)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F', H', W') of the latent of a clip, as WanPipeline.prepare_latents makes it."""
        return (
            self.latent_channels,
            (num_frames - 1) // self.t_stride + 1,
            height // self.s_stride,
            width // self.s_stride,
        )

    # -- text -------------------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, padded to ``text_len`` exactly as WanPipeline does."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        out = self.tokenizer(
            [prompt_clean(p) for p in prompts],
            padding="max_length",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out.input_ids, out.attention_mask

    def borrowed(self, module: torch.nn.Module):
        """``module`` (text encoder or VAE) for one call: on ``compute_device`` for the call and back where it
        was after it when it lives elsewhere (``wan2.memory.offload.on_device``); else as it is."""
        home = next(module.parameters()).device
        if self.compute_device is None or torch.device(self.compute_device) == home:
            return contextlib.nullcontext(module)
        from wan2.memory.offload import on_device

        return on_device(module, self.compute_device, home=home)

    def embed_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """UMT5 hidden states with padding positions zeroed: (B, text_len, text_dim), as WanPipeline; on the
        device of ``ids`` (the text encoder computes where it is, or borrowed onto ``compute_device``)."""
        with self.borrowed(self.text_encoder) as encoder:
            dev = next(encoder.parameters()).device
            hidden = encoder(ids.to(dev), mask.to(dev)).last_hidden_state  # (B, L, D)
            return (hidden * mask.to(dev)[..., None].to(hidden.dtype)).to(ids.device)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.embed_tokens(*self.tokenize(prompts))

    # -- video <-> normalised latents -------------------------------------------------------------------
    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.vae.config.z_dim
        mean = torch.tensor(self.vae.config.latents_mean, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.vae.config.latents_std, dtype=like.dtype, device=like.device)
        return mean.view(1, c, 1, 1, 1), std.view(1, c, 1, 1, 1)

    def encode_video(self, video: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Video (B, 3, F, H, W) in [-1, 1] -> normalised latents (B, C, F', H', W') the denoiser sees, on the
        device of ``video`` (the VAE computes where it is, or borrowed onto ``compute_device``)."""
        with self.borrowed(self.vae) as vae:
            dist = vae.encode(video.to(vae.device)).latent_dist
            z = dist.sample() if sample else dist.mode()
            mean, std = self._latent_stats(z)
            return ((z - mean) / std).to(video.device)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> video (B, 3, F, H, W) in [-1, 1], the inverse WanPipeline applies; on the
        device of ``latents``."""
        with self.borrowed(self.vae) as vae:
            z = latents.to(vae.device)
            mean, std = self._latent_stats(z)
            z = z.to(vae.dtype) * std + mean
            return vae.decode(z, return_dict=False)[0].clamp(-1, 1).to(latents.device)

    # -- diffusers --------------------------------------------------------------------------------------
    def pipeline(self) -> WanPipeline:
        """A stock WanPipeline over the same module objects (no copies)."""
        return WanPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            scheduler=self.scheduler,
            transformer=self.transformer,
            transformer_2=self.transformer_2,
            boundary_ratio=self.boundary_ratio,
            expand_timesteps=self.expand_timesteps,
        )

    def eval(self) -> WanBackbone:
        for m in (self.text_encoder, self.vae, self.transformer, self.transformer_2):
            if m is not None:
                m.eval()
        return self


# ----------------------------------------------------------------------------------------------- build


def _as_dict(cfg) -> dict:
    if cfg is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def build_backbone(
    model_cfg, components: tuple[str, ...] = COMPONENTS, device: str | None = None
) -> WanBackbone:
    """Build a stack from a model config (``configs/model/*.yaml``) or load ``model_cfg.pretrained``.

    ``device="meta"`` builds the architecture without allocating weights (for parameter counts and plans); with
    ``model.pretrained`` it is built from the folder's component configs, and no weight file is read.
    """
    given = model_cfg if isinstance(model_cfg, ModelConfig) else _as_dict(model_cfg)
    cfg = ModelConfig.of(given)  # every default from wan2/backbones/model_config.py
    checkpointing = cfg.gradient_checkpointing
    if cfg.pretrained:  # text_len not given: the folder's wan2.json says
        text_len = cfg.text_len if isinstance(given, ModelConfig) else given.get("text_len")
        if device == "meta":
            return _meta_from_folder(cfg.pretrained, components, text_len)
        return load_backbone(cfg.pretrained, text_len=text_len, gradient_checkpointing=checkpointing)
    ctx = torch.device("meta") if device == "meta" else contextlib.nullcontext()
    text_len = int(cfg.text_len)
    tokenizer = build_tokenizer(text_len) if "tokenizer" in components else None
    with ctx:
        text_encoder = vae = transformer = transformer_2 = None
        if "text_encoder" in components:
            te = dict(cfg.text_encoder)
            if te.get("vocab_size") in (None, "auto"):
                te["vocab_size"] = len(tokenizer) if tokenizer is not None else len(build_tokenizer())
            text_encoder = UMT5EncoderModel(UMT5Config(**te))
        if "vae" in components and not cfg.vae_pretrained:
            vae = AutoencoderKLWan(**cfg.vae)
        if "transformer" in components:
            transformer = WanTransformer3DModel(**_transformer_kwargs(cfg.transformer))
            if cfg.boundary_ratio is not None:
                transformer_2 = WanTransformer3DModel(**_transformer_kwargs(cfg.transformer))
    if "vae" in components and cfg.vae_pretrained:
        vae = load_vae(cfg.vae_pretrained)
    scheduler = FlowMatchEulerDiscreteScheduler(**cfg.scheduler)
    bb = WanBackbone(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
        transformer_2=transformer_2,
        boundary_ratio=cfg.boundary_ratio,
        text_len=text_len,
        expand_timesteps=cfg.expand_timesteps,
    )
    return set_gradient_checkpointing(bb, checkpointing)


def set_gradient_checkpointing(bb: WanBackbone, enabled: bool) -> WanBackbone:
    """Recompute each transformer block's activations in backward instead of keeping them (diffusers'
    ``enable_gradient_checkpointing``): the same loss and gradients for about a third more compute and far less
    activation memory (``model.gradient_checkpointing``)."""
    for t in (bb.transformer, bb.transformer_2):
        if t is None:
            continue
        if enabled:
            t.enable_gradient_checkpointing()
        else:
            t.disable_gradient_checkpointing()
    return bb


def load_vae(path: str | Path) -> AutoencoderKLWan:
    """A trained VAE from ``export/vae`` of a ``vae_tiny`` run (or any diffusers AutoencoderKLWan folder)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise BackboneError(
            f"model.vae_pretrained: {str(path)!r} has no config.json "
            "(run `python train.py experiment=vae_tiny` first)"
        )
    vet_component(path, "vae", "model.vae_pretrained")
    return AutoencoderKLWan.from_pretrained(str(path), use_safetensors=True).eval()


def _transformer_kwargs(t: dict) -> dict:
    t = dict(t)
    t["patch_size"] = tuple(t.get("patch_size", PATCH_SIZE))
    return t


def load_backbone(
    path: str | Path, text_len: int | None = None, torch_dtype=None, gradient_checkpointing: bool = False
) -> WanBackbone:
    """Load a stack from a local diffusers directory (a wan2 export or an official Wan 2.2 release).

    The folder is vetted first (``wan2.backbones.files.vet_pipeline``: allowed classes only, no custom code,
    safetensors with sound headers, a valid ``wan2.json``); nothing is instantiated before that passes.
    """
    path = Path(path)
    vet_pipeline(path, "model.pretrained")
    meta = read_wan2_json(path).to_dict()
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = WanPipeline.from_pretrained(str(path), use_safetensors=True, **kwargs)
    if text_len is None:
        text_len = int(meta.get("text_len", 512))
    bb = WanBackbone(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        transformer=pipe.transformer,
        scheduler=flow_euler_scheduler(pipe.scheduler),
        transformer_2=pipe.transformer_2,
        boundary_ratio=pipe.config.get("boundary_ratio"),
        text_len=int(text_len),
        expand_timesteps=bool(pipe.config.get("expand_timesteps", False)),
        extra={**meta, "source": str(path)},
    ).eval()
    return set_gradient_checkpointing(bb, gradient_checkpointing)


def _meta_from_folder(path: str | Path, components: tuple[str, ...], text_len: int | None) -> WanBackbone:
    """The architecture of a local diffusers folder on the meta device, from its component configs only
    (shapes for plans: no weight file is opened). ``tokenizer`` and ``scheduler`` come from their folders."""
    import diffusers
    import transformers

    path = Path(path)
    index = vet_pipeline(path, "model.pretrained", weights=False)
    parts = {}
    with torch.device("meta"):
        for sub in ("transformer", "transformer_2"):
            if "transformer" in components and isinstance(index.get(sub), list) and index[sub][0]:
                parts[sub] = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(path / sub))
        if "vae" in components:
            parts["vae"] = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(path / "vae"))
        if "text_encoder" in components:
            parts["text_encoder"] = UMT5EncoderModel(UMT5Config.from_pretrained(path / "text_encoder"))
    tokenizer = None
    if "tokenizer" in components:  # an allowed class (vet_pipeline): T5Tokenizer / T5TokenizerFast
        tokenizer = getattr(transformers, index["tokenizer"][1]).from_pretrained(path / "tokenizer")
    sched_cls = getattr(diffusers, index["scheduler"][1])  # an allowed diffusers scheduler class
    meta = read_wan2_json(path).to_dict()
    return WanBackbone(
        tokenizer=tokenizer,
        text_encoder=parts.get("text_encoder"),
        vae=parts.get("vae"),
        transformer=parts.get("transformer"),
        scheduler=flow_euler_scheduler(sched_cls.from_pretrained(path / "scheduler")),
        transformer_2=parts.get("transformer_2"),
        boundary_ratio=index.get("boundary_ratio"),
        text_len=int(text_len or meta.get("text_len") or 512),
        expand_timesteps=bool(index.get("expand_timesteps", False)),
        extra={**meta, "source": str(path)},
    )


def flow_euler_scheduler(scheduler) -> FlowMatchEulerDiscreteScheduler:
    """The Euler flow-matching scheduler the repo's sampler implements, with the same shift and timestep count.

    The official Wan 2.x diffusers releases (e.g. Wan2.2-T2V-A14B-Diffusers) ship ``UniPCMultistepScheduler``
    with flow sigmas (``flow_shift``); wan2 trains, samples and exports with ``FlowMatchEulerDiscreteScheduler``
    (``shift``) so that an export reproduces ``wan2.sampling`` exactly. Other flow schedulers are converted;
    anything else is refused.
    """
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return scheduler
    cfg = scheduler.config
    if not (cfg.get("use_flow_sigmas") or cfg.get("prediction_type") == "flow_prediction"):
        raise BackboneError(
            f"model.pretrained: scheduler {type(scheduler).__name__} is not a flow-matching "
            "scheduler (expected FlowMatchEulerDiscreteScheduler or UniPC with use_flow_sigmas)"
        )
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
        shift=float(cfg.get("flow_shift") or 1.0),
    )


def count_parameters(module: torch.nn.Module | None, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
