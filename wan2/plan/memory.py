"""Memory per GPU: activations kept for the backward pass (counted op by op from ``WanTransformerBlock.forward``),
autocast weight copies, and the resident lines (weights, grads, AdamW, EMA, FSDP / DDP buffers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from wan2.backbones.wan_layout import BLOCK_LINEAR, TEXT_ROLES
from wan2.plan.inputs import FP32, Clip, GiB, MemoryPlan, Parallel, Precision, Trainable, TransformerShape


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
    video_roles = sum(r in roles for r in BLOCK_LINEAR if r not in TEXT_ROLES)
    x += b * train.rank * (S * video_roles + T * sum(r in roles for r in TEXT_ROLES))  # lora_B inputs
    return float(x)


def block_cast_bytes(shape: TransformerShape, train: Trainable, frozen_cast: bool = True) -> int:
    """bf16 copies of one block's weights that autocast makes and the backward pass keeps (``*-mixed`` only):
    every Linear whose weight trains or whose input carries a gradient (not the frozen text k / v of LoRA).
    ``frozen_cast=False``: frozen weights already stored in bf16 are used as they are (no copy)."""
    roles = [r for r in BLOCK_LINEAR if train.full or r not in TEXT_ROLES]
    n = sum(shape.role_weight(r) for r in roles) if (train.full or frozen_cast) else 0
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
    frozen_cast: bool = True,
    offload: bool = False,
) -> dict:
    """Peak bytes of activations during forward + backward of one step on one GPU (weights, grads excluded).

    ``frozen_cast=False``: the frozen weights are stored in bf16 (no autocast copies of them); ``offload``
    (``memory.activation_offload``): with checkpointing the block inputs wait in CPU memory (two in flight on
    the GPU), without it every block's saved tensors do (the block being computed stays); ``offloaded``: the
    bytes that go to the host and back each step.

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
    block_casts = routed * block_cast_bytes(shape, train, frozen_cast) if casts else 0

    # outside the blocks: rope cos / sin (shared by the batch), text embedding, final norm, output and loss
    outside = 2 * S * shape.head_dim * f + B * (b * T * D + f * S * D)
    outside += B * (b + 3 * f) * clip.latent_elems
    if train.full:  # final modulation, proj_out / patch-embedding inputs, text embedder
        outside += B * (f * S * D + b * S * D + b * clip.latent_elems + 3 * b * T * D)
        outside_casts = (2 * shape.cast_params_full - L * block_cast_bytes(shape, train)) if casts else 0
    else:
        outside_casts = 2 * shape.proj_out_weight if casts and frozen_cast else 0
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
        offloaded = (L - 1) * (block + block_casts) if offload else 0  # the block being computed stays
        return {
            "saved": saved - offloaded,
            "weight_casts": L * block_casts + outside_casts,
            "transient": transient,
            "peak": saved - offloaded + transient,
            "offloaded": offloaded,
        }
    inputs = L * B * b * S * D  # each checkpointed block keeps its input hidden states
    offloaded = 0
    if offload:  # parked on the host until the recompute (wan2.memory.activations.offloaded_checkpoint)
        offloaded = inputs
        inputs = min(L, 2) * B * b * S * D
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
            "offloaded": offloaded,
        }
    return {
        "saved": saved,
        "weight_casts": outside_casts + block_casts,
        "transient": transient,
        "peak": backward,
        "offloaded": offloaded,
    }


@dataclass
class Components:
    """Parameter counts of the stack. ``idle``: loaded but not on the GPU during the step (the other A14B expert)."""

    transformer: int
    text_encoder: int = 0
    vae: int = 0
    idle: dict = field(default_factory=dict)
    teacher: int = 0  # a frozen copy of the transformer (distillation)


