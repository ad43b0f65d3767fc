"""What a plan is computed from: precision, parallel layout, the transformer's shapes, what trains, the clip.

``describe_transformer`` / ``lora_trainable`` read a meta-device build (shapes only, no weight); the rest are
plain values taken from the config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from wan2.backbones.wan_layout import BLOCK_LINEAR, TEXT_ROLES, token_count

GiB = 2**30
# bytes of the tensors the Wan blocks always keep in float32 (FP32LayerNorm, RMS-norm upcasts, gates)
FP32 = 4


class PlanError(ValueError):
    """An input the plan cannot use (bad clip size, unknown precision or strategy); one line, naming the key."""


@dataclass(frozen=True)
class Precision:
    """Bytes per element of compute (activations), of stored weights / grads / AdamW moments, and autocast."""

    name: str
    compute: int
    param: int
    autocast: bool


_PRECISIONS = {
    "32-true": Precision("32-true", 4, 4, False),
    "64-true": Precision("64-true", 8, 8, False),
    "bf16-mixed": Precision("bf16-mixed", 2, 4, True),
    "16-mixed": Precision("16-mixed", 2, 4, True),
    "bf16-true": Precision("bf16-true", 2, 2, False),
    "16-true": Precision("16-true", 2, 2, False),
}
_PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}


def precision(name) -> Precision:
    """A Lightning ``trainer.precision`` value (``bf16-mixed``, ``32-true``, ``16``, ...)."""
    key = _PRECISION_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _PRECISIONS:
        raise PlanError(f"trainer.precision: {name!r} is not one of {sorted(_PRECISIONS)}")
    return _PRECISIONS[key]


@dataclass(frozen=True)
class MemoryPlan:
    """The ``memory`` group as the plan counts it (``wan2.memory.config.MemoryConfig``, resolved)."""

    name: str = "default"  # the preset (or "custom")
    frozen_bytes: int = 4  # bytes per frozen weight at rest: 4 (fp32) or 2 (bf16)
    fp8: bool = False  # frozen block Linear weights at 1 byte + one fp32 scale per output row
    block_swap: int = 0  # blocks of the frozen transformer not resident (streamed in over PCIe)
    text_encoder_resident: bool = True  # false: encoders_on_device=auto with cached text embeddings
    vae_resident: bool = True  # false: encoders_on_device=auto with cached latents
    activation_offload: bool = False  # saved activations (checkpointed block inputs) in CPU memory
    pcie_gbps: float = 25.0  # host <-> GPU bandwidth per direction, GB/s (PCIe 4.0 x16 in practice)


@dataclass(frozen=True)
class Parallel:
    """How the transformer is spread: ``single``, ``ddp`` (replicated) or ``fsdp`` (sharded over ``shard``)."""

    strategy: str = "single"
    world: int = 1  # GPUs taking part (trainer.devices x trainer.num_nodes)
    # GPUs one parameter / grad / moment is split over (world for FULL_SHARD, devices for HYBRID_SHARD)
    shard: int = 1
    sharding: str = "FULL_SHARD"

    @property
    def fsdp(self) -> bool:
        return self.strategy == "fsdp"


def parallel_from_trainer(trainer: dict) -> Parallel:
    """``Parallel`` from a (resolved) ``trainer`` config: strategy string or dict (``_target_`` FSDPStrategy)."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    elif isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or devices < 1:
        raise PlanError(
            f"trainer.devices: {devices!r} must be a GPU count for a plan (e.g. trainer.devices=8)"
        )
    nodes = int(trainer.get("num_nodes", 1) or 1)
    world = devices * nodes
    strategy = trainer.get("strategy", "auto")
    sharding = "FULL_SHARD"
    if isinstance(strategy, dict):
        name = str(strategy.get("_target_", strategy.get("name", ""))).lower()
        sharding = str(strategy.get("sharding_strategy", sharding)).upper()
        if strategy.get("reshard_after_forward") is False:  # FSDP2's ZeRO-2-like mode
            sharding = "SHARD_GRAD_OP"
    else:
        name = str(strategy or "auto").lower()
    if "fsdp" in name:
        kind = "fsdp"
    elif "deepspeed" in name:
        raise PlanError(f"trainer.strategy: {strategy!r}: deepspeed is not modelled (use fsdp or ddp)")
    elif world > 1:
        kind = "ddp"  # auto / ddp / ddp_spawn / ...: replicated weights
    else:
        kind = "single"
    shard = 1
    if kind == "fsdp":
        shard = {
            "FULL_SHARD": world,
            "SHARD_GRAD_OP": world,
            "HYBRID_SHARD": devices,
            "_HYBRID_SHARD_ZERO2": devices,
            "NO_SHARD": 1,
        }.get(sharding)
        if shard is None:
            raise PlanError(
                f"trainer.strategy.sharding_strategy: {sharding!r} is not an FSDP sharding strategy"
            )
    return Parallel(kind, world, shard, sharding)


