"""Plan a training run before launching it: parameters, memory per GPU and FLOPs per step, by arithmetic.

Nothing here allocates a weight or touches Lightning: the model is read from its meta-device build (shapes only)
and every estimate is a plain formula of those shapes, the clip size, the batch, the precision and the parallel
layout. ``scripts/plan.py`` composes the Hydra config and prints the result; the formulas and what they leave out
are written down in ``docs/plan.md``, and ``tests/test_plan.py`` holds them against what a tiny model really
keeps alive on the CPU.

Memory per GPU, in bytes (``P``: parameters, ``t``: trainable parameters, ``N``: GPUs a parameter is sharded over):

- weights: ``P x param_bytes / N`` (fp32 under ``*-mixed``: the master copy) for the transformer, plus the frozen
  text encoder (sharded in FSDP's root unit, else replicated) and VAE;
- grads ``t x param_bytes / N``; AdamW moments ``2 t x param_bytes / N``; EMA shadow ``4 t`` (whole tensors);
- activations: what autograd keeps for the backward pass, counted tensor by tensor from
  ``WanTransformerBlock.forward`` (``block_activation_bytes``), plus the autocast bf16 copies of the weights
  that the backward pass needs, plus the largest backward transient; with gradient checkpointing the block
  inputs of every layer plus one recomputed block.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from wan2.config_check import BLOCK_LINEAR

GiB = 2**30
# bytes of the tensors the Wan blocks always keep in float32 (FP32LayerNorm, RMS-norm upcasts, gates)
FP32 = 4

# block Linear layers (names inside ``blocks.N``, as config_check knows them); attn2.to_k / to_v read the text,
# every other one the video tokens
BLOCK_ROLES = BLOCK_LINEAR
TEXT_ROLES = ("attn2.to_k", "attn2.to_v")


class PlanError(ValueError):
    """An input the plan cannot use (bad clip size, unknown precision or strategy); one line, naming the key."""


# ------------------------------------------------------------------------------------------------ inputs


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

    @property
    def nonblock_params(self) -> int:
        return self.params - self.layers * self.block_params

    def role_weight(self, role: str) -> int:
        i, o = self.role_shapes[role]
        return i * o


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
    missing = [r for r in BLOCK_ROLES if r not in role_shapes]
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
        pt, ph, pw = self.patch
        h, w = self.latent_hw
        return (self.latent_frames // pt) * (h // ph) * (w // pw)

    @property
    def latent_elems(self) -> int:
        h, w = self.latent_hw
        return self.latent_channels * self.latent_frames * h * w


# ------------------------------------------------------------------------------------------------ activations


def block_activation_bytes(
    shape: TransformerShape, train: Trainable, prec: Precision, S: int, T: int
) -> float:
    """Bytes one ``WanTransformerBlock`` keeps for the backward pass, per sample of S video / T text tokens.

    Counted from the ops of ``WanTransformerBlock.forward`` (diffusers 0.42) with flash / memory-efficient SDPA
    (no S x S matrix is stored): ``b`` is the compute dtype's bytes, ``FP32`` the float32 upcasts the block
    always makes (``FP32LayerNorm``, RMS norm of q / k, the gated residuals).
    """
    b, f = prec.compute, FP32
    D, Fd, H = shape.dim, shape.ffn_dim, shape.heads
    sd, td, sf = S * D, T * D, S * Fd
    roles = train.roles
    # kept whatever trains (a gradient flows through every block)
    x = 3 * f * sd  # norm1 / norm2 / norm3 inputs (x.float())
    x += 3 * f * sd  # RMS-norm inputs: self-attention q, k; cross-attention q
    if any(train.needs_input(r) for r in TEXT_ROLES):
        x += f * td  # RMS-norm input of the cross-attention k (the text path carries a gradient)
    x += 4 * b * sd  # self-attention SDPA: q, k, v, out
    x += 2 * b * sd + 2 * b * td  # cross-attention SDPA: q, out (video); k, v (text)
    x += b * sf  # GELU input
    x += f * (2 * 3 * S + 3 * S + T) + f * H * 2 * S  # LayerNorm mean / rstd, RMS rstd, SDPA logsumexp
    if train.full:
        x += f * (3 * sd + td)  # normalised q / k (the RMS-norm weights train)
        x += 2 * f * sd  # modulation: norm1 / norm3 outputs (for the scale's gradient)
        x += b * sd + f * sd  # gates: attention output, ffn output (fp32)
        x += 3 * b * sd  # Linear inputs: attn1 q / k / v (one tensor), attn2.to_q, ffn.net.0.proj
        x += b * sf  # Linear input of ffn.net.2
        return float(x)
    # LoRA: an adapter's lora_A keeps its input; without autocast it is the tensor the block already keeps or
    # shares, under autocast every adapter keeps its own bf16 copy (PEFT casts its input to the adapter's fp32)
    own = prec.autocast
    qkv = sum(r in roles for r in ("attn1.to_q", "attn1.to_k", "attn1.to_v"))
    x += b * sd * (qkv if own else min(1, qkv))
    x += b * sd * (own and "attn1.to_out.0" in roles)  # else: the SDPA output itself
    x += b * sd * ("attn2.to_q" in roles)
    x += b * sd * (own and "attn2.to_out.0" in roles)
    # cross-attention k / v adapters: else the text embedding, shared by all blocks
    x += b * td * (own * sum(r in roles for r in TEXT_ROLES))
    x += b * sd * ("ffn.net.0.proj" in roles)
    x += b * sf * ("ffn.net.2" in roles)
    video_roles = sum(r in roles for r in BLOCK_ROLES if r not in TEXT_ROLES)
    x += b * train.rank * (S * video_roles + T * sum(r in roles for r in TEXT_ROLES))  # lora_B inputs
    return float(x)


def block_cast_bytes(shape: TransformerShape, train: Trainable) -> int:
    """bf16 copies of one block's weights that autocast makes and the backward pass keeps (``*-mixed`` only):
    every Linear whose weight trains or whose input carries a gradient (not the frozen text k / v of LoRA)."""
    roles = [r for r in BLOCK_ROLES if train.full or r not in TEXT_ROLES]
    n = sum(shape.role_weight(r) for r in roles)
    if not train.full:
        n += sum(train.rank * sum(shape.role_shapes[r]) for r in train.roles)
    return 2 * n


def activation_memory(
    shape: TransformerShape,
    train: Trainable,
    prec: Precision,
    clip: Clip,
    checkpointing: bool,
    fsdp: bool = False,
) -> dict:
    """Peak bytes of activations during forward + backward of one step on one GPU (weights, grads excluded).

    ``saved``: what autograd holds at the end of the forward pass (with checkpointing: the block inputs and
    what lies outside the blocks); ``weight_casts``: the autocast bf16 weight copies counted in ``peak``;
    ``transient``: the largest extra during the backward pass (the FFN's S x ffn_dim gradients);
    ``peak``: the larger of the forward-pass and backward-pass peaks.
    """
    b, f = prec.compute, FP32
    B, S, T, L, D = clip.batch, clip.tokens, clip.text_len, shape.layers, shape.dim
    block = B * block_activation_bytes(shape, train, prec, S, T)
    casts = prec.autocast and not fsdp  # under FSDP the gathered weights already are in the compute dtype
    routed = min(train.experts, B)  # experts that get samples (both A14B experts: each keeps its own copies)
    block_casts = routed * block_cast_bytes(shape, train) if casts else 0

    # outside the blocks: rope cos / sin (shared by the batch), text embedding, final norm, output and loss
    outside = 2 * S * shape.head_dim * f + B * (b * T * D + f * S * D)
    outside += B * (b + 3 * f) * clip.latent_elems
    if train.full:  # final modulation, proj_out / patch-embedding inputs, text embedder
        outside += B * (f * S * D + b * S * D + b * clip.latent_elems + 3 * b * T * D)
        outside_casts = (2 * shape.cast_params_full - L * block_cast_bytes(shape, train)) if casts else 0
    else:
        outside_casts = 2 * shape.proj_out_weight if casts else 0
    outside_casts *= routed

    # backward of the FFN: the gradients of its S x ffn_dim input and output are alive together; a trained
    # ffn.net.2 frees its saved input meanwhile, a LoRA on it adds its own gradient (fp32 under autocast)
    if train.full:
        ffn_k = b
    elif "ffn.net.2" in train.roles:
        ffn_k = 2 * b + (f if prec.autocast else b)
    else:
        ffn_k = 2 * b
    transient = B * ffn_k * S * shape.ffn_dim

    if not checkpointing:
        saved = L * (block + block_casts) + outside + outside_casts
        return {
            "saved": saved,
            "weight_casts": L * block_casts + outside_casts,
            "transient": transient,
            "peak": saved + transient,
        }
    inputs = L * B * b * S * D  # each checkpointed block keeps its input hidden states
    saved = inputs + outside + outside_casts
    backward = saved + block + block_casts + transient  # one block recomputed at a time
    # forward: autocast caches a bf16 copy of every trainable weight until it exits (the frozen ones of LoRA
    # are cast op by op), and a block's FFN tensors are alive while it runs
    cached = (L * block_casts + outside_casts) if train.full else block_casts
    forward = inputs + outside + cached + 2 * B * b * S * shape.ffn_dim
    if forward > backward:
        return {
            "saved": saved,
            "weight_casts": cached,
            "transient": 2 * B * b * S * shape.ffn_dim,
            "peak": forward,
        }
    return {
        "saved": saved,
        "weight_casts": outside_casts + block_casts,
        "transient": transient,
        "peak": backward,
    }


# ------------------------------------------------------------------------------------------------ FLOPs


def flops_per_step(
    shape: TransformerShape,
    train: Trainable,
    clip: Clip,
    checkpointing: bool,
    text_encoder_params: int = 0,
    teacher_forwards: int = 0,
) -> dict:
    """FLOPs of one optimizer step on one GPU (multiply-add = 2 FLOPs).

    Linear / conv layers: ``2 x weights x tokens`` forward; backward ``2x`` that when the weights train
    (input + weight gradients: the familiar ``6 x params x tokens``); for LoRA only the input gradients of the
    frozen layers the video tokens go through (not the patch embedding, not the text path) plus
    ``6 x adapter params x tokens``. Attention: ``4 S^2 d`` (QK^T and AV) self-attention and
    ``4 S T d`` cross-attention per layer forward, x3 for forward + backward. Checkpointing adds one forward of
    the blocks; the frozen text encoder costs ``2 x params x text tokens`` (0 when embeddings are cached).
    """
    B, S, T, L, d = clip.batch, clip.tokens, clip.text_len, shape.layers, shape.dim
    lin = 2 * B * (shape.token_params * S + shape.text_params * T)
    attn = B * L * (4 * S * S * d + 4 * S * T * d)
    if train.full:
        lin_bwd = 2 * lin
        adapters = 0
    else:
        lin_bwd = 2 * B * (shape.token_params - shape.patch_params) * S
        adapters = 6 * B * (train.token_params * S + train.text_params * T)
    recompute = (lin + attn) if checkpointing else 0
    out = {
        "linear_fwd": lin,
        "linear_bwd": lin_bwd,
        "adapters_fwd_bwd": adapters,
        "attention_fwd_bwd": 3 * attn,
        "recompute": recompute,
        "text_encoder_fwd": 2 * B * text_encoder_params * T,
        "teacher_fwd": teacher_forwards * (lin + attn),
    }
    out["total"] = sum(out.values())
    out["approx_6PT"] = 6 * B * shape.params * S  # the usual 6 x params x tokens rule, for comparison
    return out


# ------------------------------------------------------------------------------------------------ memory


@dataclass
class Components:
    """Parameter counts of the stack. ``idle``: loaded but not on the GPU during the step (the other A14B expert)."""

    transformer: int
    text_encoder: int = 0
    vae: int = 0
    idle: dict = field(default_factory=dict)
    teacher: int = 0  # a frozen copy of the transformer (distillation)


def memory_per_gpu(
    shape: TransformerShape,
    train: Trainable,
    prec: Precision,
    clip: Clip,
    par: Parallel,
    comps: Components,
    checkpointing: bool,
    ema: bool = False,
    text_encoder_trains: bool = False,
    overhead_gib: float = 0.0,
) -> dict:
    """Bytes per GPU by line; ``total`` = every resident line + max(activation peak, AdamW step temporaries)."""
    pb = prec.param
    # FSDP (configs/trainer/fsdp.yaml, FSDP2): one unit per WanTransformerBlock and per UMT5Block, the
    # transformer's embedders and proj_out in its root unit: all of it sharded over n
    n = par.shard if par.fsdp else 1
    te_train = comps.text_encoder if text_encoder_trains else 0
    frozen_transformer = 0 if train.full else comps.transformer
    lines = {
        "weights_trainable": (train.params + te_train) * pb / n,
        "weights_frozen_transformer": frozen_transformer * pb / n,
        "weights_text_encoder": (comps.text_encoder - te_train) * pb / n,
        "weights_vae": comps.vae * pb,
        "weights_teacher": comps.teacher * pb / n,
    }
    trainable = train.params + te_train
    if par.fsdp:
        # the block being computed and the one prefetched are gathered in the compute dtype; the root unit
        # (embedders, proj_out of every trained transformer) stays gathered through the step, and the whole
        # text encoder is counted gathered (an upper bound: FSDP2 gathers it block by block);
        # SHARD_GRAD_OP keeps every unit gathered from its forward to its backward
        gathered = comps.text_encoder + train.experts * shape.nonblock_params + 2 * shape.block_params
        if par.sharding in ("SHARD_GRAD_OP", "_HYBRID_SHARD_ZERO2"):
            gathered = comps.text_encoder + train.experts * shape.params
        lines["fsdp_gathered_weights"] = gathered * prec.compute
        lines["fsdp_unsharded_grads"] = shape.block_params * prec.compute if train.full else 0
    lines["grads"] = trainable * pb / n
    if par.strategy == "ddp":
        # DDP's flat gradient buckets (gradient_as_bucket_view=False)
        lines["ddp_grad_buckets"] = trainable * pb
    # AdamW: two moments in the parameters' dtype, and a 4-byte step per tensor
    lines["optimizer_adamw"] = 2 * trainable * pb / n + 4 * train.tensors
    lines["ema"] = FP32 * trainable if ema else 0  # EMA (wan2/lightning/ema.py) holds whole fp32 tensors
    act = activation_memory(shape, train, prec, clip, checkpointing, fsdp=par.fsdp)
    lines["activations"] = act["peak"]
    lines["overhead"] = overhead_gib * GiB
    adamw_step_tmp = trainable * pb / n  # foreach AdamW's step: sqrt(exp_avg_sq) of every tensor at once
    resident = sum(v for k, v in lines.items() if k != "activations")
    lines["total"] = resident + max(act["peak"], adamw_step_tmp)
    return {"lines": lines, "activation_detail": act, "adamw_step_tmp": adamw_step_tmp}


# ------------------------------------------------------------------------------------------------ plan


@dataclass
class PlanInputs:
    shape: TransformerShape
    train: Trainable
    prec: Precision
    clip: Clip
    par: Parallel
    comps: Components
    ema: bool = False
    text_encoder_trains: bool = False
    text_cached: bool = False
    teacher_forwards: int = 0
    gpu_memory_gib: float = 80.0
    overhead_gib: float = 2.0
    gpu_tflops: float = 989.0  # dense bf16 peak of an H100 SXM
    mfu: float = 0.4
    label: str = ""
    notes: list = field(default_factory=list)
    checkpointing: bool = False  # what the config runs (model.gradient_checkpointing); both are planned


def make_plan(inp: PlanInputs) -> dict:
    """The whole plan as a JSON-able dict: params, memory per GPU with and without checkpointing, FLOPs."""
    clip, shape, train = inp.clip, inp.shape, inp.train
    out = {
        "label": inp.label,
        "params": {
            "transformer": inp.comps.transformer,
            "text_encoder": inp.comps.text_encoder,
            "vae": inp.comps.vae,
            **({"teacher": inp.comps.teacher} if inp.comps.teacher else {}),
            **inp.comps.idle,
        },
        "trainable": {
            "kind": train.kind,
            "params": train.params + (inp.comps.text_encoder if inp.text_encoder_trains else 0),
            "share_of_transformer": train.params / inp.comps.transformer,
            **({"rank": train.rank, "roles": sorted(train.roles)} if train.kind == "lora" else {}),
        },
        "workload": {
            "frames": clip.frames,
            "height": clip.height,
            "width": clip.width,
            "batch_per_gpu": clip.batch,
            "latent": [clip.latent_channels, clip.latent_frames, *clip.latent_hw],
            "tokens_per_sample": clip.tokens,
            "text_len": clip.text_len,
        },
        "precision": asdict(inp.prec),
        "parallel": asdict(inp.par),
        "gpu_memory_gib": inp.gpu_memory_gib,
        "configured": "checkpointing" if inp.checkpointing else "no_checkpointing",
        "memory_gib": {},
        "fits": {},
        "flops": {},
        "seconds_per_step": {},
        "assumptions": {
            "gpu_tflops": inp.gpu_tflops,
            "mfu": inp.mfu,
            "overhead_gib": inp.overhead_gib,
            "attention": "flash / memory-efficient SDPA (no S x S matrix kept)",
        },
        "notes": list(inp.notes),
    }
    te_flops = 0 if inp.text_cached else inp.comps.text_encoder
    for ckpt in (False, True):
        key = "checkpointing" if ckpt else "no_checkpointing"
        mem = memory_per_gpu(
            shape,
            train,
            inp.prec,
            clip,
            inp.par,
            inp.comps,
            ckpt,
            ema=inp.ema,
            text_encoder_trains=inp.text_encoder_trains,
            overhead_gib=inp.overhead_gib,
        )
        out["memory_gib"][key] = {k: round(v / GiB, 2) for k, v in mem["lines"].items()}
        out["memory_gib"][key]["activation_detail"] = {
            k: round(v / GiB, 2) for k, v in mem["activation_detail"].items()
        }
        out["fits"][key] = mem["lines"]["total"] <= inp.gpu_memory_gib * GiB
        fl = flops_per_step(shape, train, clip, ckpt, te_flops, inp.teacher_forwards)
        out["flops"][key] = {k: float(f"{v:.4g}") for k, v in fl.items()}
        out["flops"][key]["global_step_total"] = float(f"{fl['total'] * inp.par.world:.4g}")
        out["seconds_per_step"][key] = round(fl["total"] / (inp.gpu_tflops * 1e12 * inp.mfu), 2)
    return out


def format_plan(plan: dict) -> str:
    """A human-readable report of ``make_plan``'s dict."""
    w = plan["workload"]
    par = plan["parallel"]
    lines = [
        f"plan: {plan['label']}" if plan["label"] else "plan",
        f"  clip {w['frames']} x {w['height']} x {w['width']}, batch {w['batch_per_gpu']} per GPU -> latent "
        f"{'x'.join(map(str, w['latent']))} -> {w['tokens_per_sample']:,} tokens per sample "
        f"(+ {w['text_len']} text tokens)",
        f"  precision {plan['precision']['name']}, {par['strategy']} on {par['world']} GPU(s)"
        + (f" ({par['sharding']} over {par['shard']})" if par["strategy"] == "fsdp" else ""),
        "  parameters:",
    ]
    for k, v in plan["params"].items():
        lines.append(f"    {k:<28}{_count(v):>12}")
    t = plan["trainable"]
    lines.append(
        f"    {'trainable (' + t['kind'] + ')':<28}{_count(t['params']):>12} = "
        f"{100 * t['share_of_transformer']:.2f}% of the transformer"
        + (f" (rank {t['rank']} on {', '.join(t['roles'])})" if t["kind"] == "lora" else "")
    )
    a, c = plan["memory_gib"]["no_checkpointing"], plan["memory_gib"]["checkpointing"]
    lines.append(f"  memory per GPU (GiB){'':<11}{'no ckpt':>10}{'ckpt':>10}")
    for k in a:
        if k == "activation_detail" or (not a[k] and not c[k]):
            continue
        lines.append(f"    {k:<28}{a[k]:>10.2f}{c[k]:>10.2f}")
    for key, name in (("no_checkpointing", "without"), ("checkpointing", "with")):
        fl = plan["flops"][key]
        mark = "*" if plan.get("configured") == key else " "
        lines.append(
            f"{mark} {name} gradient checkpointing: {fl['total'] / 1e12:,.1f} TFLOP per GPU per step "
            f"(~{plan['seconds_per_step'][key]} s at {plan['assumptions']['mfu']:.0%} of "
            f"{plan['assumptions']['gpu_tflops']:.0f} TFLOP/s); fits in {plan['gpu_memory_gib']:g} GiB: "
            f"{'yes' if plan['fits'][key] else 'no'} ({plan['memory_gib'][key]['total']:.1f} GiB)"
        )
    lines.append("  (* what the config runs: model.gradient_checkpointing)")
    for note in plan["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _count(n: int) -> str:
    """A parameter count as 5.000 B / 13.11 M / 86.0 k."""
    for unit, scale, digits in (("B", 1e9, 3), ("M", 1e6, 2), ("k", 1e3, 1)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return str(n)


def table_row(plan: dict) -> dict:
    """The headline numbers of a plan (one row of the README table)."""
    a, c = plan["memory_gib"]["no_checkpointing"], plan["memory_gib"]["checkpointing"]
    return {
        "run": plan["label"],
        "tokens": plan["workload"]["tokens_per_sample"],
        "trainable_B": round(plan["trainable"]["params"] / 1e9, 4),
        "weights_GiB": round(sum(v for k, v in c.items() if k.startswith(("weights", "fsdp_gathered"))), 1),
        "grads_optim_ema_GiB": round(
            sum(
                c[k]
                for k in c
                if k in ("grads", "optimizer_adamw", "ema", "fsdp_unsharded_grads", "ddp_grad_buckets")
            ),
            1,
        ),
        "act_GiB": a["activations"],
        "act_ckpt_GiB": c["activations"],
        "total_GiB": a["total"],
        "total_ckpt_GiB": c["total"],
        "fits": plan["fits"]["no_checkpointing"],
        "fits_ckpt": plan["fits"]["checkpointing"],
        "TFLOP_per_gpu_step_ckpt": round(plan["flops"]["checkpointing"]["total"] / 1e12, 1),
    }


# ------------------------------------------------------------------------------------------------ from a config


def _objective_kinds() -> dict[str, str]:
    """LightningModule class name -> ``full`` / ``lora`` / ``distill``: each objective declares it (``PLAN``)."""
    from wan2.objectives import plan_kinds

    return plan_kinds()


def _container(cfg, resolve: bool = True) -> dict:
    from omegaconf import OmegaConf

    if cfg is None:
        return {}
    return OmegaConf.to_container(cfg, resolve=resolve) if OmegaConf.is_config(cfg) else dict(cfg)


def meta_stack(model_cfg):
    """The model on the meta device (shapes, no weights): from the config's numbers, or from the component
    ``config.json`` files of ``model.pretrained`` (no weight is read)."""
    from types import SimpleNamespace

    from wan2.backbones.stack import build_backbone

    model = _container(model_cfg)
    if not model.get("pretrained"):
        return build_backbone(model, components=("text_encoder", "vae", "transformer"), device="meta")
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    root = Path(model["pretrained"])
    if not (root / "transformer" / "config.json").is_file():
        raise PlanError(
            f"model.pretrained: {str(root)!r} has no transformer/config.json (not a diffusers export)"
        )
    parts = {}
    with torch.device("meta"):
        for sub in ("transformer", "transformer_2"):
            if (root / sub / "config.json").is_file():
                parts[sub] = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(root / sub))
        if (root / "vae" / "config.json").is_file():
            parts["vae"] = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(root / "vae"))
        if (root / "text_encoder" / "config.json").is_file():
            parts["text_encoder"] = UMT5EncoderModel(UMT5Config.from_pretrained(root / "text_encoder"))
    text_len = int(model.get("text_len") or 512)
    return SimpleNamespace(
        transformer=parts["transformer"],
        transformer_2=parts.get("transformer_2"),
        vae=parts.get("vae"),
        text_encoder=parts.get("text_encoder"),
        text_len=text_len,
    )


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def plan_from_config(cfg, **kwargs) -> dict:
    """``make_plan`` for a composed ``train.yaml`` config (model, objective, lora, data, trainer)."""
    return make_plan(plan_inputs(cfg, **kwargs))


def plan_inputs(
    cfg,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int | None = None,
    gpu_memory_gib: float = 80.0,
    overhead_gib: float = 2.0,
    gpu_tflops: float = 989.0,
    mfu: float = 0.4,
    label: str = "",
    stack=None,
) -> PlanInputs:
    """What a composed config asks for: the model read off its meta build, trainable weights from the objective
    (``lora`` for LoRAModule), clip and batch from the data config (or the arguments), precision and GPUs from
    the trainer."""
    from omegaconf import OmegaConf

    notes = []
    objective = _container(cfg.objective, resolve=False)
    target = str(objective.get("_target_", "")).rsplit(".", 1)[-1]
    kinds = _objective_kinds()
    kind = kinds.get(target)
    if kind is None:
        raise PlanError(
            f"objective: {target or '?'} trains no Wan transformer; plan one of "
            f"{sorted(kinds)} (objective=flow_matching | lora | distill)"
        )
    obj = _container(cfg.objective)
    stack = stack if stack is not None else meta_stack(cfg.model)
    # Wan2.2 A14B (wan2/lightning/experts.py): objective.expert high / low trains one expert and leaves the other
    # off the GPU; both (the default, null) trains the two, each sample going to the expert of its sigma
    experts = {"high": stack.transformer, "low": stack.transformer_2}
    expert = obj.get("expert")
    if stack.transformer_2 is None:
        if expert not in (None, "high"):
            raise PlanError(
                f"objective.expert: {expert!r} needs a two-expert model (Wan2.2 A14B); this one has "
                "one transformer (allowed: null or 'high')"
            )
        trained, idle = ["high"], {}
    else:
        expert = expert or "both"
        if expert not in ("high", "low", "both"):
            raise PlanError(f"objective.expert: {expert!r} is not one of ['high', 'low', 'both'] (or null)")
        trained = ["high", "low"] if expert == "both" else [expert]
        idle = {
            f"{'transformer' if k == 'high' else 'transformer_2'} (idle)": _numel(experts[k])
            for k in experts
            if k not in trained
        }
        notes.append(
            f"two experts, objective.expert={expert}: "
            + (
                f"the {expert}-noise expert trains, the other stays off the GPU"
                if len(trained) == 1
                else "both train (each sample goes to one), both on the GPU"
            )
        )
    transformer = experts[trained[0]]
    shape = describe_transformer(transformer)
    if kind == "lora":
        from wan2.lora.adapters import target_regex
        from wan2.lora.config import LoRAConfig

        try:
            lora = LoRAConfig.build(_container(cfg.lora))  # defaults and checks: LoRAConfig
            pattern = target_regex(str(lora.targets))
        except ValueError as err:  # ConfigError included
            raise PlanError(str(err)) from None
        one = lora_trainable(transformer, pattern, int(lora.rank))
        k = len(trained)
        train = Trainable(
            "lora",
            k * one.params,
            k * one.tensors,
            one.rank,
            one.roles,
            one.token_params,
            one.text_params,
            experts=k,
        )
    else:
        train = full_trainable(shape, experts=len(trained))
    te_trains = kind != "lora" and bool(obj.get("train_text_encoder", False))

    data = _container(cfg.data)
    rj = data.get("rankjump") or {}

    def pick(value, key):
        v = value if value is not None else data.get(key, rj.get(key))
        if v is None:
            raise PlanError(f"data: no {key} in the data config; pass {key}=N")
        return int(v)

    frames = pick(frames, "num_frames")
    height, width = pick(height, "height"), pick(width, "width")
    batch = pick(batch_size, "batch_size")
    vae = stack.vae
    if vae is None:
        raise PlanError("model: no VAE config (model.vae or model.pretrained/vae) to size the latents")
    clip = Clip(
        frames,
        height,
        width,
        batch,
        int(stack.text_len),
        int(vae.config.scale_factor_temporal),
        int(vae.config.scale_factor_spatial),
        int(transformer.config.in_channels),
        shape.patch,
    )

    trainer = _container(cfg.trainer, resolve=False)
    raw_precision = str(trainer.get("precision", "32-true"))
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    if "auto_precision" in raw_precision and accelerator in ("gpu", "cuda", "auto"):
        prec = precision("bf16-mixed")
        notes.append(
            "trainer.precision is ${wan2.auto_precision}: planned as bf16-mixed (what it picks on a bf16 GPU)"
        )
    else:
        prec = precision(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
    par = parallel_from_trainer(
        {
            **_container(cfg.trainer, resolve=False),
            "devices": OmegaConf.select(cfg, "trainer.devices", default=1),
            "num_nodes": OmegaConf.select(cfg, "trainer.num_nodes", default=1),
        }
    )
    if accelerator == "cpu":
        notes.append("trainer.accelerator is cpu: 'GPU' below means this host's memory")

    comps = Components(
        transformer=len(trained) * shape.params,
        text_encoder=_numel(stack.text_encoder),
        vae=_numel(vae),
        idle=idle,
        teacher=shape.params if kind == "distill" else 0,
    )
    ema = float(obj.get("ema_decay", 0) or 0) > 0
    if ema:
        notes.append(
            "objective.ema_decay > 0: the fp32 EMA shadow of the trainable weights is counted whole on every GPU "
            "(wan2/lightning/ema.py keeps full tensors; objective.ema_decay=0 drops it)"
        )
    text_cached = bool(data.get("cache_text", False))
    notes.append(
        (
            "the text encoder trains (weights, grads, AdamW counted; its activations are not) and the VAE is frozen: "
            if te_trains
            else "text encoder and VAE are frozen: weights only, "
        )
        + (
            "the text encoder sharded in FSDP's root unit and gathered in the compute dtype for the step, "
            if par.fsdp
            else "replicated on every GPU, "
        )
        + f"{prec.param} bytes / parameter at rest"
        + ("; text embeddings come from the cache" if text_cached else "")
    )
    return PlanInputs(
        shape=shape,
        train=train,
        prec=prec,
        clip=clip,
        par=par,
        comps=comps,
        ema=ema,
        text_encoder_trains=te_trains,
        text_cached=text_cached,
        teacher_forwards=2 if kind == "distill" else 0,
        gpu_memory_gib=gpu_memory_gib,
        overhead_gib=overhead_gib,
        gpu_tflops=gpu_tflops,
        mfu=mfu,
        label=label or f"{_container(cfg.model).get('name', 'model')} {kind}",
        notes=notes,
        checkpointing=bool(OmegaConf.select(cfg, "model.gradient_checkpointing", default=False)),
    )
