"""Network-free metrics besides the reader's: VBench flicker and the sampling cost."""

from __future__ import annotations

import math

from wan2.eval import judge
from wan2.eval.registry import MetricUnavailable, register_metric


@register_metric("flicker", min_frames=2)
def flicker(ev, section, cfg) -> dict:
    """VBench temporal flickering: (255 - mean |frame_t+1 - frame_t|) / 255; 1 = a still video."""
    return {
        "per_video": {judge.FLICKER: judge.flicker(ev.videos)},
        "info": {"kind": "VBench temporal flickering (higher = steadier; a frozen video scores 1)"},
    }


@register_metric("nfe_time", higher_is_better={"cost/seconds_per_video": False, "cost/nfe": False})
def nfe_time(ev, section, cfg) -> dict:
    """Sampling cost: wall seconds per video (batch time / batch size) and transformer passes, CFG counted."""
    if ev.seconds is None or ev.nfe is None:
        raise MetricUnavailable("no generation timing (videos were not generated here)")
    return {
        "per_video": {"cost/seconds_per_video": ev.seconds},
        "summary": {"cost/nfe": float(ev.nfe)},
        "info": {
            "nfe": "num_inference_steps * 2 with guidance_scale > 1 (cond + uncond), else steps",
            "seconds": "wall time of each batch / its size (first batch includes warm-up)",
            "device": cfg.get("device", "cpu"),
            "batch_size": int(cfg.get("batch_size", 16)),
            "num_batches": math.ceil(len(ev) / max(1, int(cfg.get("batch_size", 16)))),
        },
    }
