"""Outputs of an evaluation: the per-side report (scores, protocol, contact sheets, video rows), report.json,
report.html (wan2.eval.report) and the W&B run."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wan2.eval.plan import vae_fingerprint
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
        **prompts_of(ev),
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
            "vae_sha256": vae_fingerprint(side.ckpt)[:16],
            "train_run": train_run_of(side),
        }
    return proto


def prompts_of(ev: EvalSet) -> dict:
    """How many prompts, how many distinct, and a short hash of the ordered list: two evaluations with the same
    ``prompts_sha256`` ran the same prompt set."""
    joined = "\n".join(ev.prompts).encode()
    return {
        "num_prompts": len(set(ev.prompts)),
        "prompts_sha256": hashlib.sha256(joined).hexdigest()[:16],
    }


def train_run_of(side: Side) -> dict | None:
    """The training run recorded in the evaluated files ({id, name, dir}): the LoRA's ``wan2_lora.json`` when a
    LoRA is applied, else the export's ``wan2.json``; None for files no wan2 training wrote."""
    if side.lora:
        lora = Path(side.lora)
        meta = (lora if lora.is_dir() else lora.parent) / "wan2_lora.json"
        try:
            run = json.loads(meta.read_text()).get("train_run") if meta.is_file() else None
        except (OSError, ValueError, AttributeError):
            run = None
        if run:
            return run
    from wan2.backbones.files import BackboneError, read_wan2_json

    try:
        return read_wan2_json(side.ckpt).train_run
    except BackboneError:
        return None


def wandb_config(report: dict) -> dict:
    """The W&B config of an eval run: the whole protocol of each side (ckpt, LoRA and scale, steps, guidance,
    seed, prompts, VAE hash, the training run), flat (``protocol.ckpt`` or ``A.protocol.ckpt``)."""
    sides = [("", report)] if report["mode"] != "compare" else [("A.", report["a"]), ("B.", report["b"])]
    config = {"mode": report["mode"], "metrics": report["metrics_run"]}
    for prefix, side in sides:
        for key, value in (side.get("protocol") or {}).items():
            if isinstance(value, dict):
                config |= {f"{prefix}protocol.{key}.{k}": v for k, v in value.items()}
            else:
                config[f"{prefix}protocol.{key}"] = value
    return config


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

    # W&B stages media and tables in its data / cache folders (default: under ~): in the eval folder instead,
    # unless the user set them; restored afterwards (an evaluation called from Python leaves os.environ as it was)
    staging = {"WANDB_DATA_DIR": "data", "WANDB_CACHE_DIR": "cache", "WANDB_ARTIFACT_DIR": "artifacts"}
    staging = {var: str(out / "wandb" / sub) for var, sub in staging.items() if var not in os.environ}
    os.environ.update(staging)
    try:
        _log_run(wandb, report, out, cfg)
    finally:
        for var in staging:
            os.environ.pop(var, None)


def _log_run(wandb, report: dict, out: Path, cfg) -> None:
    """One eval run: the protocol as config, the summary, a table of sample videos."""
    from wan2.lightning.loggers import run_name, wandb_offline

    config = wandb_config(report)
    trained = [v for k, v in config.items() if k.endswith("protocol.train_run.group") and v]
    run = wandb.init(
        project=cfg.logger.wandb.get("project", "wan2"),
        name=run_name(f"eval-{out.name}"),
        group=trained[0] if len(set(trained)) == 1 else "eval",  # beside the training run it evaluates
        dir=str(out),
        job_type="eval",
        mode="offline" if wandb_offline() else "online",
        tags=[f"mode={report['mode']}"],
        config=config,
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
