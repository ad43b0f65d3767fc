"""Any rank: the board window of an event (``wan2.data.window``), windowed RankJump clips and the reader
judging a clip against the window it was given."""

import hashlib
import json
from dataclasses import asdict

import numpy as np
import pytest

from wan2.data.rankjump import EVENTS, RankJump, RankJumpConfig, make_clip, split_combos, window_of
from wan2.data.reader import judge, judge_meta
from wan2.data.window import Window, ranks_for_slots, window_for, windowed_slots

CFG = RankJumpConfig()


@pytest.mark.parametrize(
    "event, old, new, window",
    [
        ("rank_up", 4, 2, Window(1, 5, 4, 2)),  # today's board
        ("rank_up", 7, 3, Window(3, 5, 5, 1)),  # fits: the worse rank on the bottom row
        ("rank_up", 128, 97, Window(97, 5, 6, 1)),  # longer than the window: enters from below
        ("rank_up", 7, 1, Window(1, 5, 6, 1)),
        ("rank_down", 3, 40, Window(36, 5, 0, 5)),  # enters from above, ends on the bottom row
        ("rank_down", 5, 8, Window(4, 5, 2, 5)),
        ("hold", 12, 12, Window(8, 5, 5, 5)),
        ("first_entry", None, 40, Window(36, 5, None, 5)),
    ],
)
def test_window_rule(event, old, new, window):
    w = window_for(event, old, new, 5)
    assert w == window
    assert w.windowed == (max(new, old or 0) > 5)


def test_every_windowed_slot_pattern_round_trips_through_real_ranks():
    rng = np.random.default_rng(0)
    for event in EVENTS:
        for old_slot, new_slot in windowed_slots(5, event):
            for max_rank in (10, 1000, 1_000_000):
                for _ in range(30):
                    old, new = ranks_for_slots(event, old_slot, new_slot, 5, rng, max_rank)
                    assert 1 <= new <= max_rank and (old is None or 1 <= old <= max_rank)
                    w = window_for(event, old, new, 5)
                    assert (w.old_slot, w.new_slot) == (old_slot, new_slot) and w.windowed


def test_windowed_clips_render_as_their_slots_and_the_reader_judges_them():
    far = make_clip(CFG, "rank_up", 7, 3, "blue", seed=3, template=0)
    near = make_clip(CFG, "rank_up", 5, 1, "blue", seed=3, template=0)
    assert np.array_equal(far.frames, near.frames)  # the same on-screen motion: slots 5 -> 1
    assert far.meta["window_top"] == 3 and "window_top" not in near.meta  # today's metadata unchanged
    assert far.caption.startswith("the blue row climbs from #7 to #3, on the board #5 to #1")
    assert judge_meta(far.frames, far.meta)["trajectory_ok"]
    geo = CFG.geometry
    # judged against the window given: 7 -> 3 is right on ranks 3..7, wrong on 2..6 (slots 6 -> 2)
    assert judge(far.frames, "rank_up", 7, 3, "blue", geo, window=3)["trajectory_ok"]
    assert not judge(far.frames, "rank_up", 7, 3, "blue", geo, window=2)["trajectory_ok"]
    assert window_of({**far.meta, "window_top": 2}).old_slot == 6
    for event, old, new in [
        ("rank_up", 128, 97),
        ("rank_down", 3, 40),
        ("first_entry", None, 40),
        ("hold", 12, 12),
    ]:
        clip = make_clip(CFG, event, old, new, "red", seed=1)
        assert judge_meta(clip.frames, clip.meta)["trajectory_ok"], (event, old, new)
    # a clip that enters from the edge is not a clip that starts on the board
    down = make_clip(CFG, "rank_down", 3, 40, "red", seed=1)
    assert not judge(down.frames, "rank_down", 36, 40, "red", geo)["trajectory_ok"]  # slots 1 -> 5


def test_window_mix_datasets_are_judged_right_and_held_out_by_slots():
    cfg = RankJumpConfig(window_mix=0.5)
    train, held = RankJump(cfg, "train", 24), RankJump(cfg, "heldout", 24)
    clips = [train[i] for i in range(24)] + [held[i] for i in range(24)]
    assert 10 < sum("window_top" in c.meta for c in clips) < 38
    assert all(judge_meta(c.frames, c.meta)["trajectory_ok"] for c in clips)
    for event in EVENTS:  # the same slot motion and colour never in both splits
        a = set(split_combos(cfg, event, "train", windowed=True))
        b = set(split_combos(cfg, event, "heldout", windowed=True))
        assert a and b and not a & b
    # window_mix 0 draws nothing new: the clips of today's datasets are unchanged
    assert RankJump(RankJumpConfig(), "train", 5)[4].caption == RankJump(CFG, "train", 5)[4].caption


def test_bad_window_settings_and_ranks_are_refused():
    with pytest.raises(ValueError, match="^window_mix"):
        RankJumpConfig(window_mix=1.5)
    with pytest.raises(ValueError, match="^max_rank"):
        RankJumpConfig(max_rank=2_000_000)
    with pytest.raises(ValueError, match="^new_rank: 0 is below 1"):
        make_clip(CFG, "first_entry", None, 0, "red")
    with pytest.raises(ValueError, match="^old_rank: 1000001 is above"):
        make_clip(CFG, "rank_up", 1_000_001, 4, "red")


def test_latent_cache_key_is_unchanged_without_windows():
    """Caches built before windows existed stay valid: window_mix 0 leaves the new fields out of the key."""
    from wan2.lightning.data import LatentDataModule

    dm = LatentDataModule(num_train=8, cache_dir="/nonexistent")
    old = {k: v for k, v in asdict(dm.rj_cfg).items() if k not in ("window_mix", "max_rank")}
    key = hashlib.sha256(json.dumps({"rj": old, "n": 8}, sort_keys=True).encode()).hexdigest()[:12]

    class NoVae:  # the key's data part only
        vae = None

    import wan2.data.cache as cache_mod

    fp, cache_mod.module_fingerprint = cache_mod.module_fingerprint, lambda m: "X"
    try:
        dm.bind_backbone(NoVae())
        assert dm.cache_path().name == f"rankjump-train-{key}-vaeX"
        windowed = LatentDataModule(num_train=8, cache_dir="/nonexistent", rankjump={"window_mix": 0.3})
        windowed.bind_backbone(NoVae())
        assert windowed.cache_path() != dm.cache_path()
    finally:
        cache_mod.module_fingerprint = fp
