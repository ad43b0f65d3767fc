import io

import numpy as np
import pytest
import torch
from PIL import Image

from wan2.data.rankjump import RankJump, RankJumpConfig
from wan2.data.reader import judge_meta
from wan2.data.video import (
    VideoDecodeError,
    decode_mp4,
    encode_mp4,
    frames_to_tensor,
    probe,
    save_gif,
    tensor_to_frames,
    write_mp4,
)

ALL_EVENTS = {"rank_up": 1, "rank_down": 1, "hold": 1, "first_entry": 1}


def _noise(f=5, h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (f, h, w, 3), dtype=np.uint8)


def test_mp4_round_trip_keeps_the_readers_judgement():
    cfg = RankJumpConfig(mix=ALL_EVENTS)
    ds = RankJump(cfg, "train", 20)
    traj_ok = colour_ok = 0
    events = set()
    for i in range(len(ds)):
        clip = ds[i]
        events.add(clip.meta["event"])
        frames = decode_mp4(encode_mp4(clip.frames, cfg.fps))
        assert frames.shape == clip.frames.shape and frames.dtype == np.uint8
        assert np.abs(frames.astype(int) - clip.frames).mean() < 3.0
        judged = judge_meta(frames, clip.meta)
        traj_ok += judged["trajectory_ok"]
        colour_ok += judged["colour_ok"]
    assert events == set(ALL_EVENTS)
    assert traj_ok >= 19, traj_ok
    assert colour_ok >= 19, colour_ok


def test_write_to_path_and_probe(tmp_path):
    frames = _noise(9, 32, 48)
    path = tmp_path / "clip.mp4"
    write_mp4(frames, path, fps=12)
    info = probe(path)
    assert (info.frames, info.height, info.width) == (9, 32, 48)
    assert info.fps == pytest.approx(12)
    assert info.duration == pytest.approx(9 / 12, abs=0.1)
    assert decode_mp4(path).shape == (9, 32, 48, 3)
    assert decode_mp4(path.read_bytes()).shape == (9, 32, 48, 3)


def test_odd_sizes():
    frames = _noise(5, 33, 31)
    assert decode_mp4(encode_mp4(frames, 8)).shape == (5, 33, 31, 3)  # yuv444p takes odd sizes
    padded = decode_mp4(encode_mp4(frames, 8, pix_fmt="yuv420p"))  # padded to even
    assert padded.shape == (5, 34, 32, 3)


@pytest.mark.parametrize(
    "data",
    [b"", b"not a video at all", b"\x00\x00\x00\x20ftypisom" + bytes(100), "truncated"],
    ids=["empty", "text", "header_only", "truncated"],
)
def test_undecodable_input_raises_one_line_error(data):
    if data == "truncated":
        data = encode_mp4(_noise(), 8)[:300]
    with pytest.raises(VideoDecodeError) as info:
        decode_mp4(data)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value) and str(info.value)


def test_missing_file_raises(tmp_path):
    with pytest.raises(VideoDecodeError):
        probe(tmp_path / "nope.mp4")


def test_tensor_conversion_round_trip():
    frames = _noise(5, 16, 24)
    x = frames_to_tensor(frames)
    assert x.shape == (3, 5, 16, 24) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x[:, 2, 3, 4].tolist() == pytest.approx((frames[2, 3, 4] / 127.5 - 1).tolist())
    np.testing.assert_array_equal(tensor_to_frames(x), frames)
    batch = torch.stack([x, x])  # (B, C, F, H, W)
    assert tensor_to_frames(batch).shape == (2, 5, 16, 24, 3)
    assert tensor_to_frames(torch.full((3, 1, 2, 2), 5.0)).max() == 255  # clipped


def test_save_gif(tmp_path):
    frames = _noise(4, 16, 16)
    path = tmp_path / "a.gif"
    save_gif(frames, path, fps=8)
    with Image.open(path) as im:
        assert im.n_frames == 4 and im.size == (16, 16)


def test_bad_frames_argument():
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((5, 8, 8, 3), dtype=np.float32), 8)
    with pytest.raises(ValueError, match="fps"):
        encode_mp4(_noise(), 0)
    assert io.BytesIO(encode_mp4(_noise(), 8)).getvalue()[4:8] == b"ftyp"
