"""RankJump generator: determinism, documented motion, held-out splits, mix, sizes and options."""

from collections import Counter

import numpy as np
import pytest

import wan2.data.rankjump as rankjump_mod
from wan2.data.rankjump import (
    EVENTS,
    PALETTE,
    RankJump,
    RankJumpConfig,
    combos,
    is_heldout,
    make_clip,
    parse_mix,
    resolve_colour,
)
from wan2.data.reader import judge_meta

EVEN = RankJumpConfig(mix={"rank_up": 1, "rank_down": 1, "hold": 1, "first_entry": 1})


@pytest.fixture
def metas_only(monkeypatch):
    """Skip the pixels: ``render`` returns blank frames so that thousands of samples can be scanned fast."""

    def blank(cfg, event, old, new, colour, rng):
        return np.zeros((cfg.num_frames, 1, 1, 3), np.uint8), np.zeros(cfg.num_frames, np.float32)

    monkeypatch.setattr(rankjump_mod, "render", blank)

    def scan(cfg, split, n):
        ds = RankJump(cfg, split, n)
        return [ds[i].meta for i in range(n)]

    return scan


def _same(a, b) -> bool:
    return np.array_equal(a.frames, b.frames) and a.caption == b.caption and a.meta == b.meta


def test_same_split_and_index_give_the_same_clip_across_objects_and_orders():
    a, b = RankJump(EVEN, "train", 50), RankJump(EVEN, "train", 50)
    later = [a[i] for i in (7, 3, 11)]
    assert all(_same(x, b[i]) for x, i in zip(later, (7, 3, 11)))
    assert _same(a[3], a[3])
    assert later[0].frames.dtype == np.uint8 and later[0].frames.shape == (17, 32, 32, 3)


def test_different_splits_and_indices_differ():
    train, val, test = (RankJump(EVEN, s, 20) for s in ("train", "val", "test"))
    for i in range(5):
        assert not _same(train[i], val[i]) and not _same(train[i], test[i]) and not _same(val[i], test[i])
    seeds = {train[i].meta["seed"] for i in range(5)} | {val[i].meta["seed"] for i in range(5)}
    assert len(seeds) == 10
    assert not _same(train[0], train[1])


@pytest.mark.parametrize("event", EVENTS)
def test_events_move_as_documented(event):
    cfg = RankJumpConfig(rows=6)
    geo = cfg.geometry
    old, new = {"rank_up": (5, 2), "rank_down": (2, 5), "hold": (3, 3), "first_entry": (None, 3)}[event]
    clip = make_clip(cfg, event, old, new, "blue", seed=1)
    y = np.array(clip.meta["centre_y"])  # (F,) highlight centre in pixels; y grows downwards
    assert clip.meta["event"] == event and clip.meta["new_rank"] == new and len(y) == cfg.num_frames
    assert y[-1] == pytest.approx(geo.slot_y(new), abs=1e-2)
    steps = np.diff(y)
    if event == "rank_up":
        assert y[0] == pytest.approx(geo.slot_y(old), abs=1e-2) and np.all(steps <= 1e-3) and steps.min() < 0
    elif event == "rank_down":
        assert y[0] == pytest.approx(geo.slot_y(old), abs=1e-2) and np.all(steps >= -1e-3) and steps.max() > 0
    elif event == "hold":
        assert np.allclose(y, geo.slot_y(new), atol=1e-2)
    else:  # first_entry: starts below the last row, climbs in
        assert clip.meta["old_rank"] is None
        assert y[0] > geo.slot_y(cfg.rows) + 0.5 * geo.pitch and np.all(steps <= 1e-3)
    assert f"{new}" in clip.caption and "blue" in clip.caption


def test_heldout_combos_never_in_train_but_every_pair_and_colour_is(metas_only):
    metas = metas_only(EVEN, "train", 4000)
    seen = Counter((m["event"], m["old_rank"], m["new_rank"], m["colour"]) for m in metas)
    assert not [k for k in seen if is_heldout(*k, EVEN)]
    pairs = {(e, o, n) for e, o, n, _ in seen}
    assert pairs == {(e, o, n) for e in EVENTS for o, n in combos(EVEN.rows, e)}
    assert {c for *_, c in seen} == set(PALETTE)
    for e in EVENTS:  # each colour appears with every event, just not with the held-out pairs
        assert {c for ev, *_, c in seen if ev == e} == set(PALETTE)
    held = metas_only(EVEN, "heldout", 300)
    assert all(is_heldout(m["event"], m["old_rank"], m["new_rank"], m["colour"], EVEN) for m in held)
    assert {m["event"] for m in held} == set(EVENTS)


