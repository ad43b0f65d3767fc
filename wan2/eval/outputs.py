"""Outputs of an evaluation: the per-side report (scores, protocol, contact sheets, video rows), report.json,
report.html (wan2.eval.report) and the W&B run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wan2.eval.scoring import score

if TYPE_CHECKING:
    from wan2.eval.plan import Plan, Side
    from wan2.eval.sources import EvalSet


def clean(x):
    """JSON-safe: numpy scalars to Python, NaN / inf to None."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _video_rows(ev: EvalSet, scores: dict, out: Path) -> list[dict]:
    rows = []
    for i in range(len(ev)):
        m = ev.metas[i] or {}
        row = {
            "file": os.path.relpath(ev.files[i], out),
            "prompt": ev.prompts[i],
            "seed": ev.seeds[i],
            "event": m.get("event"),
        }
        row |= {k: v[i] for k, v in scores["per_video"].items()}
        rows.append(row)
    return rows


def _counts(scores: dict, num_videos: int) -> dict[str, int]:
    """Per summary key, the number of videos behind it: finite per-video values, else the whole set."""
    n = {}
    for key in scores["summary"]:
        values = scores["per_video"].get(key)
        n[key] = num_videos if values is None else int(np.isfinite(np.asarray(values, dtype=float)).sum())
    return n


def _protocol(ev: EvalSet, p: Plan, side: Side | None, cfg) -> dict:
    proto = {
        "num_videos": len(ev),
        "num_frames": int(ev.videos.shape[1]),
        "resolution": f"{ev.videos.shape[2]}x{ev.videos.shape[3]}",
        "fps": ev.fps,
        "source": p.source,
    }
    if side is not None:
        gen = side.gen(p.gen)
        proto |= {
            "ckpt": side.ckpt,
            "lora": side.lora,
            "lora_scale": side.lora_scale if side.lora else None,
            "num_inference_steps": int(gen["num_inference_steps"]),
            "guidance_scale": float(gen["guidance_scale"]),
            "nfe": int(gen["nfe"]),
            "seed": int(cfg.seed),
            "seeds": "video i uses seed + i",
            "device": cfg.get("device", "cpu"),
        }
    return proto


def side_report(ev: EvalSet, p: Plan, side: Side | None, cfg, out: Path, sub: Path) -> dict:
    from wan2.eval.report import write_contact_sheets

    scores = score(
        ev, p.metrics, cfg, explicit=(cfg.get("metrics") or {}).get("names") is not None, skipped=p.skipped
    )
    passed = scores["per_video"].get("rank_trajectory/accuracy")
    sheets = write_contact_sheets(ev.videos, ev.metas, passed, sub / "contact_sheets")
    return {
        "summary": scores["summary"],
        "per_event": scores["per_event"],
        "protocol": _protocol(ev, p, side, cfg),
        "metrics": scores["info"],
        "skipped": scores["skipped"],
        "higher_is_better": scores["higher_is_better"],
        "n": _counts(scores, len(ev)),
        "contact_sheets": {
            k: {"file": os.path.relpath(f, out), "videos": idx} for k, (f, idx) in sheets.items()
        },
        "videos": _video_rows(ev, scores, out),
        "per_video": scores["per_video"],
    }


def write_report(report: dict, out: Path, cfg) -> None:
    """report.json and report.html into ``out`` (atomic writes), then W&B when ``logger=wandb``."""
    from wan2.eval.report import render_html
    from wan2.export import atomic_write_text

    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.html", render_html(report, out))
    if "wandb" in (cfg.get("logger") or {}):  # logger=wandb (configs/logger/wandb.yaml); logger=none: {}
        log_wandb(report, out, cfg)


def log_wandb(report: dict, out: Path, cfg) -> None:
    """The summary keys and a table of sample videos to W&B (offline unless WANDB_MODE says otherwise)."""
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(
        project=cfg.logger.wandb.get("project", "wan2"),
        name=f"eval-{out.name}",
        dir=str(out),
        job_type="eval",
        config={"mode": report["mode"], "metrics": report["metrics_run"]},
    )
    try:
        summary = {k: v for k, v in report["summary"].items() if v is not None}
        run.log(summary)
        run.summary.update(summary)
        sides = [("", report)] if report["mode"] != "compare" else [("A", report["a"]), ("B", report["b"])]
        limit = int(cfg.get("wandb_videos", 16))
        cols = ["side", "video", "prompt", "seed", "event"]
        keys = sorted({k for _, s in sides for row in s["videos"][:1] for k in row if "/" in k})
        table = wandb.Table(columns=cols + keys)
        for label, s in sides:
            for row in s["videos"][:limit]:
                video = wandb.Video(str(out / row["file"]), format="mp4")
                table.add_data(
                    label, video, row["prompt"], row["seed"], row["event"], *[row.get(k) for k in keys]
                )
        run.log({"samples": table})
    finally:
        run.finish()
