"""TI2V (the app's board as frame 0): the first-frame objective, the repo sampler against stock diffusers
``WanImageToVideoPipeline(expand_timesteps=True)``, ``Wan2T2V.generate(image=...)``, and the mode on a tiny
stand-in in the layout of Wan2.2-TI2V-5B-Diffusers (``model=wan22_ti2v_5b model.pretrained=STANDIN``)."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
from PIL import Image

from tests.conftest import TINY_SAMPLING, compose_cfg, model_cfg
from wan2.backbones.stack import build_backbone, load_backbone
from wan2.compat import i2v_prompt_clean_without_ftfy
from wan2.data.rankjump import RankJumpConfig, make_clip
from wan2.diffusion.first_frame import first_frame_loss, paste_first_frame, token_timesteps
from wan2.export import export_pipeline
from wan2.sampling import encode_first_frame, sample_videos

pytestmark = pytest.mark.usefixtures("one_torch_thread")
i2v_prompt_clean_without_ftfy()  # diffusers 0.42's I2V pipeline needs ftfy for prompts otherwise (wan2.compat)

PROMPT = "the green row climbs from #4 to #2"
GEN = {"num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 3, "guidance_scale": 2.5}


def board(size: int = 32) -> Image.Image:
    """Frame 0 of a RankJump clip: the board an app would send."""
    frames = make_clip(RankJumpConfig(height=size, width=size), "rank_up", 4, 2, "green", seed=1).frames
    return Image.fromarray(frames[0])


# ----------------------------------------------------------------------------------- tensor functions
def test_token_timesteps_zero_on_first_frame_tokens_of_conditioned_samples_only():
    t = torch.tensor([700.0, 300.0])
    ts = token_timesteps(t, (3, 4, 6), (1, 2, 2), cond=torch.tensor([True, False]))  # 2 x 3 tokens per frame
    assert ts.shape == (2, 3 * 2 * 3)
    assert (ts[0, :6] == 0).all() and (ts[0, 6:] == 700).all()
    assert (ts[1] == 300).all()
    # the pipeline's own mask slicing gives the same layout
    mask = torch.ones(1, 1, 3, 4, 6)
    mask[:, :, 0] = 0
    assert torch.equal(ts[0], (mask[0][0][:, ::2, ::2] * 700.0).flatten())


def test_first_frame_loss_leaves_out_frame_zero_of_conditioned_samples():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    cond = torch.tensor([True, False])
    base = first_frame_loss(pred, target, cond)
    moved = pred.clone()
    moved[:, :, 0] += 5.0  # a wrong frame 0 costs only the unconditioned sample
    after = first_frame_loss(moved, target, cond)
    assert torch.allclose(after[0], base[0]) and after[1] > base[1] + 1
    assert torch.allclose(base[0], ((pred[0, :, 1:] - target[0, :, 1:]) ** 2).mean())
    assert torch.allclose(first_frame_loss(pred, target, None), ((pred - target) ** 2).mean(dim=(1, 2, 3, 4)))


def test_paste_first_frame_only_where_asked():
    z, first = torch.zeros(2, 3, 4, 2, 2), torch.ones(1, 3, 1, 2, 2)
    out = paste_first_frame(z, first, torch.tensor([False, True]))
    assert out[1, :, 0].eq(1).all() and out[0].eq(0).all() and out[1, :, 1:].eq(0).all() and z.eq(0).all()


def test_objective_conditions_a_share_and_ignores_frame_zero(monkeypatch):
    """first_frame_p=1: the transformer sees the clean frame 0 with t=0 on its tokens, and the loss does not
    depend on what it predicts there; the module switches the backbone to per-token timesteps (the export)."""
    from wan2.lightning.flow_module import FlowMatchingModule

    torch.manual_seed(0)
    bb = build_backbone(model_cfg("wan_tiny"))
    module = FlowMatchingModule(bb, first_frame_p=1.0, caption_dropout=0.0, ema_decay=0.0)
    assert bb.expand_timesteps is True
    x0 = torch.randn(2, 16, 5, 8, 8)
    batch = {"latents": x0, "caption": [PROMPT, PROMPT]}
    seen = {}
    real = bb.transformer.forward

    def spy(hidden_states, timestep, **kw):
        seen["x"], seen["t"] = hidden_states.clone(), timestep.clone()
        out = real(hidden_states=hidden_states, timestep=timestep, **kw)
        out[0][:, :, 0] = 1e3 * torch.randn_like(out[0][:, :, 0])  # garbage on frame 0: must not count
        return out

    monkeypatch.setattr(bb.transformer, "forward", spy)
    loss = module.flow_loss(batch)
    assert torch.isfinite(loss) and loss < 100
    assert torch.equal(seen["x"][:, :, 0], x0[:, :, 0])  # clean first latent frame
    assert (
        seen["t"].shape == (2, 5 * 4 * 4) and (seen["t"][:, :16] == 0).all() and (seen["t"][:, 16:] > 0).all()
    )
    assert (
        FlowMatchingModule(build_backbone(model_cfg("wan_tiny")), ema_decay=0.0).first_frame_draw({}, 2)
        is None
    )


def test_first_frame_p_is_checked_in_one_line():
    from wan2.config_check import ConfigError, check_train_config

    with pytest.raises(ConfigError, match=r"^objective.first_frame_p: .*"):
        check_train_config(compose_cfg(["objective.first_frame_p=1.5"]))


# ------------------------------------------------------------------ export -> stock WanImageToVideoPipeline
@pytest.fixture(scope="module")
def ti2v_export(tmp_path_factory) -> Path:
    cfg = model_cfg("wan_tiny")
    cfg.expand_timesteps = True
    torch.manual_seed(0)
    bb = build_backbone(cfg).eval()
    return export_pipeline(bb, tmp_path_factory.mktemp("ti2v") / "export", sampling=TINY_SAMPLING)


def repo_video(path: Path, image: Image.Image, **gen) -> np.ndarray:
    """The repo sampler continuing ``image``: (F, H, W, 3) floats in [0, 1]."""
    bb = load_backbone(path).eval()
    pipe = WanImageToVideoPipeline.from_pretrained(path)  # only for the same image preprocessing
    img = pipe.video_processor.preprocess(image, height=gen["height"], width=gen["width"])  # (1, 3, H, W)
    video = sample_videos(bb, [PROMPT], **gen, seed=0, first_latents=encode_first_frame(bb, img))
    return ((video[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1).numpy()


def stock_video(export, **gen) -> np.ndarray:
    """The board's video from stock diffusers ``WanImageToVideoPipeline`` (the export's WanPipeline index, as the
    5B's): (F, H, W, 3) in [0, 1]."""
    pipe = WanImageToVideoPipeline.from_pretrained(export)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.expand_timesteps and pipe.image_encoder is None
    return pipe(
        image=board(),
        prompt=PROMPT,
        **gen,
        generator=torch.Generator().manual_seed(0),
        max_sequence_length=32,
        output_type="np",
    ).frames[0]


