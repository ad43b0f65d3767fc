"""In-domain RJ-FD / RJ-TV from the shipped RankJump encoder separate real clips from broken ones; load errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wan2.metrics.indomain import (
    CONFIG_FILE,
    CONFIG_KEY,
    WEIGHTS_FILE,
    EncoderConfig,
    EncoderLoadError,
    RankJumpEncoder,
    indomain_fd,
    indomain_metrics,
    load_encoder,
    rankjump_reference,
    save_encoder,
    separation_report,
    text_video_score,
    video_features,
)

SHIPPED = Path(__file__).resolve().parents[2] / "pretrained" / "rankjump_encoder"
needs_shipped = pytest.mark.skipif(
    not (SHIPPED / WEIGHTS_FILE).is_file(),
    reason=f"{SHIPPED} is absent: train it with `python train.py experiment=rankjump_encoder` "
    "and copy <run>/export/encoder there",
)


@pytest.fixture(scope="module")
def shipped():
    return load_encoder(SHIPPED)


@pytest.fixture(scope="module")
def report(shipped):
    return separation_report(shipped, num=64)  # 64 real + 64 real' + re-rendered colours, test split


@needs_shipped
def test_fd_separates_real_from_broken(report):
    fd = report["fd"]  # measured at 64 clips: real' 0.12, shuffled 0.32, frozen 0.53, one colour 0.69
    assert fd["shuffled"] > 2 * fd["real"] + 0.05, fd
    for name in ("frozen", "one_colour"):
        assert fd[name] > 3 * fd["real"] + 0.1, (name, fd)


@needs_shipped
def test_text_video_separates_real_from_broken(report):
    tv = report["text_video"]  # measured: real 98, shuffled 79, reversed 71, frozen 57, wrong colour 51
    for name in ("shuffled", "frozen", "reversed", "wrong_colour", "mismatched_caption"):
        assert tv["real"] > tv[name] + 10, (name, tv)


@needs_shipped
def test_indomain_metrics_for_evaluate(shipped):
    real, _ = rankjump_reference(8, split="test")
    gen, captions = rankjump_reference(8, split="val")
    out = indomain_metrics(SHIPPED, gen, captions, real)
    assert out["indomain/num_gen"] == out["indomain/num_real"] == 8
    assert np.isfinite(out["indomain/fd"]) and out["indomain/fd"] >= -1e-6
    details = out["indomain_details"]
    assert "not FVD" in details["fd"] and "not CLIPScore" in details["text_video"]
    assert len(details["text_video_per_video"]) == 8
    assert out["indomain/text_video"] == pytest.approx(text_video_score(shipped, gen, captions))
    # float (N, 3, F, H, W) in [-1, 1] and uint8 (N, F, H, W, 3) give the same features
    as_float = torch.from_numpy(gen).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    assert np.allclose(video_features(shipped, as_float), video_features(shipped, gen), atol=1e-5)


@pytest.fixture(scope="module")
def random_encoder():
    torch.manual_seed(0)
    return RankJumpEncoder(
        EncoderConfig(channels=4, embed_dim=8, text_dim=16, text_layers=1, text_heads=2)
    ).eval()


def test_save_load_round_trip(random_encoder, tmp_path):
    save_encoder(random_encoder, tmp_path / "enc", info={"note": "random"})
    loaded = load_encoder(tmp_path / "enc")
    videos, captions = rankjump_reference(3)
    assert np.allclose(video_features(loaded, videos), video_features(random_encoder, videos), atol=1e-6)
    assert text_video_score(loaded, videos, captions) == pytest.approx(
        text_video_score(random_encoder, videos, captions), abs=1e-4
    )
    assert json.loads((tmp_path / "enc" / CONFIG_FILE).read_text())["info"] == {"note": "random"}


def _one_line(err: Exception) -> str:
    msg = str(err)
    assert msg and "\n" not in msg, msg
    return msg


def test_load_errors_are_one_line(random_encoder, tmp_path):
    with pytest.raises(EncoderLoadError) as e:
        load_encoder(tmp_path / "missing")
    assert CONFIG_KEY in _one_line(e.value) and "missing" in str(e.value)

    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderLoadError) as e:
        load_encoder(tmp_path / "empty")
    assert "not a RankJump encoder" in _one_line(e.value)

    enc = save_encoder(random_encoder, tmp_path / "enc")
    meta = json.loads((enc / CONFIG_FILE).read_text())

    (enc / CONFIG_FILE).write_text(json.dumps({**meta, "kind": "vae"}))
    with pytest.raises(EncoderLoadError) as e:
        load_encoder(enc)
    assert "kind" in _one_line(e.value)

    (enc / CONFIG_FILE).write_text("{not json")
    with pytest.raises(EncoderLoadError) as e:
        load_encoder(enc)
    assert "not valid JSON" in _one_line(e.value)

    (enc / CONFIG_FILE).write_text(json.dumps({**meta, "config": {**meta["config"], "embed_dim": 16}}))
    with pytest.raises(EncoderLoadError) as e:
        load_encoder(enc)
    assert "weights do not match" in _one_line(e.value)

    (enc / CONFIG_FILE).write_text(json.dumps({**meta, "config": {**meta["config"], "vocab_hash": "0" * 12}}))
    with pytest.raises(EncoderLoadError) as e:
        load_encoder(enc)
    assert "vocab_hash" in _one_line(e.value)


def test_too_few_videos_and_caption_count(random_encoder):
    videos, captions = rankjump_reference(3)
    with pytest.raises(ValueError) as e:
        indomain_fd(videos, videos[:1], random_encoder)
    assert "at least 2" in _one_line(e.value) and "gen_videos" in str(e.value)
    with pytest.raises(ValueError) as e:
        text_video_score(random_encoder, videos, captions[:2])
    assert "one per video" in _one_line(e.value)
