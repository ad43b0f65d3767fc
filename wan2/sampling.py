"""The repo's own sampler: text -> latents -> video with the Euler flow sampler, step for step what stock
``WanPipeline`` does (same noise, same sigma grid, same CFG), so exports reproduce it exactly. With a first
frame (``first_latents``, TI2V) it does what ``WanImageToVideoPipeline(expand_timesteps=True)`` does: the
clean frame-0 latent pasted before every step and after the last, timestep 0 on its tokens."""

from __future__ import annotations

import torch

from wan2.backbones.wan_layout import expert_at, transformer_timestep
from wan2.diffusion import euler_sample, inference_sigmas
from wan2.diffusion.first_frame import paste_first_frame, token_timesteps
from wan2.sampling_config import SAMPLE_DEFAULTS


@torch.no_grad()
def sample_latents(
    backbone,
    prompts: list[str],
    *,
    num_frames: int,
    height: int,
    width: int,
    num_inference_steps: int = SAMPLE_DEFAULTS.num_inference_steps,
    guidance_scale: float = SAMPLE_DEFAULTS.guidance_scale,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    transformer=None,
    negative_prompt: str = "",
    prompt_embeds: torch.Tensor | None = None,
    first_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalised latents (B, C, F', H', W') for ``prompts``; one generator for the batch, as WanPipeline.

    ``first_latents`` (B or 1, C, 1, H', W'): the normalised latent of a first frame (``encode_first_frame``)
    that every video continues."""
    transformer = transformer if transformer is not None else backbone.transformer
    device = next(transformer.parameters()).device
    # diffusers' dtype: the weights' compute dtype, skipping what a bf16 model keeps in fp32 (wan2.memory.frozen)
    dtype = getattr(transformer, "dtype", None) or next(transformer.parameters()).dtype
    # 1. Encode prompts (and the negative prompt when guiding)
    cond = prompt_embeds if prompt_embeds is not None else backbone.encode_prompts(prompts)
    cond = cond.to(device, dtype)
    uncond = None
    if guidance_scale > 1.0:
        uncond = backbone.encode_prompts([negative_prompt] * len(prompts)).to(device, dtype)
    # 2. Initial noise, drawn like diffusers.utils.torch_utils.randn_tensor
    if generator is None:
        generator = torch.Generator("cpu").manual_seed(seed if seed is not None else 0)
    shape = (len(prompts), *backbone.latent_shape(num_frames, height, width))
    z = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    # 3. Timestep grid of the exported scheduler
    sigmas = inference_sigmas(
        num_inference_steps,
        float(backbone.scheduler.config.shift),
        int(backbone.scheduler.config.num_train_timesteps),
    )

    # 4. Expert per step (Wan2.2 A14B: `transformer` at t >= boundary, `transformer_2` below) and the
    #    timestep layout (per token with expand_timesteps, as the Wan2.2 TI2V pipeline): wan2.backbones.wan_layout
    def model_at(t):
        return expert_at(backbone, t[0], default=transformer)

    patch = backbone.patch_size if backbone.expand_timesteps else None

    def timestep(x, t):
        if first_latents is not None:  # per token, 0 on the first frame's (the pipeline's first_frame_mask)
            return token_timesteps(t, x.shape[-3:], backbone.patch_size)
        return transformer_timestep(t, x, patch, backbone.expand_timesteps)

    def model_input(x):
        return (paste_first_frame(x, first_latents.to(x.device)) if first_latents is not None else x).to(
            dtype
        )

    def velocity(x, t):
        return model_at(t)(
            hidden_states=model_input(x),
            timestep=timestep(x, t),
            encoder_hidden_states=cond,
            return_dict=False,
        )[0]

    def velocity_uncond(x, t):
        return model_at(t)(
            hidden_states=model_input(x),
            timestep=timestep(x, t),
            encoder_hidden_states=uncond,
            return_dict=False,
        )[0]

    # 5. Denoising loop
    z = euler_sample(
        velocity,
        z,
        sigmas,
        uncond_velocity_fn=velocity_uncond if uncond is not None else None,
        guidance_scale=guidance_scale,
    )
    return paste_first_frame(z, first_latents.to(z.device)) if first_latents is not None else z


@torch.no_grad()
def encode_first_frame(backbone, image: torch.Tensor) -> torch.Tensor:
    """Image(s) (B, 3, H, W) in [-1, 1] -> normalised first-frame latents (B, C, 1, H', W'), as the pipeline's
    ``prepare_latents``: a one-frame video, the posterior mode (``sample_mode="argmax"``)."""
    return backbone.encode_video(image.float()[:, :, None])


@torch.no_grad()
def sample_videos(backbone, prompts: list[str], **kwargs) -> torch.Tensor:
    """Videos (B, 3, F, H, W) in [-1, 1]."""
    latents = sample_latents(backbone, prompts, **kwargs)
    return backbone.decode_latents(latents)
