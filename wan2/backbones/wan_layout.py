"""What the repo knows about the inside of a diffusers Wan transformer, in one torch-free module.

Module names and roles LoRA can wrap, the LoRA target presets, the patch / token / timestep layout and the
two-expert (Wan2.2 A14B) routing rule. ``wan2.config_check`` imports it before any heavy import, so nothing here
imports torch or diffusers at module level (``wan_block_classes`` imports diffusers when called).
"""

from __future__ import annotations

# ----------------------------------------------------------------------------------------------- module names

# Linear layers inside ``blocks.N`` of a WanTransformer3DModel (diffusers 0.42): self-attention ``attn1``
# (over all frames and positions: where motion lives), cross-attention ``attn2`` (to the text), the feed-forward.
BLOCK_LINEAR = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ffn.net.0.proj",
    "ffn.net.2",
)
# block Linears that read the text tokens (every other one reads the video tokens)
TEXT_ROLES = ("attn2.to_k", "attn2.to_v")
# the other modules of a block (suffixes of ``blocks.N``; "" is the block itself)
BLOCK_OTHER = ("", ".norm1", ".norm2", ".norm3", ".ffn", ".ffn.net", ".ffn.net.0", ".ffn.net.1") + tuple(
    f".{a}{s}" for a in ("attn1", "attn2") for s in ("", ".to_out", ".to_out.1", ".norm_q", ".norm_k")
)
_EMB = "condition_embedder"
# Every module of a WanTransformer3DModel (block N written once, as blocks.0): those LoRA (PEFT) can wrap and
# the rest. A target regex must full-match at least one of the first and none of the others (PEFT raises there).
WAN_LORA_MODULES = (
    "patch_embedding",
    f"{_EMB}.time_embedder.linear_1",
    f"{_EMB}.time_embedder.linear_2",
    f"{_EMB}.time_proj",
    f"{_EMB}.text_embedder.linear_1",
    f"{_EMB}.text_embedder.linear_2",
    "proj_out",
) + tuple(f"blocks.0.{m}" for m in BLOCK_LINEAR)
WAN_OTHER_MODULES = (
    "rope",
    _EMB,
    f"{_EMB}.timesteps_proj",
    f"{_EMB}.time_embedder",
    f"{_EMB}.time_embedder.act",
    f"{_EMB}.act_fn",
    f"{_EMB}.text_embedder",
    f"{_EMB}.text_embedder.act_1",
    "blocks",
    "norm_out",
) + tuple(f"blocks.0{m}" for m in BLOCK_OTHER)

# ----------------------------------------------------------------------------------------------- LoRA presets

# Where a LoRA preset puts adapters in each block (PEFT full-matches these regexes against module names):
# ``motion`` self-attention only, ``attention`` + cross-attention, ``all`` + the feed-forward.
_ATTN = r"(to_q|to_k|to_v|to_out\.0)"
TARGET_PRESETS = {
    "motion": rf".*blocks\.\d+\.attn1\.{_ATTN}",
    "attention": rf".*blocks\.\d+\.attn[12]\.{_ATTN}",
    "all": rf".*blocks\.\d+\.(attn[12]\.{_ATTN}|ffn\.net\.0\.proj|ffn\.net\.2)",
}
LORA_PRESETS = tuple(TARGET_PRESETS)

# ----------------------------------------------------------------------------------------------- layout

PATCH_SIZE = (1, 2, 2)  # (frames, height, width) of every official Wan 2.x transformer


def token_count(latent_fhw, patch_size=PATCH_SIZE) -> int:
    """Video tokens of one latent (F', H', W'): (F' / pt) x (H' / ph) x (W' / pw), as the patch embedding cuts it."""
    (f, h, w), (pt, ph, pw) = latent_fhw, patch_size
    return (int(f) // int(pt)) * (int(h) // int(ph)) * (int(w) // int(pw))


def transformer_timestep(t, latents, patch_size=PATCH_SIZE, expand: bool = False):
    """The ``timestep`` a Wan transformer takes for latents (B, C, F', H', W') at step ``t`` (B,): ``t`` itself,
    or with ``expand`` (Wan2.2 TI2V, ``WanPipeline(expand_timesteps=True)``) one timestep per token (B, S)."""
    if not expand:
        return t
    tokens = token_count(latents.shape[-3:], patch_size)
    return t[:, None].expand(latents.shape[0], tokens)  # (B, S)


# ----------------------------------------------------------------------------------------------- experts


def is_high_noise(timestep, boundary_ratio: float, num_train_timesteps: int = 1000):
    """Whether the high-noise expert (``transformer``) runs ``timestep`` (a number or a tensor, in 0..T): the
    Wan2.2 A14B rule of ``WanPipeline``, ``t >= boundary_ratio * num_train_timesteps``; ``transformer_2`` below."""
    return timestep >= boundary_ratio * num_train_timesteps


def is_moe(backbone) -> bool:
    """A two-expert (A14B) stack: a ``transformer_2`` and the ``boundary_ratio`` that switches to it."""
    return backbone.transformer_2 is not None and backbone.boundary_ratio is not None


def expert_at(backbone, timestep, default=None):
    """The transformer that runs ``timestep`` (a scalar) for ``backbone``: ``transformer_2`` below the boundary
    of a two-expert stack, else ``default`` (or ``backbone.transformer``)."""
    default = default if default is not None else backbone.transformer
    if not is_moe(backbone):
        return default
    num_train = int(backbone.scheduler.config.num_train_timesteps)
    return default if is_high_noise(timestep, backbone.boundary_ratio, num_train) else backbone.transformer_2


def wan_block_classes() -> set[type]:
    """``{WanTransformerBlock}``: the unit FSDP shards one by one (FSDP2 ``shard_per_block``, FSDP1
    ``auto_wrap_policy``)."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    return {WanTransformerBlock}
