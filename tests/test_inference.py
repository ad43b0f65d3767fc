import copy
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import TINY_SAMPLING, model_cfg
from wan2.backbones.stack import build_backbone
from wan2.data.rankjump import RankJumpConfig, make_clip
from wan2.data.video import decode_mp4, tensor_to_frames
from wan2.inference import GeneratedVideo, Wan2T2V, save_video
from wan2.lora import LoraFileError, add_lora, lora_config, save_lora
from wan2.sampling import sample_videos

PROMPT = "the green row climbs from #3 to #2"
QUICK = {"num_frames": 5, "num_inference_steps": 1}  # cheap settings where the numbers do not matter


@pytest.fixture(scope="session")
def model(tiny_export):
    return Wan2T2V.from_pretrained(tiny_export)


def _random_lora(transformer, out_dir, seed=0):
    """A LoRA on a copy of ``transformer`` with non-zero B weights (PEFT starts B at zero)."""
    net = copy.deepcopy(transformer)
    cfg = lora_config(rank=4, targets="motion")
    add_lora(net, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return save_lora(net, out_dir, cfg)


def test_generate_matches_the_repo_sampler(model):
    video = model.generate(PROMPT, seed=3)  # defaults from wan2.json
    assert isinstance(video, GeneratedVideo)
    assert video.frames.shape == (17, 32, 32, 3) and video.frames.dtype == np.uint8
    assert (video.fps, video.steps, video.seed, video.prompt) == (8.0, 4, 3, PROMPT)
    assert video.seconds > 0 and video.duration == pytest.approx(17 / 8)
    ref = sample_videos(
        model.backbone,
        [PROMPT],
        num_frames=17,
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=5.0,
        seed=3,
    )
    diff = np.abs(video.frames.astype(int) - tensor_to_frames(ref)[0].astype(int))
    assert diff.max() <= 1, diff.max()
    assert video.frames.std() > 0  # not a blank clip


def test_batch_item_equals_the_prompt_alone_with_its_seed(model):
    prompts = [PROMPT, "the red row drops from #1 to #4"]
    videos = model.generate(prompts, seed=5, **QUICK)
    assert isinstance(videos, list) and [v.seed for v in videos] == [5, 6]
    alone = model.generate(prompts[1], seed=6, **QUICK)
    assert np.abs(videos[1].frames.astype(int) - alone.frames.astype(int)).max() <= 1
    assert not np.array_equal(videos[0].frames, videos[1].frames)


def test_fps_and_duration_give_the_nearest_valid_frame_count(model, caplog):
    assert model.backbone.t_stride == 2
    assert [model.valid_num_frames(n) for n in (1, 3, 8, 16, 17, 24.5)] == [1, 3, 9, 17, 17, 25]
    with caplog.at_level(logging.INFO, logger="wan2.inference"):
        video = model.generate(PROMPT, fps=8, duration=1.0, num_inference_steps=1)
    assert video.frames.shape[0] == 9 and video.fps == 8.0
    assert "rounded to 9" in caplog.text
    with pytest.raises(ValueError, match="^num_frames: 16 "):
        model.generate(PROMPT, num_frames=16)
    with pytest.raises(ValueError, match="^duration:"):
        model.generate(PROMPT, num_frames=17, duration=2.0)
    with pytest.raises(ValueError, match="^height/width:"):
        model.generate(PROMPT, height=30)


def test_exact_frame_count_with_a_temporal_stride_of_one():
    """The stock pipeline turns n into n + 1 when the VAE keeps every frame; the API still gives n."""
    cfg = model_cfg("wan_tiny")
    cfg.vae.temperal_downsample = [False, False]
    cfg.vae.scale_factor_temporal = 1
    torch.manual_seed(0)
    bb = build_backbone(cfg).eval()
    bb.extra = dict(TINY_SAMPLING)
    model = Wan2T2V(bb)
    video = model.generate(PROMPT, num_frames=4, num_inference_steps=1, guidance_scale=1.0)
    assert video.frames.shape == (4, 32, 32, 3)


def test_profiles(model):
    assert model.profile("standard") == {
        "num_frames": 17,
        "height": 32,
        "width": 32,
        "num_inference_steps": 4,
        "guidance_scale": 5.0,
    }
    assert model.profile("fast") == {
        "num_frames": 9,
        "height": 32,
        "width": 32,
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
    }
    big = copy.copy(model)
    big.defaults = {
        "num_frames": 81,
        "height": 480,
        "width": 832,
        "fps": 16,
        "num_inference_steps": 50,
        "guidance_scale": 5.0,
    }
    assert big.profile("fast") == {
        "num_frames": 41,
        "height": 320,
        "width": 552,
        "num_inference_steps": 25,
        "guidance_scale": 5.0,
    }
    with pytest.raises(ValueError, match="^profile:"):
        model.profile("turbo")


def test_lora_scale_zero_is_the_base_and_one_is_not(model, tiny_export, tmp_path):
    lora_dir = _random_lora(model.backbone.transformer, tmp_path / "lora")
    base = model.generate(PROMPT, seed=1, **QUICK)
    tuned = Wan2T2V.from_pretrained(
        tiny_export, lora=lora_dir / "pytorch_lora_weights.safetensors", lora_scales=0.0
    )
    assert tuned.lora_names == ["lora_0"]
    assert np.array_equal(tuned.generate(PROMPT, seed=1, **QUICK).frames, base.frames)
    tuned.set_lora_scales(1.0)
    assert not np.array_equal(tuned.generate(PROMPT, seed=1, **QUICK).frames, base.frames)
    with pytest.raises(ValueError, match="^lora_scales:"):
        tuned.set_lora_scales([1.0, 0.5])


def test_lora_for_another_base_or_not_a_lora_is_refused_in_one_line(model, tmp_path):
    cfg = model_cfg("wan_tiny")
    cfg.transformer.num_attention_heads = 2  # inner dim 64 instead of 128
    other = build_backbone(cfg, components=("transformer",)).transformer
    bad = _random_lora(other, tmp_path / "other")
    with pytest.raises(LoraFileError, match="different base") as err:
        model.load_loras([bad])
    assert "\n" not in str(err.value)
    junk = tmp_path / "junk.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(junk))
    with pytest.raises(LoraFileError, match="not a LoRA") as err:
        model.load_loras([junk])
    assert "\n" not in str(err.value)
    assert model.lora_names == []


def test_save_video_keeps_the_colour_range(tmp_path):
    clip = make_clip(RankJumpConfig(), "rank_up", 4, 1, "blue", seed=0)
    video = GeneratedVideo(frames=clip.frames, fps=8, prompt=clip.caption, seed=0, seconds=0.0, steps=0)
    mp4 = save_video(video, tmp_path / "clip.mp4")
    back = decode_mp4(mp4)
    assert back.shape == clip.frames.shape
    assert np.abs(back.astype(int) - clip.frames.astype(int)).mean() < 3.0
    gif = save_video(video, tmp_path / "clip.gif")
    from PIL import Image

    with Image.open(gif) as im:
        assert im.format == "GIF"
        total_ms = 0
        for i in range(im.n_frames):  # PIL merges identical frames into one longer frame
            im.seek(i)
            total_ms += im.info["duration"]
    assert abs(total_ms - 17 * 125) <= 17 * 10  # GIF delays are whole centiseconds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif", "clip.mp4"]  # no temp files left
    with pytest.raises(ValueError, match="^frames:"):
        save_video(GeneratedVideo(clip.frames / 255.0, 8, "", 0, 0.0, 0), tmp_path / "float.mp4")


def test_import_wan2_stays_light_and_inference_needs_no_lightning():
    code = (
        "import sys, wan2\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules\n"
        "from wan2 import Wan2T2V, assign_variant\n"
        "import wan2.inference as inf\n"
        "assert Wan2T2V is inf.Wan2T2V and assign_variant is inf.assign_variant\n"
        "assert not {'lightning', 'pytorch_lightning'} & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