@dataclass(frozen=True)
class TransformerShape:
    """What the estimates need from a ``WanTransformer3DModel`` (read off its meta-device build)."""

    dim: int
    ffn_dim: int
    heads: int
    head_dim: int
    layers: int
    patch: tuple[int, int, int]
    in_channels: int
    out_channels: int
    params: int  # all parameters
    tensors: int  # parameter tensors (AdamW keeps one ``step`` scalar per tensor)
    block_params: int  # one WanTransformerBlock: the FSDP unit
    role_shapes: dict  # block Linear role -> (in_features, out_features)
    # weights applied once per video token (block Linears but attn2.to_k/v, patch conv, proj_out)
    token_params: int
    text_params: int  # weights applied once per text token (attn2.to_k/v, text embedder)
    cast_params_full: int  # Linear + Conv weights: the bf16 copies autocast keeps when everything trains
    proj_out_weight: int
    patch_params: int  # patch-embedding Conv3d weight
    block_linear_rows: int = 0  # output rows of one block's Linear layers (fp8 keeps one scale per row)
    keep_fp32_params: int = 0  # parameters diffusers keeps in fp32 in a bf16 model (_keep_in_fp32_modules)
    block_keep_fp32_params: int = 0  # those of one block

    @property
    def block_linear_params(self) -> int:
        """Linear weights of one block (what fp8 storage shrinks)."""
        return sum(i * o for i, o in self.role_shapes.values())

    @property
    def nonblock_params(self) -> int:
        return self.params - self.layers * self.block_params

    def role_weight(self, role: str) -> int:
        i, o = self.role_shapes[role]
        return i * o


def _keeps(transformer) -> tuple:
    return tuple(getattr(transformer, "_keep_in_fp32_modules", None) or ())


def keep_fp32(module) -> list:
    """wan2.memory.frozen.keep_fp32 (the parameters a bf16 frozen base keeps in fp32)."""
    from wan2.memory.frozen import keep_fp32 as keep

    return keep(module)


def describe_transformer(transformer) -> TransformerShape:
    """Shapes and parameter groups of a WanTransformer3DModel (works on the meta device: nothing is read)."""
    import torch

    cfg = transformer.config
    params = tensors = 0
    for p in transformer.parameters():
        params += p.numel()
        tensors += 1
    blocks = transformer.blocks
    block_params = sum(p.numel() for p in blocks[0].parameters())
    role_shapes, token, text, cast = {}, 0, 0, 0
    for name, mod in transformer.named_modules():
        if isinstance(mod, torch.nn.Linear):
            w = mod.in_features * mod.out_features
            cast += w
            m = re.match(r"blocks\.(\d+)\.(.+)$", name)
            role = m.group(2) if m else None
            if m and m.group(1) == "0":
                role_shapes[role] = (mod.in_features, mod.out_features)
            if role in TEXT_ROLES or name.startswith("condition_embedder.text_embedder"):
                text += w
            elif not name.startswith("condition_embedder"):  # time embedding: once per sample, negligible
                token += w
        elif isinstance(mod, torch.nn.Conv3d):  # patch embedding: one C*pt*ph*pw x D matmul per token
            token += mod.weight.numel()
            cast += mod.weight.numel()
    missing = [r for r in BLOCK_LINEAR if r not in role_shapes]
    if missing:
        raise PlanError(
            f"model.transformer: block Linear layers {missing} not found (not a WanTransformer3DModel?)"
        )
    heads = int(cfg.num_attention_heads)
    head_dim = int(cfg.attention_head_dim)
    return TransformerShape(
        dim=heads * head_dim,
        ffn_dim=int(cfg.ffn_dim),
        heads=heads,
        head_dim=head_dim,
        layers=int(cfg.num_layers),
        patch=tuple(int(v) for v in cfg.patch_size),
        in_channels=int(cfg.in_channels),
        out_channels=int(cfg.out_channels or cfg.in_channels),
        params=params,
        tensors=tensors,
        block_params=block_params,
        role_shapes=role_shapes,
        token_params=token,
        text_params=text,
        cast_params_full=cast,
        proj_out_weight=transformer.proj_out.weight.numel(),
        block_linear_rows=sum(o for _, o in role_shapes.values()),
        keep_fp32_params=sum(p.numel() for p in keep_fp32(transformer)),
        block_keep_fp32_params=sum(
            p.numel()
            for n, p in blocks[0].named_parameters()
            if any(k in n.split(".") for k in _keeps(transformer))
        ),
        patch_params=transformer.patch_embedding.weight.numel(),
    )


