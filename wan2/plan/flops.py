"""FLOPs of one optimizer step on one GPU, from the transformer's shapes and the clip."""

from __future__ import annotations

from wan2.plan.inputs import Clip, Trainable, TransformerShape


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