def test_each_pair_holds_out_exactly_one_colour():
    for e in EVENTS:
        for old, new in combos(EVEN.rows, e):
            assert sum(is_heldout(e, old, new, c, EVEN) for c in PALETTE) == 1


def test_mix_controls_the_events(metas_only):
    no_up = RankJumpConfig(mix={"rank_up": 0, "rank_down": 1, "hold": 1, "first_entry": 1})
    counts = Counter(m["event"] for m in metas_only(no_up, "train", 600))
    assert counts["rank_up"] == 0 and set(counts) == {"rank_down", "hold", "first_entry"}
    default = Counter(m["event"] for m in metas_only(RankJumpConfig(), "train", 2000))
    assert 0 < default["rank_up"] < 0.05 * 2000  # rare by default (2%)
    with pytest.raises(ValueError, match="mix"):
        RankJumpConfig(mix={"jump": 1})


def test_mix_from_the_command_line_is_parsed_or_named():
    import argparse

    assert parse_mix("rank_up=1, hold=0.5,") == {"rank_up": 1.0, "hold": 0.5}
    with pytest.raises(argparse.ArgumentTypeError, match="--mix: 'hold' is not event=weight"):
        parse_mix("rank_up=1,hold")
    with pytest.raises(argparse.ArgumentTypeError, match="--mix: 'lots' is not a number"):
        parse_mix("rank_up=lots")


@pytest.mark.parametrize("frames", [0, 4, 16, 18])
def test_frames_must_be_4k_plus_1(frames):
    with pytest.raises(ValueError, match="num_frames"):
        RankJumpConfig(num_frames=frames)


def test_4k_plus_1_frames_are_accepted():
    for frames in (1, 5, 9, 33):
        assert make_clip(RankJumpConfig(num_frames=frames), "hold", 2, 2, "red").frames.shape[0] == frames


def test_hex_colour_maps_to_nearest_palette_name():
    assert resolve_colour("#4CAF50") == "green"
    assert resolve_colour("#4caf50") == "green" and resolve_colour("RED") == "red"
    clip = make_clip(EVEN, "rank_up", 4, 1, "#4CAF50")
    assert clip.meta["colour"] == "green" and "green" in clip.caption
    for bad in ("#808080", "chartreuse", "#12345"):
        with pytest.raises(ValueError, match="colour"):
            resolve_colour(bad)


def test_480p_renders_with_the_right_shape_and_reads_back():
    cfg = RankJumpConfig(height=480, width=640, num_frames=5)
    clip = make_clip(cfg, "rank_down", 1, 4, "purple", seed=3)
    assert clip.frames.shape == (5, 480, 640, 3) and clip.frames.dtype == np.uint8
    assert clip.meta["height"] == 480 and clip.meta["width"] == 640
    assert judge_meta(clip.frames, clip.meta)["trajectory_ok"]


def test_labels_and_marks_render():
    cfg = RankJumpConfig(height=96, width=96)
    plain = make_clip(cfg, "rank_up", 4, 1, "orange", seed=5)
    fancy = make_clip(
        RankJumpConfig(height=96, width=96, labels=True, marks=True), "rank_up", 4, 1, "orange", seed=5
    )
    assert fancy.frames.shape == plain.frames.shape == (17, 96, 96, 3)
    assert not np.array_equal(fancy.frames, plain.frames)
    mid = cfg.num_frames // 2
    labels_only = make_clip(RankJumpConfig(height=96, width=96, labels=True), "hold", 2, 2, "red", seed=5)
    bare = make_clip(cfg, "hold", 2, 2, "red", seed=5)
    assert not np.array_equal(labels_only.frames[mid], bare.frames[mid])
    result = judge_meta(fancy.frames, fancy.meta)
    assert result["trajectory_ok"] and result["colour_ok"]


def test_invalid_clips_are_refused():
    with pytest.raises(ValueError, match="old_rank"):
        make_clip(EVEN, "rank_up", 1, 3, "red")
    with pytest.raises(ValueError, match="split"):
        RankJump(EVEN, "dev", 3)
    with pytest.raises(IndexError):
        RankJump(EVEN, "train", 3)[3]
