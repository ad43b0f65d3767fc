"""In-domain metrics from the one judge (``wan2.eval.judge``): trajectory and colour read back by the reader."""

from __future__ import annotations

from wan2.eval import judge
from wan2.eval.registry import MetricUnavailable, register_metric


def _judged(ev) -> list:
    found = ev.verdicts()
    if not any(found):
        raise MetricUnavailable("no video has RankJump metadata or a RankJump caption")
    return found


@register_metric("rank_trajectory", higher_is_better=dict.fromkeys(judge.LOWER_IS_BETTER, False))
def rank_trajectory(ev, section, cfg) -> dict:
    """The reader's trajectory verdict (start, end, monotonic, visible) per video."""
    found = _judged(ev)
    return {
        "per_video": judge.columns(found, judge.TRAJECTORY),
        "info": {
            "kind": "in-domain (wan2.data.reader on RankJump events; not comparable to published numbers)",
            "num_judged": sum(v is not None for v in found),
        },
    }


@register_metric("colour")
def colour(ev, section, cfg) -> dict:
    """Share of videos whose highlighted row reads as the asked colour."""
    found = _judged(ev)
    return {
        "per_video": judge.columns(found, judge.COLOUR),
        "info": {
            "kind": "in-domain colour adherence (wan2.data.reader)",
            "num_judged": sum(v is not None for v in found),
        },
    }