def test_stock_image_to_video_pipeline_gives_the_repo_samplers_video(ti2v_export):
    index = json.loads((ti2v_export / "model_index.json").read_text())
    assert index["expand_timesteps"] is True
    out = stock_video(ti2v_export, **GEN)  # (F, H, W, 3) in [0, 1]
    ours = repo_video(ti2v_export, board(), **GEN)
    assert out.shape == ours.shape == (9, 32, 32, 3)
    np.testing.assert_allclose(out, ours, atol=2e-4)
    # frame 0 is the VAE's reconstruction of the board; without the board the video differs
    t2v = sample_videos(load_backbone(ti2v_export), [PROMPT], **GEN, seed=0)
    assert np.abs(((t2v[0].permute(1, 2, 3, 0) + 1) / 2).numpy() - ours).max() > 0.05


# ------------------------------------------------------------------------------- Wan2T2V.generate(image=)
def test_generate_takes_pil_array_and_path_and_notes_a_resize(ti2v_export, tmp_path, caplog):
    from wan2.inference import Wan2T2V

    model = Wan2T2V.from_pretrained(ti2v_export)
    kw = {"num_frames": 9, "num_inference_steps": 2, "guidance_scale": 1.0, "seed": 4}
    a = model.generate(PROMPT, image=board(), **kw).frames
    b = model.generate(PROMPT, image=np.asarray(board()), **kw).frames
    board().save(tmp_path / "board.png")
    c = model.generate(PROMPT, image=str(tmp_path / "board.png"), **kw).frames
    assert np.array_equal(a, b) and np.array_equal(a, c)
    with caplog.at_level(logging.INFO, logger="wan2.inference"):
        big = model.generate(PROMPT, image=board(64), **kw)  # resized to the video's 32x32, with a note
    assert big.frames.shape == (9, 32, 32, 3)
    assert any("image: 64x64 resized to 32x32" in r.getMessage() for r in caplog.records)
    t2v = model.generate(PROMPT, **kw).frames
    assert not np.array_equal(a, t2v)
    per = model.generate([PROMPT, PROMPT], image=[board(), None], **kw)  # one image (or None) per prompt
    assert np.array_equal(per[0].frames, a) and np.array_equal(
        per[1].frames, model.generate(PROMPT, **{**kw, "seed": 5}).frames
    )


def test_generate_refuses_a_non_image_and_a_t2v_model(ti2v_export, tiny_export, tmp_path):
    from wan2.inference import Wan2T2V

    (tmp_path / "board.png").write_text("not a png")
    model = Wan2T2V.from_pretrained(ti2v_export)
    with pytest.raises(ValueError, match=r"^image: '.*board.png' is not an image") as err:
        model.generate(PROMPT, image=tmp_path / "board.png", num_inference_steps=1)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^image: .*cannot be read"):
        model.generate(PROMPT, image=tmp_path / "missing.png", num_inference_steps=1)
    with pytest.raises(ValueError, match=r"^image: an array must be \(H, W, 3\)"):
        model.generate(PROMPT, image=np.zeros((4, 4)), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"^image: this model does not continue a first frame"):
        Wan2T2V.from_pretrained(tiny_export).generate(PROMPT, image=board(), num_inference_steps=1)


