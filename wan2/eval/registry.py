"""The metric registry: each module under ``wan2/eval/metrics/`` adds its metrics with ``@register_metric``.

A metric is ``fn(evalset, section, cfg) -> {"per_video": {key: list}, "summary": {key: x}, "info": {}}``;
``section`` is ``cfg.metrics.<name>``. A plug-in module registers its own metric by importing this one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_METRICS = ("rank_trajectory", "colour", "flicker", "nfe_time")


class MetricUnavailable(Exception):
    """A metric that cannot run on this set (no metadata, no timing): skipped in auto mode, an error if asked."""


@dataclass
class Metric:
    """A registered metric; summary numbers default to the NaN-skipping mean of each per-video list."""

    name: str
    fn: Callable
    weights_key: str | None = None  # config key of the weights path (None: needs no pretrained network)
    weights_kind: str = "file"  # "file" or "dir"
    optional_weights: bool = False  # a default path that may be absent: left out of auto mode with a note
    min_videos: int = 1
    min_frames: int = 1
    higher_is_better: dict[str, bool] = field(default_factory=dict)  # per summary key; unlisted: True
    hint: str = ""  # how to get the weights, appended to "not found" messages


METRICS: dict[str, Metric] = {}


def register_metric(name: str, **kwargs) -> Callable:
    """Decorator: add ``fn`` to ``METRICS`` under ``name``."""

    def deco(fn):
        METRICS[name] = Metric(name, fn, **kwargs)
        return fn

    return deco


def load_metrics() -> dict[str, Metric]:
    """Import every module of ``wan2.eval.metrics`` (each registers itself); returns the registry."""
    from wan2.eval import metrics

    for mod in pkgutil.iter_modules(metrics.__path__):
        importlib.import_module(f"{metrics.__name__}.{mod.name}")
    return METRICS


def too_small(m: Metric, num_videos: int, num_frames: int) -> str | None:
    """The one-line reason a metric cannot run on this many videos / frames, or None."""
    if num_videos < m.min_videos:
        return f"num_videos: {num_videos} video(s); {m.name} needs at least {m.min_videos}"
    if num_frames < m.min_frames:
        return f"num_frames: {num_frames}; {m.name} needs at least {m.min_frames} frames"
    return None
