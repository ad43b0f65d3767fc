"""LoRA files: stock diffusers loads them with no missing / unexpected keys and reproduces the repo's sampler;
fuse then unfuse gives the base back; adapters combine with scales; presets sit where they say."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.conftest import ROOT, model_cfg
from wan2.backbones.stack import build_backbone, load_backbone
from wan2.export import export_pipeline
from wan2.lora import add_lora, lora_config, save_lora
from wan2.lora.adapters import TARGET_PRESETS, WEIGHT_NAME, target_regex
from wan2.sampling import sample_videos

PROMPTS = ["the gold row climbs from #5 to #2", "the blue bar rises from #3 to #1"]
GEN = {"num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 3, "guidance_scale": 4.0}
SEED = 7

STOCK_SCRIPT = """
import json, logging, sys
import numpy as np, torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as dlog

export, loras, prompts, gen, seed, text_len, out = json.loads(sys.argv[1])
records = []
class Keep(logging.Handler):
    def emit(self, r): records.append(r.getMessage())
dlog.set_verbosity_warning()
dlog.get_logger("diffusers").addHandler(Keep())
pipe = DiffusionPipeline.from_pretrained(export)
pipe.set_progress_bar_config(disable=True)
base = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
def run(tag):
    frames = pipe(prompts, **gen, generator=torch.Generator("cpu").manual_seed(seed), max_sequence_length=text_len,
                  output_type="np").frames
    np.save(f"{out}/{tag}.npy", np.asarray(frames))
for i, lora in enumerate(loras):
    pipe.load_lora_weights(lora, weight_name="pytorch_lora_weights.safetensors", adapter_name=f"a{i}")
bad = [m for m in records if "missing" in m.lower() or "unexpected" in m.lower()]
pipe.set_adapters(["a0"], [1.0]); run("a0")
pipe.set_adapters(["a0", "a1"], [1.0, 0.5]); run("a0_a1")
pipe.set_adapters(["a0"], [1.0])
pipe.fuse_lora(adapter_names=["a0"], lora_scale=1.0)
run("fused")
pipe.unfuse_lora()
state = pipe.transformer.state_dict()
diff = max((state[k] - base[k]).abs().max().item() for k in base if k in state)
json.dump({"warnings": bad, "unfuse_max_abs_diff": diff}, open(f"{out}/stock.json", "w"))
"""


def _lora_on(backbone, out_dir: Path, targets: str, seed: int, rank: int = 4) -> Path:
    """Add a LoRA to ``backbone.transformer`` with random (non-zero) B weights and save it."""
    cfg = lora_config(rank=rank, targets=targets)
    add_lora(backbone.transformer, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backbone.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return save_lora(backbone.transformer, out_dir, cfg)


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """A random tiny export, two LoRA files, the repo sampler's videos with each, and the stock run's outputs."""
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    bb = build_backbone(model_cfg("wan_tiny")).eval()
    export = export_pipeline(bb, root / "export")
    base_video = sample_videos(bb, PROMPTS, **GEN, seed=SEED)
    repo = {}
    tuned = load_backbone(export).eval()
    lora_a = _lora_on(tuned, root / "lora_a", "motion", seed=1)
    repo["a0"] = sample_videos(tuned, PROMPTS, **GEN, seed=SEED)
    tuned_b = load_backbone(export).eval()
    lora_b = _lora_on(tuned_b, root / "lora_b", "all", seed=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [str(export), [str(lora_a), str(lora_b)], PROMPTS, GEN, SEED, bb.text_len, str(root)]
    proc = subprocess.run(
        [sys.executable, "-c", STOCK_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {k: np.load(root / f"{k}.npy") for k in ("a0", "a0_a1", "fused")}
    return {
        "root": root,
        "repo": repo,
        "base": base_video,
        "stock": out,
        "report": json.loads((root / "stock.json").read_text()),
        "files": (lora_a, lora_b),
    }


def _as_np(video: torch.Tensor) -> np.ndarray:
    """(B, 3, F, H, W) in [-1, 1] -> the pipeline's np output (B, F, H, W, 3) in [0, 1]."""
    return ((video.permute(0, 2, 3, 4, 1).float().numpy() + 1.0) / 2.0).clip(0.0, 1.0)