@dataclass(frozen=True)
class Trainable:
    """Which transformer weights train: ``full`` (all of them) or ``lora`` (adapters on ``roles``)."""

    kind: str  # full | lora
    params: int  # trainable parameters (the adapters for lora)
    tensors: int
    rank: int = 0
    roles: frozenset = frozenset()  # block Linear roles carrying an adapter (lora)
    token_params: int = 0  # adapter weights applied per video token / per text token (FLOPs)
    text_params: int = 0
    experts: int = 1  # transformers that train (2: both Wan2.2 A14B experts, each sample routed to one)

    @property
    def full(self) -> bool:
        return self.kind == "full"

    def needs_input(self, role: str) -> bool:
        """Whether the backward pass needs this Linear's input (its weight or its adapter trains)."""
        return self.full or role in self.roles


def full_trainable(shape: TransformerShape, experts: int = 1) -> Trainable:
    return Trainable("full", experts * shape.params, experts * shape.tensors, experts=experts)


def lora_trainable(transformer, pattern: str, rank: int) -> Trainable:
    """Adapter parameters PEFT adds for ``pattern`` (full-match regex over module names, as PEFT matches a
    string ``target_modules``): ``rank x (in + out)`` per targeted Linear, counted on the meta model."""
    import torch

    if rank < 1:
        raise PlanError(f"lora.rank: {rank} must be >= 1")
    params = tensors = token = text = 0
    roles = set()
    for name, mod in transformer.named_modules():
        if not isinstance(mod, torch.nn.Linear) or not re.fullmatch(pattern, name):
            continue
        n = rank * (mod.in_features + mod.out_features)
        params += n
        tensors += 2
        m = re.match(r"blocks\.\d+\.(.+)$", name)
        if m:
            roles.add(m.group(1))
        if (m and m.group(1) in TEXT_ROLES) or name.startswith("condition_embedder.text_embedder"):
            text += n
        else:
            token += n
    if params == 0:
        raise PlanError(f"lora.targets: {pattern!r} matches no Linear layer of the transformer")
    return Trainable("lora", params, tensors, rank, frozenset(roles), token, text)


@dataclass(frozen=True)
class Clip:
    """One training sample: video frames x height x width -> latent -> tokens; ``batch`` samples per GPU."""

    frames: int
    height: int
    width: int
    batch: int
    text_len: int
    t_stride: int  # VAE temporal compression
    s_stride: int  # VAE spatial compression
    latent_channels: int
    patch: tuple[int, int, int]

    def __post_init__(self):
        pt, ph, pw = self.patch
        if self.frames < 1 or (self.frames - 1) % self.t_stride:
            raise PlanError(
                f"num_frames: {self.frames} must be {self.t_stride}k+1 for a VAE with temporal "
                f"stride {self.t_stride}"
            )
        for key, v in (("height", self.height), ("width", self.width)):
            if v < 1 or v % (self.s_stride * max(ph, pw)):
                raise PlanError(
                    f"{key}: {v} must be a multiple of {self.s_stride * max(ph, pw)} "
                    "(VAE stride x patch size)"
                )
        if self.latent_frames % pt:
            raise PlanError(
                f"num_frames: {self.frames} gives {self.latent_frames} latent frames, "
                f"not a multiple of the temporal patch {pt}"
            )
        if self.batch < 1:
            raise PlanError(f"batch_size: {self.batch} must be >= 1")

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // self.t_stride + 1

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // self.s_stride, self.width // self.s_stride

    @property
    def tokens(self) -> int:
        """Video tokens per sample: latent frames x (H / stride / patch) x (W / stride / patch)."""
        return token_count((self.latent_frames, *self.latent_hw), self.patch)

    @property
    def latent_elems(self) -> int:
        h, w = self.latent_hw
        return self.latent_channels * self.latent_frames * h * w