def frozen_transformer_bytes(
    shape: TransformerShape, mem: MemoryPlan, frozen_bytes: int, param_bytes: int
) -> tuple[int, int]:
    """(bytes of one whole frozen transformer, bytes of one of its blocks) at rest: ``frozen_bytes`` per
    weight (what diffusers keeps in fp32 at ``param_bytes``), or with ``mem.fp8`` the block Linear weights at
    1 byte plus one fp32 scale per output row."""
    extra = param_bytes - frozen_bytes  # the fp32-kept parameters (norms, modulation, time embedder)
    whole = shape.params * frozen_bytes + shape.keep_fp32_params * extra
    block = shape.block_params * frozen_bytes + shape.block_keep_fp32_params * extra
    if not mem.fp8:
        return whole, block
    lin, rows = shape.block_linear_params, shape.block_linear_rows
    fp8_block = block - lin * frozen_bytes + lin + FP32 * rows
    return whole - shape.layers * (block - fp8_block), fp8_block


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
    mem: MemoryPlan | None = None,
) -> dict:
    """Bytes per GPU by line; ``total`` = every resident line + max(activation peak, AdamW step temporaries);
    ``transfer``: host <-> GPU bytes per step (block swap streams in, activation offload both ways)."""
    pb = prec.param
    mem = mem or MemoryPlan(frozen_bytes=pb)
    fb = min(mem.frozen_bytes, pb)  # frozen weights at rest (bf16-true stores everything in bf16 already)
    # FSDP (configs/trainer/fsdp.yaml, FSDP2): one unit per WanTransformerBlock and per UMT5Block, the
    # transformer's embedders and proj_out in its root unit: all of it sharded over n
    n = par.shard if par.fsdp else 1
    te_train = comps.text_encoder if text_encoder_trains else 0
    frozen_experts = 0 if train.full else comps.transformer // shape.params
    one, block = frozen_transformer_bytes(shape, mem, fb, pb)
    swapped = min(mem.block_swap, shape.layers - 1) if frozen_experts else 0
    lines = {
        "weights_trainable": (train.params + te_train) * pb / n,
        "weights_frozen_transformer": frozen_experts * (one - swapped * block) / n,
        "block_swap_buffers": 2 * block if swapped else 0,  # the block computed and the one streaming in
        "weights_text_encoder": (comps.text_encoder - te_train) * fb / n if mem.text_encoder_resident else 0,
        "weights_vae": comps.vae * pb if mem.vae_resident else 0,
        "weights_teacher": (one if comps.teacher else 0) / n,
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
    # fp32 frozen weights are copied to bf16 by autocast and the copies kept for backward; an fp8 layer
    # (wan2.memory.fp8) keeps none: it dequantizes its weight for the moment of each matmul
    frozen_cast = fb == prec.param and not mem.fp8
    act = activation_memory(
        shape, train, prec, clip, checkpointing, par.fsdp, frozen_cast, mem.activation_offload
    )
    # fp8: one dequantized weight of the largest block Linear alive at a time, in the input's dtype (fp32 in the
    # blocks' residual stream), plus autocast's bf16 copy of it
    fp8_upcast = (
        max(shape.role_weight(r) for r in BLOCK_LINEAR) * (FP32 + (prec.compute if prec.autocast else 0))
        if mem.fp8
        else 0
    )
    lines["activations"] = act["peak"] + fp8_upcast
    lines["overhead"] = overhead_gib * GiB
    adamw_step_tmp = trainable * pb / n  # foreach AdamW's step: sqrt(exp_avg_sq) of every tensor at once
    resident = sum(v for k, v in lines.items() if k != "activations")
    lines["total"] = resident + max(lines["activations"], adamw_step_tmp)
    # block swap: the swapped blocks of every expert that gets samples come in for the forward and again for
    # the backward (recompute and backward of a block share one load); frozen weights never go back
    routed = min(frozen_experts, clip.batch)
    transfer = {"swap_h2d": 2 * routed * swapped * block, "offload_each_way": act["offloaded"]}
    return {"lines": lines, "activation_detail": act, "adamw_step_tmp": adamw_step_tmp, "transfer": transfer}
