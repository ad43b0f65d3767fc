"""Turn sampled videos into motion scores and files people can look at (shared by objectives)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from wan2.data.datasets import video_to_frames
from wan2.data.reader import judge_meta


def judge_batch(video: torch.Tensor, metas: list[dict]) -> dict[str, float]:
    """Share of videos (B, 3, F, H, W) whose motion / colour the reader finds, overall and per event."""
    verdicts = [judge_meta(video_to_frames(v), m) for v, m in zip(video, metas)]
    out = {
        "traj_acc": float(np.mean([v["trajectory_ok"] for v in verdicts])),
        "colour_acc": float(np.mean([v["colour_ok"] for v in verdicts])),
    }
    per = defaultdict(list)
    for v, m in zip(verdicts, metas):
        per[m["event"]].append(v["trajectory_ok"])
    out |= {f"traj_acc_{e}": float(np.mean(x)) for e, x in per.items()}
    return out


def contact_sheet(video: torch.Tensor, max_frames: int = 9, scale: int = 2) -> np.ndarray:
    """A grid: one row per video, ``max_frames`` evenly spaced frames per row; uint8 (H', W', 3)."""
    rows = []
    for v in video:
        frames = video_to_frames(v)  # (F, H, W, 3)
        idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
        rows.append(np.concatenate([np.pad(frames[i], ((1, 1), (1, 1), (0, 0))) for i in idx], axis=1))
    sheet = np.concatenate(rows, axis=0)
    return sheet.repeat(scale, 0).repeat(scale, 1)


def save_samples(video: torch.Tensor, captions: list[str], out_dir: Path, fps: int = 8) -> None:
    """``out_dir/contact_sheet.png``, ``captions.txt`` and one mp4 per video."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(video)).save(out_dir / "contact_sheet.png")
    (out_dir / "captions.txt").write_text("\n".join(captions) + "\n")
    try:
        from wan2.data.video import write_mp4
    except ImportError:  # video IO not available: the contact sheet still shows the motion
        return
    for i, v in enumerate(video):
        write_mp4(video_to_frames(v), out_dir / f"{i:02d}.mp4", fps=fps)
