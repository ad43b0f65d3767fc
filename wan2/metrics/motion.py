"""In-domain RankJump metrics: read the highlighted row back from each video and compare with the asked event.

These are the project's own metrics for the synthetic leaderboard domain (``wan2.data.reader``), meaningful
offline; they are not FVD or CLIPScore and are not comparable to any published number.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from wan2.data.reader import judge_meta
from wan2.metrics.temporal import uint8_videos


def judge_videos(videos, metas: list[dict]) -> list[dict]:
    """``judge_meta`` verdict per video; videos uint8 (N, F, H, W, 3) or float (N, 3, F, H, W) in [-1, 1]."""
    frames = uint8_videos(videos)
    if len(frames) != len(metas):
        raise ValueError(f"metas: {len(metas)} metadata dicts for {len(frames)} videos")
    return [judge_meta(v, m) for v, m in zip(frames, metas)]


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def _trajectory(verdicts: list[dict], metas: list[dict]) -> dict:
    per_event = defaultdict(list)
    for v, m in zip(verdicts, metas):
        per_event[m["event"]].append(v["trajectory_ok"])
    errors = [v["row_error"] for v in verdicts if np.isfinite(v["row_error"])]
    return {
        "metric": "in_domain_rank_trajectory",
        "num_videos": len(verdicts),
        "accuracy": _mean([v["trajectory_ok"] for v in verdicts]),
        "start_accuracy": _mean([v["start_ok"] for v in verdicts]),
        "end_accuracy": _mean([v["end_ok"] for v in verdicts]),
        "monotonic_accuracy": _mean([v["monotonic_ok"] for v in verdicts]),
        "mean_row_error": _mean(errors),  # rows, over videos where the highlight was seen at all
        "per_event_accuracy": {e: _mean(x) for e, x in sorted(per_event.items())},
    }


def _colour(verdicts: list[dict], metas: list[dict]) -> dict:
    per_colour = defaultdict(list)
    for v, m in zip(verdicts, metas):
        per_colour[m["colour"]].append(v["colour_ok"])
    return {
        "metric": "in_domain_colour_adherence",
        "num_videos": len(verdicts),
        "accuracy": _mean([v["colour_ok"] for v in verdicts]),
        "per_colour_accuracy": {c: _mean(x) for c, x in sorted(per_colour.items())},
    }


def rank_trajectory(videos, metas: list[dict]) -> dict:
    """In-domain trajectory accuracy (start, end, monotonic, visible all right), its parts, row error, per event."""
    return _trajectory(judge_videos(videos, metas), metas)


def colour_adherence(videos, metas: list[dict]) -> dict:
    """In-domain share of videos whose highlighted row reads as the asked colour, overall and per colour."""
    return _colour(judge_videos(videos, metas), metas)


def in_domain_metrics(videos, metas: list[dict]) -> dict:
    """Both in-domain metrics from a single read of each video."""
    verdicts = judge_videos(videos, metas)
    return {"rank_trajectory": _trajectory(verdicts, metas), "colour_adherence": _colour(verdicts, metas)}
