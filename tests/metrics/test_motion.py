"""In-domain RankJump metrics separate real clips from shuffled, frozen and wrong-colour ones by a wide margin."""

import numpy as np
import pytest

from wan2.data.rankjump import PALETTE, RankJump, RankJumpConfig, make_clip
from wan2.metrics.motion import colour_adherence, in_domain_metrics, rank_trajectory
from wan2.metrics.temporal import temporal_flickering, uint8_videos

CFG = RankJumpConfig(mix={"rank_up": 1, "rank_down": 1, "hold": 1, "first_entry": 1})
MOVING = ("rank_up", "rank_down", "first_entry")  # hold has no direction: shuffled / frozen holds still pass


@pytest.fixture(scope="module")
def real():
    rj = RankJump(CFG, "test", 32)
    clips = [rj[i] for i in range(32)]
    return np.stack([c.frames for c in clips]), [c.meta for c in clips]  # (32, 17, 32, 32, 3) uint8


def test_real_clips_read_back(real):
    videos, metas = real
    assert {m["event"] for m in metas} == set(CFG.mix)
    res = in_domain_metrics(videos, metas)
    traj, colour = res["rank_trajectory"], res["colour_adherence"]
    assert traj["metric"] == "in_domain_rank_trajectory" and colour["metric"] == "in_domain_colour_adherence"
    assert traj["accuracy"] >= 0.95 and traj["start_accuracy"] >= 0.95 and traj["end_accuracy"] >= 0.95
    assert traj["mean_row_error"] < 0.2
    assert set(traj["per_event_accuracy"]) == set(CFG.mix) and min(traj["per_event_accuracy"].values()) >= 0.9
    assert colour["accuracy"] >= 0.95


def test_shuffled_frames_fail(real):
    videos, metas = real
    rng = np.random.default_rng(0)
    shuffled = np.stack([v[rng.permutation(len(v))] for v in videos])
    res = rank_trajectory(shuffled, metas)
    assert res["accuracy"] <= 0.5 and res["mean_row_error"] > 0.4
    assert max(res["per_event_accuracy"][e] for e in MOVING) <= 0.2


def test_frozen_clips_fail(real):
    videos, metas = real
    frozen = np.repeat(videos[:, :1], videos.shape[1], axis=1)  # first frame held for the whole clip
    res = rank_trajectory(frozen, metas)
    assert res["accuracy"] <= 0.5 and res["end_accuracy"] <= 0.5
    assert max(res["per_event_accuracy"][e] for e in MOVING) <= 0.2


def test_wrong_colour_fails(real):
    _, metas = real
    names = list(PALETTE)
    wrong = np.stack(
        [
            make_clip(
                CFG,
                m["event"],
                m["old_rank"],
                m["new_rank"],
                names[(names.index(m["colour"]) + 2) % len(names)],
                seed=m["seed"],
            ).frames
            for m in metas
        ]
    )
    res = colour_adherence(wrong, metas)
    assert res["accuracy"] <= 0.1


def test_float_tensor_input_matches_uint8(real):
    import torch

    videos, metas = real
    as_float = torch.from_numpy(videos[:4]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (4, 3, F, H, W)
    assert np.array_equal(uint8_videos(as_float), videos[:4])
    assert (
        rank_trajectory(as_float, metas[:4])["accuracy"] == rank_trajectory(videos[:4], metas[:4])["accuracy"]
    )


def test_flicker_higher_for_real_than_noisy(real):
    videos, _ = real
    rng = np.random.default_rng(1)
    noisy = np.clip(videos + rng.normal(0, 20, videos.shape), 0, 255).astype(
        np.uint8
    )  # fresh noise per frame
    r, n = temporal_flickering(videos), temporal_flickering(noisy)
    assert len(r["per_video"]) == 32 and 0 <= n["mean"] <= r["mean"] <= 1
    assert r["mean"] > n["mean"] + 0.05
    still = np.repeat(videos[:, :1], 3, axis=1)
    assert temporal_flickering(still)["mean"] == 1.0
