"""The one judge of generated RankJump videos, used by training validation, the in-loop QuickEval callback,
the VAE module and evaluate.py: the reader (``wan2.data.reader``) checks each video against its event.

Keys (the one scheme everywhere; a stage adds only a prefix: ``val/``, ``quick_eval/``, evaluate.py none):
``rank_trajectory/{accuracy,start_acc,end_acc,monotonic_acc,row_error}``, ``rank_trajectory/accuracy/<event>``,
``colour/accuracy`` and ``flicker/score``. Pure numpy / torch functions: no Lightning.
"""

from __future__ import annotations

import numpy as np

TRAJECTORY = {  # summary key -> the reader's verdict field
    "rank_trajectory/accuracy": "trajectory_ok",
    "rank_trajectory/start_acc": "start_ok",
    "rank_trajectory/end_acc": "end_ok",
    "rank_trajectory/monotonic_acc": "monotonic_ok",
    "rank_trajectory/row_error": "row_error",
}
COLOUR = {"colour/accuracy": "colour_ok"}
FLICKER = "flicker/score"
LOWER_IS_BETTER = ("rank_trajectory/row_error",)


def verdicts(videos, metas: list[dict | None]) -> list[dict | None]:
    """The reader's verdict per video (None where there is no metadata); videos uint8 (N, F, H, W, 3) or
    float (N, 3, F, H, W) in [-1, 1]."""
    from wan2.data.reader import judge_meta
    from wan2.metrics.temporal import uint8_videos

    frames = uint8_videos(videos)  # (N, F, H, W, 3)
    if len(frames) != len(metas):
        raise ValueError(f"metas: {len(metas)} metadata dicts for {len(frames)} videos")
    return [judge_meta(v, m) if m else None for v, m in zip(frames, metas)]


def columns(found: list[dict | None], keys: dict[str, str]) -> dict[str, list[float]]:
    """Per-video values of ``keys`` (TRAJECTORY or COLOUR) from ``verdicts``; NaN where a video has none."""
    nan = float("nan")
    return {k: [float(v[field]) if v else nan for v in found] for k, field in keys.items()}


def flicker(videos) -> list[float]:
    """VBench temporal flickering per video (1 = a still video); needs at least 2 frames."""
    from wan2.metrics.temporal import temporal_flickering

    return temporal_flickering(videos)["per_video"]


def nanmean(x) -> float:
    """Mean over the finite values; NaN when there are none."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def judge(videos, metas: list[dict | None], per_event: bool = True) -> dict[str, float]:
    """Summary of one batch of videos: reader accuracies, row error, colour, flicker (>= 2 frames), and with
    ``per_event`` the trajectory accuracy per event (keys vary with the batch: not for ``sync_dist`` logging).

    ``row_error`` is NaN when no video shows a highlight at all.
    """
    from wan2.metrics.temporal import uint8_videos

    frames = uint8_videos(videos)  # (N, F, H, W, 3)
    found = verdicts(frames, metas)
    per_video = columns(found, TRAJECTORY) | columns(found, COLOUR)
    out = {k: nanmean(v) for k, v in per_video.items()}
    if frames.shape[1] >= 2:
        out[FLICKER] = nanmean(flicker(frames))
    if per_event:
        events = sorted({m["event"] for m in metas if m})
        for e in events:
            ok = [v["trajectory_ok"] for v, m in zip(found, metas) if m and m["event"] == e]
            out[f"rank_trajectory/accuracy/{e}"] = float(np.mean(ok))
    return out
