"""Scoring an ``EvalSet``: run each registered metric, then summaries and per-event means of every
per-video number."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

from wan2.config_check import ConfigError
from wan2.eval.judge import nanmean
from wan2.eval.registry import METRICS, MetricUnavailable, too_small

if TYPE_CHECKING:
    from wan2.eval.sources import EvalSet


def score(ev: EvalSet, names: list[str], cfg, explicit: bool, skipped: dict[str, str]) -> dict:
    """Run each metric; returns summary, per-video arrays, per-event means, info and notes on skipped metrics."""
    summary, per_video, info, higher = {}, {}, {}, {}
    for name in names:
        m = METRICS[name]
        section = (cfg.get("metrics") or {}).get(name) or {}
        try:
            why = too_small(m, len(ev), int(ev.videos.shape[1]))  # videos= mode: known only now
            if why:
                raise MetricUnavailable(why)
            res = m.fn(ev, section, cfg)
        except MetricUnavailable as why:
            small = str(why).startswith("num_")  # asked for, or a default metric: an error
            if explicit or (small and m.weights_key is None):
                raise ConfigError(str(why) if small else f"metrics: {name}: {why}") from None
            skipped[name] = str(why)
            print(f"note: {name} skipped: {why}", file=sys.stderr)
            continue
        pv = {k: [float(x) for x in v] for k, v in (res.get("per_video") or {}).items()}
        per_video |= pv
        summary |= {k: nanmean(v) for k, v in pv.items()} | dict(res.get("summary") or {})
        info[name] = res.get("info") or {}
        higher |= {k: m.higher_is_better.get(k, True) for k in list(pv) + list(res.get("summary") or {})}
    events = sorted({m["event"] for m in ev.metas if m})
    per_event = {}
    for e in events:
        idx = [i for i, m in enumerate(ev.metas) if m and m["event"] == e]
        per_event[e] = {"num_videos": len(idx)} | {
            k: nanmean(np.asarray(v)[idx]) for k, v in per_video.items()
        }
    return {
        "summary": summary,
        "per_video": per_video,
        "per_event": per_event,
        "info": info,
        "higher_is_better": higher,
        "skipped": dict(skipped),
    }
