"""Where the videos come from: generated from a model (seeded, batched, mp4s beside the report) or read from a
``videos=DIR`` folder; either way an ``EvalSet`` of uint8 videos with what is known about each."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wan2.config_check import ConfigError
from wan2.data.rankjump import RankJumpConfig
from wan2.eval.config import video_rows
from wan2.eval.plan import Side
from wan2.eval.requests import meta_from_prompt


@dataclass
class EvalSet:
    """Videos under evaluation and what is known about each (metadata None where the prompt is not a caption)."""

    videos: np.ndarray  # uint8 (N, F, H, W, 3)
    prompts: list[str]
    metas: list[dict | None]  # RankJump event metadata (event, ranks, colour, board geometry)
    seeds: list[int | None]
    files: list[str]  # mp4 paths
    fps: float
    seconds: list[float] | None = None  # generation wall seconds per video (None: not generated here)
    nfe: int | None = None  # transformer forward passes per video, CFG counted
    real: list | None = (
        None  # real RankJump clips of the same prompts where known (uint8 (F, H, W, 3) or None)
    )
    _verdicts: list | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def verdicts(self) -> list[dict | None]:
        """The reader's verdict per video with metadata (the one judge, ``wan2.eval.judge``), computed once."""
        if self._verdicts is None:
            from wan2.eval.judge import verdicts

            self._verdicts = verdicts(self.videos, self.metas)
        return self._verdicts

    def reference(self) -> tuple[list[int], np.ndarray]:
        """Indices of videos with metadata and real RankJump clips of their prompts, uint8 (M, F, H, W, 3)."""
        if self.real is None:
            self.real = [None] * len(self)
        idx = [i for i, m in enumerate(self.metas) if m]
        for i in idx:
            if self.real[i] is None:
                self.real[i] = render_reference(self.metas[i], self.seeds[i] or 0)
        if not idx:
            return [], np.zeros((0, *self.videos.shape[1:]), np.uint8)
        return idx, np.stack([self.real[i] for i in idx])


def render_reference(meta: dict, seed: int) -> np.ndarray:
    """The real RankJump clip of an event, uint8 (F, H, W, 3), at the metadata's geometry."""
    from wan2.data.rankjump import make_clip

    cfg = RankJumpConfig(
        height=meta["height"],
        width=meta["width"],
        num_frames=meta["num_frames"],
        rows=meta["rows"],
        fps=meta.get("fps", 8),
    )
    return make_clip(cfg, meta["event"], meta["old_rank"], meta["new_rank"], meta["colour"], seed=seed).frames


def generate(side: Side, items: list[dict], gen: dict, out_dir: Path, cfg) -> EvalSet:
    """Seeded batched generation (video i: prompt i with seed i, as that prompt alone gives); mp4s to out_dir."""
    from diffusers.utils import logging as diffusers_logging
    from tqdm import tqdm
    from transformers.utils import logging as transformers_logging

    from wan2.backbones.stack import BackboneError
    from wan2.export import atomic_write_text
    from wan2.inference import NonFiniteVideoError, Wan2T2V, save_video
    from wan2.lora.adapters import LoraFileError

    diffusers_logging.disable_progress_bar()  # loading bars; ours below counts videos
    transformers_logging.disable_progress_bar()
    try:
        model = Wan2T2V.from_pretrained(
            side.ckpt,
            device=cfg.get("device", "cpu"),
            dtype=cfg.get("dtype"),
            lora=side.lora,
            lora_scales=side.lora_scale if side.lora else None,
        )
    except (BackboneError, LoraFileError) as err:
        key = "ckpt" if side.label == "model" else f"compare.{side.label}"
        raise ConfigError(
            f"{key}: {str(err).split(': ', 1)[-1]}" if isinstance(err, BackboneError) else str(err)
        ) from None
    kwargs = {k: gen[k] for k in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale")}
    batch = max(1, int(cfg.get("batch_size", 16)))
    frames, seconds, files, rows = [], [], [], []
    vid_dir = out_dir / "videos"
    with tqdm(total=len(items), unit="video", desc=f"generate {side.label}", file=sys.stderr) as bar:
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            try:
                videos = model.generate(
                    [it["prompt"] for it in chunk],
                    seed=[it["seed"] for it in chunk],
                    fps=gen["fps"],
                    **kwargs,
                )
            except NonFiniteVideoError as err:  # a diverged model / LoRA: no score from black videos
                what = f"{side.ckpt}" + (f" with lora {side.lora}" if side.lora else "")
                raise ConfigError(f"{side.label}: {what} generated non-finite frames ({err})") from None
            for j, (it, v) in enumerate(zip(chunk, videos)):
                path = save_video(v, vid_dir / f"{i + j:05d}.mp4")
                frames.append(v.frames)
                seconds.append(v.seconds)
                files.append(str(path))
                meta = {k: x for k, x in (it["meta"] or {}).items() if k != "centre_y"} or None
                rows.append(
                    {
                        "file": path.name,
                        "prompt": it["prompt"],
                        "seed": it["seed"],
                        "meta": meta,
                        "seconds": round(v.seconds, 4),
                    }
                )
            bar.update(len(chunk))
    atomic_write_text(vid_dir / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    del model
    return EvalSet(
        videos=np.stack(frames),
        prompts=[it["prompt"] for it in items],
        metas=[it["meta"] for it in items],
        seeds=[it["seed"] for it in items],
        files=files,
        fps=float(gen["fps"]),
        seconds=seconds,
        nfe=int(gen["nfe"]),
        real=[it["real"] for it in items],
    )


def load_videos(path: Path) -> EvalSet:
    """A folder of mp4s with captions (captions.txt) or per-file rows (metadata.jsonl / manifest.jsonl)."""
    from wan2.data.video import VideoDecodeError, decode_mp4, probe

    files = sorted(p for p in path.glob("*.mp4") if not p.name.startswith("."))
    info = video_rows(path)  # checked before any model or video was touched (wan2.eval.config)
    captions = (
        (path / "captions.txt").read_text("utf-8").splitlines() if (path / "captions.txt").is_file() else []
    )
    videos = []
    for f in files:
        try:
            videos.append(decode_mp4(f))  # (F, H, W, 3)
        except VideoDecodeError as err:
            raise ConfigError(f"videos: {f}: {err}") from None
    shapes = sorted({v.shape for v in videos})
    if len(shapes) > 1:
        raise ConfigError(
            f"videos: {path} holds videos of different shapes {shapes[:3]}; evaluate one shape at a time"
        )
    F, H, W, _ = shapes[0]
    fps = probe(files[0]).fps or 8.0
    prompts, metas, seeds = [], [], []
    for i, f in enumerate(files):
        row = info.get(f.name, {})
        prompt = (
            row.get("prompt") or row.get("caption") or (captions[i] if len(captions) == len(files) else "")
        )
        meta = row.get("meta")
        if meta:
            meta = {"rows": int(row.get("rows", 5)), **meta, "height": H, "width": W, "num_frames": F}
        elif prompt:
            meta = meta_from_prompt(prompt, H, W, F, rows=int(row.get("rows", 5)), fps=fps)
        prompts.append(prompt)
        metas.append(meta or None)
        seeds.append(row.get("seed"))
    seconds = [row.get("seconds") for row in (info.get(f.name, {}) for f in files)]
    return EvalSet(
        videos=np.stack(videos),
        prompts=prompts,
        metas=metas,
        seeds=seeds,
        files=[str(f) for f in files],
        fps=fps,
        seconds=seconds if all(s is not None for s in seconds) else None,
    )
