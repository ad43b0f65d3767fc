"""``model.gradient_checkpointing``: the transformer recomputes block activations in backward, and the loss and
every gradient are those of the run without it (float tolerance), on the tiny stack, built or loaded."""

import torch
from omegaconf import OmegaConf

from tests.conftest import model_cfg
from wan2.backbones.stack import build_backbone
from wan2.lightning.flow_module import FlowMatchingModule


def tiny_cfg(**overrides):
    cfg = model_cfg("wan_tiny")
    cfg.transformer.num_layers = 2
    return OmegaConf.merge(cfg, overrides)


def loss_and_grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """One flow-matching loss on a fixed batch (per-sample noise by index) and the gradients of every weight."""
    torch.manual_seed(0)  # the same initial weights with and without
    bb = build_backbone(
        tiny_cfg(gradient_checkpointing=checkpointing),
        components=("tokenizer", "text_encoder", "vae", "transformer"),
    )
    assert bb.transformer.gradient_checkpointing is checkpointing
    module = FlowMatchingModule(bb, caption_dropout=0.5, ema_decay=0.0, train_text_encoder=True)
    calls = []
    for block in bb.transformer.blocks:
        block.register_forward_pre_hook(lambda *_: calls.append(1))  # the recompute stops early: no post hook
    c, f, h, w = bb.latent_shape(17, 32, 32)
    batch = {
        "latents": torch.randn(3, c, f, h, w, generator=torch.Generator().manual_seed(1)),
        "caption": ["the green row climbs from #4 to #1", "red falls to #5", "nothing moves"],
        "index": torch.tensor([5, 0, 17]),
    }
    loss = module.flow_loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads, len(calls)


def test_same_loss_and_gradients_with_and_without():
    loss, grads, calls = loss_and_grads(False)
    loss_ckpt, grads_ckpt, calls_ckpt = loss_and_grads(True)
    assert calls == 2 and calls_ckpt == 4  # 2 blocks; recomputed once each in backward
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=1e-7)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 50
    assert any(n.startswith("text_encoder.") for n in grads)  # the gradient reaches the text encoder too
    for n in grads:
        torch.testing.assert_close(
            grads_ckpt[n], grads[n], rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}"
        )


def test_switch_applies_to_a_loaded_stack(tmp_path):
    """``model.pretrained=PATH model.gradient_checkpointing=true``: the loaded transformer recomputes too."""
    torch.manual_seed(0)
    build_backbone(tiny_cfg()).pipeline().save_pretrained(tmp_path / "export", safe_serialization=True)
    on = build_backbone(
        {"pretrained": str(tmp_path / "export"), "text_len": 32, "gradient_checkpointing": True}
    )
    off = build_backbone({"pretrained": str(tmp_path / "export"), "text_len": 32})
    assert on.transformer.gradient_checkpointing and not off.transformer.gradient_checkpointing