def test_stock_diffusers_loads_with_no_missing_or_unexpected_keys(stock):
    assert stock["report"]["warnings"] == []
    with safe_open(str(stock["files"][0] / WEIGHT_NAME), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.blocks.") and ".attn1." in k for k in keys), keys[:4]


def test_stock_lora_video_equals_repo_sampler(stock):
    ours = _as_np(stock["repo"]["a0"])
    theirs = stock["stock"]["a0"]
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.abs(ours - _as_np(stock["base"])).max() > 1e-2  # the adapter does change the video


def test_adapters_combine_with_scales(stock):
    single, both = stock["stock"]["a0"], stock["stock"]["a0_a1"]
    assert np.abs(single - both).max() > 1e-3


def test_fuse_matches_unfused_and_unfuse_returns_the_base(stock):
    assert np.abs(stock["stock"]["fused"] - stock["stock"]["a0"]).max() <= 1e-4
    assert stock["report"]["unfuse_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize(
    "preset,must,must_not",
    [
        ("motion", ["blocks.0.attn1.to_q"], ["attn2", "ffn"]),
        ("attention", ["blocks.0.attn1.to_q", "blocks.0.attn2.to_k"], ["ffn"]),
        (
            "all",
            [
                "blocks.0.attn1.to_v",
                "blocks.0.attn2.to_out.0",
                "blocks.0.ffn.net.0.proj",
                "blocks.0.ffn.net.2",
            ],
            [],
        ),
    ],
)
def test_presets_target_what_they_name(preset, must, must_not):
    torch.manual_seed(0)
    bb = build_backbone(model_cfg("wan_tiny"))
    n = add_lora(bb.transformer, lora_config(rank=2, targets=preset))
    names = {
        name.rsplit(".lora_A", 1)[0] for name, _ in bb.transformer.named_parameters() if ".lora_A." in name
    }
    for m in must:
        assert m in names, (preset, m)
    assert not [x for x in names if any(s in x for s in must_not)], preset
    total = sum(p.numel() for name, p in bb.transformer.named_parameters() if "lora_" not in name)
    assert 0 < n < 0.10 * total


def test_bad_targets_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^lora\.targets: '\(' is neither a preset"):
        target_regex("(")
    torch.manual_seed(0)
    bb = build_backbone(model_cfg("wan_tiny"))
    with pytest.raises(ValueError, match="matches no module"):
        add_lora(bb.transformer, lora_config(rank=2, targets=r".*nothing_here"))
    assert set(TARGET_PRESETS) == {"motion", "attention", "all"}


def test_fuse_lora_script_bakes_the_adapter_into_a_plain_export(tmp_path):
    """scripts/fuse_lora.py: the fused export has no adapter layers and samples what base + LoRA samples."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import fuse_lora

    from wan2.inference import Wan2T2V
    from wan2.sampling import sample_latents

    base, lora = ROOT / "pretrained" / "wan_tiny_base", ROOT / "pretrained" / "lora_rankup"
    assert fuse_lora.main(["--base", str(base), "--lora", str(lora), "--out", str(tmp_path / "fused")]) == 0
    fused = load_backbone(tmp_path / "fused")
    assert not any("lora" in n for n, _ in fused.transformer.named_parameters())
    with_lora = Wan2T2V.from_pretrained(base, lora=lora).backbone
    plain = load_backbone(base)
    kw = dict(num_frames=17, height=32, width=32, num_inference_steps=3, guidance_scale=2.5, seed=0)
    prompt = ["the red row climbs from #5 to #2"]
    a, b, c = (sample_latents(bb, prompt, **kw) for bb in (fused, with_lora, plain))
    assert (a - b).abs().max() < 1e-4
    assert (a - c).abs().max() > 1e-2  # the LoRA does change the samples
    assert (
        fuse_lora.main(["--base", str(tmp_path / "nope"), "--lora", str(lora), "--out", str(tmp_path / "x")])
        == 2
    )
