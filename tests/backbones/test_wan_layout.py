"""``wan2.backbones.wan_layout``: the one torch-free home of Wan internals (names, presets, layout, routing)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from tests.conftest import ROOT
from wan2.backbones import wan_layout as W


def test_layout_modules_import_no_torch():
    """config_check imports them before any heavy import: they must stay torch-free."""
    code = (
        "import sys, wan2.backbones.wan_layout, wan2.backbones.files, wan2.config_check; "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_one_definition_each():
    """The names callers used to define themselves are now the backbones' objects (imported, not copied)."""
    import wan2.config_check as C
    import wan2.lora.adapters as A
    import wan2.plan.inputs as PI

    assert A.TARGET_PRESETS is W.TARGET_PRESETS and C.LORA_PRESETS is W.LORA_PRESETS
    assert C.WAN_LORA_MODULES is W.WAN_LORA_MODULES and C.WAN_OTHER_MODULES is W.WAN_OTHER_MODULES
    assert PI.BLOCK_LINEAR is W.BLOCK_LINEAR and PI.TEXT_ROLES is W.TEXT_ROLES
    for mod in ("wan2.lightning.distributed", "wan2.config_check", "wan2.lora.adapters", "wan2.sampling"):
        text = Path(importlib.import_module(mod).__file__).read_text()
        for name in (
            "def wan_block_classes",
            "TARGET_PRESETS = {",
            "BLOCK_LINEAR = (",
            "WAN_LORA_MODULES = (",
        ):
            assert name not in text, (mod, name)


def test_timestep_layout_matches_wan_pipeline():
    """Per-token timesteps (TI2V): as many as the patch embedding makes tokens; diffusers' own mask slicing for
    the official (1, 2, 2) patch gives the same count."""
    x = torch.zeros(2, 48, 5, 6, 10)  # (B, C, F', H', W')
    t = torch.tensor([900.0, 900.0])
    assert W.transformer_timestep(t, x) is t  # not expanded: one timestep per sample
    per_token = W.transformer_timestep(t, x, (1, 2, 2), expand=True)  # (B, S)
    assert per_token.shape == (2, x[0, 0][:, ::2, ::2].numel()) == (2, 5 * 3 * 5)
    assert W.token_count((6, 8, 8), (2, 4, 4)) == 3 * 2 * 2


def test_expert_routing_is_wan_pipelines_rule():
    """t >= boundary_ratio * T runs the high-noise expert, below it transformer_2; the training router agrees."""
    from wan2.lightning.experts import high_noise

    high, low = object(), object()
    bb = SimpleNamespace(
        transformer=high,
        transformer_2=low,
        boundary_ratio=0.875,
        scheduler=SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000)),
    )
    assert W.expert_at(bb, torch.tensor(875.0)) is high and W.expert_at(bb, torch.tensor(874.9)) is low
    other = object()
    assert W.expert_at(bb, 999.0, default=other) is other  # a student / EMA copy of the high expert
    assert (
        W.expert_at(SimpleNamespace(transformer=high, transformer_2=None, boundary_ratio=None), 1.0) is high
    )
    sigma = torch.tensor([0.875, 0.8749, 1.0, 0.0])
    assert high_noise(sigma, 0.875).tolist() == [True, False, True, False]


def test_block_classes_are_the_blocks_of_the_stack():
    from wan2.backbones.stack import build_backbone

    bb = build_backbone(
        {
            "transformer": {
                "num_attention_heads": 2,
                "attention_head_dim": 8,
                "ffn_dim": 32,
                "num_layers": 2,
                "in_channels": 4,
                "out_channels": 4,
                "text_dim": 16,
                "freq_dim": 16,
            }
        },
        components=("transformer",),
        device="meta",
    )
    (cls,) = W.wan_block_classes()
    assert sum(isinstance(m, cls) for m in bb.transformer.modules()) == 2
    assert bb.patch_size == W.PATCH_SIZE
