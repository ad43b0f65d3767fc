"""CLIPSIM with a tiny random CLIP saved locally (no hub); the numbers are not CLIPScores, only checked for shape."""

import json

import numpy as np
import pytest
import torch

from wan2.metrics.clipscore import CLIPScorer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _tiny_tokenizer_files(path):
    """A byte-level BPE vocab of lowercase letters, digits and '#', whole-word and '</w>' forms, a few merges."""
    symbols = list("abcdefghijklmnopqrstuvwxyz0123456789#:")
    tokens = ["<|startoftext|>", "<|endoftext|>"] + symbols + [s + "</w>" for s in symbols]
    merges = ["r o", "ro w</w>", "t h", "th e</w>"]
    tokens += ["ro", "row</w>", "th", "the</w>"]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(tokens)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from wan2.metrics.clipscore import _image_processor_cls

    path = tmp_path_factory.mktemp("tiny_clip")
    vocab_size = _tiny_tokenizer_files(path)
    tok = CLIPTokenizer.from_pretrained(path)  # built from vocab.json + merges.txt, offline
    tok.save_pretrained(path)
    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=40,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    _image_processor_cls()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path
    )
    return path


def test_scores_per_video(clip_dir):
    from wan2.data.rankjump import RankJump, RankJumpConfig

    rj = RankJump(RankJumpConfig(num_frames=5), "test", 3)
    clips = [rj[i] for i in range(3)]
    videos = np.stack([c.frames for c in clips])  # (3, 5, 32, 32, 3) uint8
    scorer = CLIPScorer(clip_dir)
    res = scorer.score(videos, [c.caption for c in clips])
    assert len(res["per_video"]) == 3 and res["num_videos"] == 3
    assert np.all(np.isfinite(res["per_video"])) and all(-100 <= s <= 100 for s in res["per_video"])
    assert res["mean"] == pytest.approx(np.mean(res["per_video"]))
    assert "CLIPSIM" in res["variant"] and res["model"]
    # float (N, 3, F, H, W) in [-1, 1] gives the same numbers as its uint8 form
    as_float = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    res_f = scorer.score(as_float, [c.caption for c in clips])
    np.testing.assert_allclose(res_f["per_video"], res["per_video"], rtol=1e-5, atol=1e-4)


def test_prompt_count_must_match(clip_dir):
    with pytest.raises(ValueError, match="2 prompts for 1 videos"):
        CLIPScorer(clip_dir).score(np.zeros((1, 2, 32, 32, 3), np.uint8), ["a", "b"])


def test_missing_dir_names_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.clipscore.model_dir"):
        CLIPScorer(tmp_path / "nope")
