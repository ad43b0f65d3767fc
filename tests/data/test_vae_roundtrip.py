"""The trained tiny VAE keeps what the reader needs: motion and colour survive encode -> decode.

Uses the committed ``pretrained/vae_tiny`` (export/vae of ``python train.py experiment=vae_tiny``).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from wan2.data.rankjump import EVENTS, RankJump, RankJumpConfig
from wan2.data.reader import judge_meta
from wan2.data.video import frames_to_tensor, tensor_to_frames

VAE_DIR = Path(__file__).resolve().parents[2] / "pretrained" / "vae_tiny"
EVEN = RankJumpConfig(mix={"rank_up": 1, "rank_down": 1, "hold": 1, "first_entry": 1})  # 32x32, 17 frames


@pytest.fixture(scope="module")
def vae():
    if not VAE_DIR.exists():
        pytest.skip(f"no trained VAE at {VAE_DIR} yet (export/vae of `python train.py experiment=vae_tiny`)")
    from wan2.backbones.stack import load_vae

    return load_vae(VAE_DIR)


@torch.no_grad()
def test_vae_round_trip_keeps_trajectory_and_colour(vae):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than two on a CPU shared with other jobs
    try:
        ds = RankJump(EVEN, "heldout", 48)
        clips = [ds[i] for i in range(len(ds))]
        assert {c.meta["event"] for c in clips} == set(EVENTS)
        verdicts = []
        for i in range(0, len(clips), 8):
            batch = clips[i : i + 8]
            video = torch.stack([frames_to_tensor(c.frames) for c in batch])  # (B, 3, F, H, W) in [-1, 1]
            z = vae.encode(video).latent_dist.mode()  # (B, C, F', H', W')
            recon = vae.decode(z, return_dict=False)[0]  # (B, 3, F, H, W)
            assert recon.shape == video.shape
            frames = tensor_to_frames(recon)  # (B, F, H, W, 3) uint8
            verdicts += [judge_meta(f, c.meta) for f, c in zip(frames, batch)]
    finally:
        torch.set_num_threads(threads)
    traj = float(np.mean([v["trajectory_ok"] for v in verdicts]))
    colour = float(np.mean([v["colour_ok"] for v in verdicts]))
    failed = [(c.meta["event"], c.meta["colour"]) for c, v in zip(clips, verdicts) if not v["trajectory_ok"]]
    assert traj >= 0.95, f"trajectory_ok {traj:.1%} < 95%; failed: {failed}"
    assert colour >= 0.95, f"colour_ok {colour:.1%} < 95%"
