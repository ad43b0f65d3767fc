"""The reader/judge: perfect on clean clips (raw and after mp4), and it catches wrong motion and colour."""

import numpy as np
import pytest

from wan2.data.rankjump import EVENTS, PALETTE, RankJump, RankJumpConfig, make_clip
from wan2.data.reader import judge, judge_meta, read_clip
from wan2.data.video import decode_mp4, encode_mp4, frames_to_tensor

EVEN = RankJumpConfig(mix={"rank_up": 1, "rank_down": 1, "hold": 1, "first_entry": 1})
MOVING = ("rank_up", "rank_down", "first_entry")


@pytest.fixture(scope="module")
def clips():
    ds = RankJump(EVEN, "test", 120)
    out = [ds[i] for i in range(len(ds))]
    assert {c.meta["event"] for c in out} == set(EVENTS)
    return out


def _rates(results) -> tuple[float, float]:
    return (
        float(np.mean([r["trajectory_ok"] for r in results])),
        float(np.mean([r["colour_ok"] for r in results])),
    )


def test_clean_clips_score_100_percent(clips):
    results = [judge_meta(c.frames, c.meta) for c in clips]
    assert _rates(results) == (1.0, 1.0)
    assert max(r["row_error"] for r in results) < 0.2  # rows, averaged over frames


def test_tensor_input_reads_the_same(clips):
    c = clips[0]
    assert judge_meta(frames_to_tensor(c.frames), c.meta) == judge_meta(c.frames, c.meta)


def test_clean_clips_score_100_percent_after_mp4_round_trip(clips):
    results = []
    for c in clips[:100]:
        frames = decode_mp4(encode_mp4(c.frames, c.meta["fps"]))  # (F, H, W, 3) uint8
        assert frames.shape == c.frames.shape
        results.append(judge_meta(frames, c.meta))
    assert _rates(results) == (1.0, 1.0)


def test_shuffled_frames_of_moving_events_fail(clips):
    rng = np.random.default_rng(0)
    moving = [c for c in clips if c.meta["event"] in MOVING]
    assert len(moving) >= 60
    results = [judge_meta(c.frames[rng.permutation(len(c.frames))], c.meta) for c in moving]
    assert _rates(results)[0] <= 0.05
    assert _rates(results)[1] == 1.0  # shuffling keeps the colour


def test_reversed_moving_clips_fail(clips):
    updown = [c for c in clips if c.meta["event"] in ("rank_up", "rank_down")]
    assert not any(judge_meta(c.frames[::-1], c.meta)["trajectory_ok"] for c in updown)


def test_wrong_colour_is_caught(clips):
    names = list(PALETTE)
    for c in clips[:40]:
        m = c.meta
        other = names[(names.index(m["colour"]) + 3) % len(names)]  # a hue far from the asked one
        wrong = make_clip(EVEN, m["event"], m["old_rank"], m["new_rank"], other, seed=m["seed"])
        result = judge_meta(wrong.frames, m)  # judged against the asked colour
        assert not result["colour_ok"] and result["colour_read"] == other
        assert result["trajectory_ok"]  # the motion itself is still right


@pytest.mark.parametrize("colour", list(PALETTE))
def test_every_palette_colour_is_read_as_itself(colour):
    clip = make_clip(EVEN, "rank_down", 1, 3, colour, seed=2)
    assert read_clip(clip.frames, EVEN.geometry).colour == colour


def test_gray_highlight_fails(clips):
    for c in clips[:20]:
        gray = c.frames.mean(axis=-1, keepdims=True).round().astype(np.uint8).repeat(3, axis=-1)
        result = judge_meta(gray, c.meta)
        assert not result["trajectory_ok"] and not result["colour_ok"] and result["colour_read"] is None
        assert not read_clip(gray, EVEN.geometry).visible.any()


def test_works_at_64x64_with_8_rows():
    cfg = RankJumpConfig(height=64, width=64, rows=8, mix=dict(EVEN.mix))
    ds = RankJump(cfg, "val", 40)
    results = [judge_meta(ds[i].frames, ds[i].meta) for i in range(len(ds))]
    assert _rates(results) == (1.0, 1.0)
    far = make_clip(cfg, "rank_up", 8, 1, "gold", seed=4)
    assert judge(far.frames, "rank_up", 8, 1, "gold", cfg.geometry)["trajectory_ok"]
    assert not judge(far.frames, "rank_up", 8, 2, "gold", cfg.geometry)["trajectory_ok"]  # wrong end rank
    assert not judge(far.frames, "rank_down", 8, 1, "gold", cfg.geometry)["trajectory_ok"]


def test_size_mismatch_is_refused(clips):
    with pytest.raises(ValueError, match="geometry"):
        read_clip(clips[0].frames, RankJumpConfig(height=64, width=64).geometry)