# ------------------------------------------------------------------- the Wan2.2-TI2V-5B layout (stand-in)
TINY_5B = {  # the 5B's structure (residual patchified Wan2.2 VAE, stride 4x16x16, per-token timesteps), tiny
    "vae": {
        "base_dim": 8,
        "decoder_base_dim": 8,
        "z_dim": 8,
        "latents_mean": [0.0] * 8,
        "latents_std": [1.0] * 8,
        "num_res_blocks": 1,
    },
    "transformer": {
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": 8,
        "out_channels": 8,
        "text_dim": 64,
        "ffn_dim": 64,
        "num_layers": 1,
    },
}


@pytest.fixture(scope="module")
def standin_5b(tmp_path_factory) -> Path:
    """A random tiny stack written like Wan-AI/Wan2.2-TI2V-5B-Diffusers: WanPipeline index with
    expand_timesteps, UniPC flow scheduler, T5TokenizerFast, no wan2.json."""
    cfg = model_cfg("wan22_ti2v_5b")
    tiny = model_cfg("wan_tiny")
    cfg.text_encoder, cfg.text_len, cfg.gradient_checkpointing = tiny.text_encoder, 32, False
    for part, values in TINY_5B.items():
        for k, v in values.items():
            cfg[part][k] = v
    torch.manual_seed(2)
    bb = build_backbone(cfg).eval()
    bb.scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=5.0
    )
    out = export_pipeline(bb, tmp_path_factory.mktemp("ti2v5b") / "Wan2.2-TI2V-5B-Diffusers")
    index = json.loads((out / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "T5TokenizerFast"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    (out / "wan2.json").unlink()
    return out


def test_wan22_ti2v_5b_config_trains_and_samples_the_first_frame_mode(standin_5b, tmp_path):
    """``model=wan22_ti2v_5b model.pretrained=STANDIN objective.first_frame_p=1``: two training steps, then the
    export continues a board in stock WanImageToVideoPipeline exactly as the repo sampler does."""
    from wan2.config_check import check_train_config
    from wan2.tasks import train

    cfg = compose_cfg(
        [
            "model=wan22_ti2v_5b",
            f"model.pretrained={standin_5b}",
            "model.text_len=32",
            "objective.first_frame_p=1.0",
            "objective.sample.num_inference_steps=2",
            "data.num_train=4",
            "data.batch_size=2",
            "data.rankjump.num_frames=9",
            "trainer.max_steps=2",
            "trainer.limit_val_batches=0",
            "callbacks.progress=null",
            "logger=csv",
            "threads=1",
            f"paths.outputs_dir={tmp_path}/outputs",
            f"paths.output_dir={tmp_path}/run",
        ]
    )
    assert cfg.model.expand_timesteps is True
    check_train_config(cfg)
    train(cfg)
    export = tmp_path / "run" / "export"
    assert json.loads((export / "model_index.json").read_text())["expand_timesteps"] is True
    gen = {**GEN, "num_frames": 9, "num_inference_steps": 2}
    np.testing.assert_allclose(stock_video(export, **gen), repo_video(export, board(), **gen), atol=2e-4)
    shutil.rmtree(tmp_path / "outputs", ignore_errors=True)


# ------------------------------------------------------------------------- scripts/generate.py "board"
def test_generate_script_reads_an_events_board_and_skips_a_bad_one(tmp_path):
    from types import SimpleNamespace

    from tests.conftest import load_script

    generate = load_script("scripts/generate.py", "generate_ti2v")
    board().save(tmp_path / "board.png")
    (tmp_path / "notes.txt").write_text("not an image")
    lines = [
        {"event": "rank_up", "old_rank": 7, "new_rank": 3, "board": str(tmp_path / "board.png")},
        {"event": "rank_up", "old_rank": 7, "new_rank": 3, "board": str(tmp_path / "notes.txt")},
        {"event": "rank_up", "old_rank": 7, "new_rank": 3, "board": 5},
        {"event": "hold", "rank": 12},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    args = SimpleNamespace(
        prompt=None,
        ab=None,
        model=str(tmp_path),
        events=str(tmp_path / "events.jsonl"),
        tone=None,
        style=None,
        seed=0,
        rollout=0.1,
    )
    items, errors = generate.read_items(args)
    assert [(it["line"], it["board"]) for it in items] == [(1, str(tmp_path / "board.png")), (4, None)]
    assert items[0]["prompt"] == "the green row climbs from #7 to #3, on the board #5 to #1, ranks 3 to 7"
    assert errors[0].startswith("line 2: skipped: board: ") and "is not an image" in errors[0]
    assert errors[1].startswith("line 3: skipped: board: expected the path of an image file")
    bad = SimpleNamespace(prompt=["x"], image=str(tmp_path / "notes.txt"), seed=0)
    with pytest.raises(generate.InputError, match=r"^--image: .*is not an image"):
        generate.read_items(bad)
