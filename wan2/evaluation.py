"""Evaluate a wan2 export (optionally with a LoRA) or a folder of videos, and A/B-compare two models.

``evaluate.py`` (Hydra, configs/eval.yaml) calls ``main(cfg)``: ``plan`` does the cheap checks (one-line
``ConfigError`` naming the key, before any model is loaded), ``run`` generates seeded videos in batches and
scores them with the metrics of the ``METRICS`` registry, then writes report.json / report.html (and W&B).
A metric takes an ``EvalSet`` and its config section and returns per-video arrays (video i of A and video i
of B are a pair in A/B) and/or summary numbers. No Lightning imports; torch only inside functions.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wan2.config_check import ConfigError
from wan2.data.rankjump import EVENTS, PALETTE, SPLIT_SEED_BASE, TEMPLATES, RankJumpConfig, combos

DEFAULT_METRICS = ("rank_trajectory", "colour", "flicker", "nfe_time")
DEFAULT_SPLIT_VIDEOS = 96


class MetricUnavailable(Exception):
    """A metric that cannot run on this set (no metadata, no timing): skipped in auto mode, an error if asked."""


# ----------------------------------------------------------------------------- the metric registry


@dataclass
class Metric:
    """A registered metric: ``fn(evalset, section, cfg) -> {"per_video": {key: list}, "summary": {key: x}, "info": {}}``.

    ``section`` is ``cfg.metrics.<name>``; summary numbers default to the NaN-skipping mean of each per-video list.
    """

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
    """Decorator: add ``fn`` to ``METRICS`` under ``name`` (a plug-in module may register its own)."""

    def deco(fn):
        METRICS[name] = Metric(name, fn, **kwargs)
        return fn

    return deco


# ----------------------------------------------------------------------------- what is evaluated


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
        """The reader's verdict per video with metadata (``wan2.data.reader.judge_meta``), computed once."""
        if self._verdicts is None:
            from wan2.data.reader import judge_meta

            self._verdicts = [judge_meta(v, m) if m else None for v, m in zip(self.videos, self.metas)]
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


def _caption_patterns() -> list[tuple[str, re.Pattern]]:
    out = []
    for event, templates in TEMPLATES.items():
        for t in templates:
            rx = re.escape(t)
            for name, group in (
                ("colour", r"(?P<colour>[a-z]+)"),
                ("old", r"(?P<old>\d+)"),
                ("new", r"(?P<new>\d+)"),
            ):
                rx = rx.replace(re.escape("{" + name + "}"), group)
            out.append((event, re.compile(rx + r"(?=$|,)")))
    return out


_PATTERNS = _caption_patterns()


def meta_from_prompt(
    prompt: str, height: int, width: int, num_frames: int, rows: int = 5, fps: float = 8
) -> dict | None:
    """RankJump metadata of a prompt that starts with a RankJump caption (as event prompts do), else None."""
    text = prompt.strip().lower()
    for event, rx in _PATTERNS:
        m = rx.match(text)
        if not m:
            continue
        colour, new = m.group("colour"), int(m.group("new"))
        old = int(m.group("old")) if "old" in m.groupdict() else (new if event == "hold" else None)
        if colour not in PALETTE or (old, new) not in combos(rows, event):
            return None
        return {
            "event": event,
            "old_rank": old,
            "new_rank": new,
            "colour": colour,
            "rows": rows,
            "height": height,
            "width": width,
            "num_frames": num_frames,
            "fps": fps,
        }
    return None


# ----------------------------------------------------------------------------- the plan (cheap checks)


@dataclass
class Side:
    """One model to evaluate: an export directory and optionally a LoRA file."""

    label: str
    ckpt: str
    lora: str | None = None
    lora_scale: float = 1.0
    # this side's own steps / guidance / nfe (its wan2.json unless the config sets them): a 4-step student is
    # compared at 4 steps against a 25-step CFG teacher, on the same prompts, seeds, frames and size
    sampling: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.ckpt + (f" + {self.lora}" if self.lora else "")

    def gen(self, gen: dict) -> dict:
        """The plan's generation settings with this side's sampling settings."""
        return {**gen, **self.sampling}


@dataclass
class Plan:
    mode: str  # "generate", "videos" or "compare"
    sides: list[Side]
    items: list[dict]  # {prompt, seed, meta, real}; empty in videos mode (read in run)
    metrics: list[str]
    skipped: dict[str, str]  # metric -> why it is not run
    gen: dict  # num_frames, height, width, fps, num_inference_steps, guidance_scale, nfe
    source: str  # the prompt set or video folder
    notes: list[str] = field(
        default_factory=list
    )  # things the reader of an A/B should know (vae_mismatch_note)


def _read_wan2_json(ckpt: str) -> dict:
    f = Path(ckpt) / "wan2.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _check_export(key: str, path) -> str:
    if path in (None, ""):
        raise ConfigError(f"{key}: no export directory given")
    p = Path(str(path))
    if not p.is_dir():
        raise ConfigError(
            f"{key}: {str(path)!r} is not a directory (train a model or point at a diffusers export)"
        )
    if not (p / "model_index.json").is_file():
        raise ConfigError(f"{key}: {str(path)!r} has no model_index.json (not a diffusers export)")
    return str(p)


def _check_lora(key: str, path) -> str | None:
    if path in (None, ""):
        return None
    p = Path(str(path))
    f = p / "pytorch_lora_weights.safetensors" if p.is_dir() else p
    if not f.is_file():
        raise ConfigError(f"{key}: {str(path)!r} does not exist")
    if f.suffix != ".safetensors":
        raise ConfigError(f"{key}: {str(path)!r} is not a .safetensors file")
    return str(f)


def _sides(cfg) -> list[Side]:
    """[A] from ckpt (+ lora), or [A, B] from compare=[A, B] where each is EXPORT or EXPORT+LORA_FILE."""
    scale = float(cfg.get("lora_scale", 1.0))
    compare = cfg.get("compare")
    if compare in (None, "", []):
        return [
            Side("model", _check_export("ckpt", cfg.ckpt), _check_lora("lora", cfg.get("lora_path")), scale)
        ]
    entries = [str(x) for x in compare] if not isinstance(compare, str) else [compare]
    if len(entries) != 2:
        raise ConfigError(f"compare: expected two models [A, B], got {len(entries)}")
    if cfg.get("lora_path"):
        raise ConfigError("lora: with compare=, give each side's LoRA as EXPORT+LORA_FILE")
    sides = []
    for label, entry in zip("AB", entries):
        ckpt, lora = entry, None
        if "+" in entry and not Path(entry).is_dir():
            ckpt, lora = entry.split("+", 1)
        sides.append(
            Side(label, _check_export(f"compare.{label}", ckpt), _check_lora(f"compare.{label}", lora), scale)
        )
    return sides


def _gen_params(cfg, ckpt: str) -> dict:
    """Frames, size, steps and guidance: config value, else the export's wan2.json, else pipeline defaults."""
    from wan2.inference import PIPELINE_DEFAULTS  # stock WanPipeline values, for a folder without wan2.json

    meta = {**PIPELINE_DEFAULTS, "rows": 5, **_read_wan2_json(ckpt)}
    gen = {
        k: meta[k]
        for k in ("num_frames", "height", "width", "fps", "num_inference_steps", "guidance_scale", "rows")
    }
    for k in ("num_frames", "num_inference_steps", "guidance_scale"):
        if cfg.get(k) is not None:
            gen[k] = cfg[k]
    steps, guidance = int(gen["num_inference_steps"]), float(gen["guidance_scale"])
    if steps < 1:
        raise ConfigError(f"num_inference_steps: {steps} is below 1")
    gen["nfe"] = steps * 2 if guidance > 1.0 else steps  # WanPipeline runs cond + uncond per step under CFG
    return gen


def _prompt_items(cfg, gen: dict) -> tuple[list[dict], str]:
    """Work items {prompt, seed, meta, real}: a RankJump split, a .txt of prompts or a .jsonl of events."""
    spec, seed, n = str(cfg.prompts), int(cfg.seed), cfg.get("num_videos")
    if n is not None and int(n) < 1:
        raise ConfigError(f"num_videos: {n} is below 1")
    geo = {k: int(gen[k]) for k in ("height", "width", "num_frames", "rows")} | {"fps": gen["fps"]}
    if spec in SPLIT_SEED_BASE:
        from wan2.data.rankjump import RankJump

        events = list(cfg.get("events") or EVENTS)
        bad = [e for e in events if e not in EVENTS]
        if bad:
            raise ConfigError(f"events: {bad} not in {list(EVENTS)}")
        n = int(n or DEFAULT_SPLIT_VIDEOS)
        try:
            rj = RankJump(RankJumpConfig(**geo, mix=dict.fromkeys(events, 1.0)), spec, n)
        except ValueError as err:
            raise ConfigError(f"prompts: RankJump {spec} prompts at this geometry: {err}") from None
        clips = [rj[i] for i in range(n)]
        return [
            {"prompt": c.caption, "seed": seed + i, "meta": c.meta, "real": c.frames}
            for i, c in enumerate(clips)
        ], f"RankJump {spec} split ({', '.join(events)})"
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"prompts: {spec!r} is neither a RankJump split {list(SPLIT_SEED_BASE)} nor a file")
    lines = [(i, ln) for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]
    if not lines:
        raise ConfigError(f"prompts: {spec!r} has no prompts")
    base = []
    if path.suffix == ".jsonl":
        from wan2.prompts import event_to_prompt, parse_event

        for i, text in lines:
            try:
                event = json.loads(text)
                prompt = event_to_prompt(
                    event, tone=event.get("tone"), style=event.get("style"), rows=geo["rows"]
                )
                kind, old, new, colour = parse_event(event, rows=geo["rows"])
            except (ValueError, AttributeError) as err:
                raise ConfigError(f"prompts: {spec} line {i}: {str(err).splitlines()[0]}") from None
            base.append((prompt, {"event": kind, "old_rank": old, "new_rank": new, "colour": colour, **geo}))
    else:
        base = [(ln.strip(), meta_from_prompt(ln, **geo)) for _, ln in lines]
    n = int(n or len(base))
    items = [
        {"prompt": base[i % len(base)][0], "seed": seed + i, "meta": base[i % len(base)][1], "real": None}
        for i in range(n)
    ]  # more videos than prompts: the prompts again, with new seeds
    return items, str(path)


def _weights_path(cfg, m: Metric):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, m.weights_key) if m.weights_key else None


def _weights_present(path, kind: str) -> bool:
    return path not in (None, "") and (
        Path(str(path)).is_dir() if kind == "dir" else Path(str(path)).is_file()
    )


def _metric_names(cfg) -> tuple[list[str], dict[str, str], bool]:
    """Metrics to run, notes on the ones left out, and whether the list was given (explicit) or automatic."""
    names = (cfg.get("metrics") or {}).get("names")
    skipped = {}
    if names is None:
        chosen = list(DEFAULT_METRICS)
        for m in METRICS.values():
            if m.weights_key is None or m.name in chosen:
                continue
            path = _weights_path(cfg, m)
            if _weights_present(path, m.weights_kind):
                chosen.append(m.name)
            elif path in (None, ""):
                skipped[m.name] = f"{m.weights_key} is not set"
            elif m.optional_weights:
                skipped[m.name] = f"{m.weights_key}: {str(path)!r} not found ({m.hint})"
            else:
                raise ConfigError(f"{m.weights_key}: {str(path)!r} not found ({m.name} needs {m.hint})")
        return chosen, skipped, False
    names = [names] if isinstance(names, str) else [str(x) for x in names]
    unknown = [x for x in names if x not in METRICS]
    if unknown or not names:
        raise ConfigError(f"metrics: {unknown or names} not in {sorted(METRICS)}")
    for x in names:
        m = METRICS[x]
        if m.weights_key and not _weights_present(_weights_path(cfg, m), m.weights_kind):
            what = _weights_path(cfg, m)
            raise ConfigError(
                f"{m.weights_key}: {str(what)!r} not found ({x} needs {m.hint})"
                if what not in (None, "")
                else f"{m.weights_key}: not set ({x} needs {m.hint})"
            )
    return list(dict.fromkeys(names)), skipped, True


def _too_small(m: Metric, num_videos: int, num_frames: int) -> str | None:
    """The one-line reason a metric cannot run on this many videos / frames, or None."""
    if num_videos < m.min_videos:
        return f"num_videos: {num_videos} video(s); {m.name} needs at least {m.min_videos}"
    if num_frames < m.min_frames:
        return f"num_frames: {num_frames}; {m.name} needs at least {m.min_frames} frames"
    return None


def plan(cfg) -> Plan:
    """All cheap checks, in the order a user fixes them; raises a one-line ``ConfigError``."""
    metrics, skipped, explicit = _metric_names(cfg)
    if cfg.get("videos"):
        if cfg.get("compare"):
            raise ConfigError("videos: give videos= or compare=, not both")
        d = Path(str(cfg.videos))
        if not d.is_dir():
            raise ConfigError(f"videos: {str(cfg.videos)!r} is not a directory")
        if not any(p.suffix == ".mp4" and not p.name.startswith(".") for p in d.iterdir()):
            raise ConfigError(f"videos: {str(cfg.videos)!r} has no .mp4 files")
        if "nfe_time" in metrics:
            if explicit:
                raise ConfigError("metrics: nfe_time measures generation; videos= generates nothing")
            metrics.remove("nfe_time")
            skipped["nfe_time"] = "videos= mode: nothing generated here"
        return Plan("videos", [], [], metrics, skipped, {}, str(d))
    sides = _sides(cfg)
    gen = _gen_params(cfg, sides[0].ckpt)
    for side in sides:
        own = _gen_params(cfg, side.ckpt)
        side.sampling = {k: own[k] for k in ("num_inference_steps", "guidance_scale", "nfe")}
    items, source = _prompt_items(cfg, gen)
    for name in list(metrics):
        why = _too_small(METRICS[name], len(items), int(gen["num_frames"]))
        if why and (explicit or METRICS[name].weights_key is None):
            raise ConfigError(why)
        if why:  # a weights metric the user did not ask for: left out with a note
            metrics.remove(name)
            skipped[name] = why
    if len(sides) == 2 and len(items) < 2:
        raise ConfigError(f"num_videos: {len(items)} video(s); a paired bootstrap CI needs at least 2")
    notes = [n for n in [vae_mismatch_note(sides)] if n]
    return Plan(
        "compare" if len(sides) == 2 else "generate", sides, items, metrics, skipped, gen, source, notes
    )


# ----------------------------------------------------------------------------- getting the videos


def generate(side: Side, items: list[dict], gen: dict, out_dir: Path, cfg) -> EvalSet:
    """Seeded batched generation (video i: prompt i with seed i, as that prompt alone gives); mp4s to out_dir."""
    from diffusers.utils import logging as diffusers_logging
    from tqdm import tqdm
    from transformers.utils import logging as transformers_logging

    from wan2.backbones.stack import BackboneError
    from wan2.export import atomic_write_text
    from wan2.inference import Wan2T2V, save_video
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
            videos = model.generate(
                [it["prompt"] for it in chunk], seed=[it["seed"] for it in chunk], fps=gen["fps"], **kwargs
            )
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


def _side_info(path: Path) -> dict[str, dict]:
    """Per-file prompt / seed / metadata from metadata.jsonl (evaluate.py), manifest.jsonl (generate.py)."""
    info: dict[str, dict] = {}
    for name, file_key in (("manifest.jsonl", "path"), ("metadata.jsonl", "file")):
        f = path / name
        if not f.is_file():
            continue
        for n, text in enumerate(f.read_text().splitlines(), 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
                info[Path(row[file_key]).name] = {**info.get(Path(row[file_key]).name, {}), **row}
            except (ValueError, KeyError, TypeError) as err:
                raise ConfigError(f"videos: {f} line {n}: {str(err).splitlines()[0]}") from None
    return info


def load_videos(path: Path) -> EvalSet:
    """A folder of mp4s with captions (captions.txt) or per-file rows (metadata.jsonl / manifest.jsonl)."""
    from wan2.data.video import VideoDecodeError, decode_mp4, probe

    files = sorted(p for p in path.glob("*.mp4") if not p.name.startswith("."))
    info = _side_info(path)
    captions = (path / "captions.txt").read_text().splitlines() if (path / "captions.txt").is_file() else []
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
            meta = {**meta, "height": H, "width": W, "num_frames": F}
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


# ----------------------------------------------------------------------------- scoring


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def score(ev: EvalSet, names: list[str], cfg, explicit: bool, skipped: dict[str, str]) -> dict:
    """Run each metric; returns summary, per-video arrays, per-event means, info and notes on skipped metrics."""
    summary, per_video, info, higher = {}, {}, {}, {}
    for name in names:
        m = METRICS[name]
        section = (cfg.get("metrics") or {}).get(name) or {}
        try:
            why = _too_small(m, len(ev), int(ev.videos.shape[1]))  # videos= mode: known only now
            if why:
                raise MetricUnavailable(why)
            res = m.fn(ev, section, cfg)
        except MetricUnavailable as why:
            too_small = str(why).startswith("num_")  # asked for, or a default metric: an error
            if explicit or (too_small and m.weights_key is None):
                raise ConfigError(str(why) if too_small else f"metrics: {name}: {why}") from None
            skipped[name] = str(why)
            print(f"note: {name} skipped: {why}", file=sys.stderr)
            continue
        pv = {k: [float(x) for x in v] for k, v in (res.get("per_video") or {}).items()}
        per_video |= pv
        summary |= {k: _nanmean(v) for k, v in pv.items()} | dict(res.get("summary") or {})
        info[name] = res.get("info") or {}
        higher |= {k: m.higher_is_better.get(k, True) for k in list(pv) + list(res.get("summary") or {})}
    events = sorted({m["event"] for m in ev.metas if m})
    per_event = {}
    for e in events:
        idx = [i for i, m in enumerate(ev.metas) if m and m["event"] == e]
        per_event[e] = {"num_videos": len(idx)} | {
            k: _nanmean(np.asarray(v)[idx]) for k, v in per_video.items()
        }
    return {
        "summary": summary,
        "per_video": per_video,
        "per_event": per_event,
        "info": info,
        "higher_is_better": higher,
        "skipped": dict(skipped),
    }


@register_metric("rank_trajectory", higher_is_better={"rank_trajectory/row_error": False})
def _rank_trajectory(ev: EvalSet, section, cfg) -> dict:
    """In-domain: the RankJump reader's trajectory verdict (start, end, monotonic, visible) per video."""
    verdicts = ev.verdicts()
    if not any(verdicts):
        raise MetricUnavailable("no video has RankJump metadata or a RankJump caption")
    nan = float("nan")

    def col(key):
        return [float(v[key]) if v else nan for v in verdicts]

    return {
        "per_video": {
            "rank_trajectory/accuracy": col("trajectory_ok"),
            "rank_trajectory/start_acc": col("start_ok"),
            "rank_trajectory/end_acc": col("end_ok"),
            "rank_trajectory/monotonic_acc": col("monotonic_ok"),
            "rank_trajectory/row_error": col("row_error"),
        },
        "info": {
            "kind": "in-domain (wan2.data.reader on RankJump events; not comparable to published numbers)",
            "num_judged": sum(v is not None for v in verdicts),
        },
    }


@register_metric("colour")
def _colour(ev: EvalSet, section, cfg) -> dict:
    """In-domain: share of videos whose highlighted row reads as the asked colour."""
    verdicts = ev.verdicts()
    if not any(verdicts):
        raise MetricUnavailable("no video has RankJump metadata or a RankJump caption")
    return {
        "per_video": {"colour/accuracy": [float(v["colour_ok"]) if v else float("nan") for v in verdicts]},
        "info": {
            "kind": "in-domain colour adherence (wan2.data.reader)",
            "num_judged": sum(v is not None for v in verdicts),
        },
    }


@register_metric("flicker", min_frames=2)
def _flicker(ev: EvalSet, section, cfg) -> dict:
    """VBench temporal flickering: (255 - mean |frame_t+1 - frame_t|) / 255; 1 = a still video."""
    from wan2.metrics.temporal import temporal_flickering

    res = temporal_flickering(ev.videos)
    return {
        "per_video": {"flicker/score": res["per_video"]},
        "info": {"kind": "VBench temporal flickering (higher = steadier; a frozen video scores 1)"},
    }


@register_metric("nfe_time", higher_is_better={"cost/seconds_per_video": False, "cost/nfe": False})
def _nfe_time(ev: EvalSet, section, cfg) -> dict:
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


@register_metric(
    "fvd",
    weights_key="metrics.fvd.i3d_path",
    min_videos=2,
    min_frames=10,
    higher_is_better={"fvd/fvd": False},
    hint="Kinetics-400 I3D weights: i3d_pretrained_400.pt or StyleGAN-V i3d_torchscript.pt",
)
def _fvd(ev: EvalSet, section, cfg) -> dict:
    """FVD (I3D Kinetics-400 logits, 224x224, [-1, 1]) against real RankJump clips of the same prompts."""
    from wan2.metrics.fvd import fvd, load_i3d

    idx, real = ev.reference()
    if len(idx) < 2:
        raise MetricUnavailable(f"{len(idx)} video(s) with RankJump metadata; FVD needs real clips of >= 2")
    try:
        model = load_i3d(section.get("i3d_path"), cfg.get("device", "cpu"))
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    res = fvd(real, ev.videos[idx], model, int(section.get("batch_size", 8)))
    return {
        "summary": {"fvd/fvd": res.pop("fvd")},
        "info": res | {"reference": "real RankJump clips of the same prompts (wan2.data.rankjump)"},
    }


@register_metric(
    "clipscore",
    weights_key="metrics.clipscore.model_dir",
    weights_kind="dir",
    hint="a local transformers CLIP directory, e.g. a saved openai/clip-vit-large-patch14",
)
def _clipscore(ev: EvalSet, section, cfg) -> dict:
    """CLIPSIM: 100 * cos(frame, prompt) averaged over frames, with a local transformers CLIP."""
    from wan2.metrics.clipscore import CLIPScorer

    try:
        scorer = CLIPScorer(section.get("model_dir"), cfg.get("device", "cpu"))
    except (FileNotFoundError, OSError, ValueError) as err:
        raise ConfigError(f"metrics.clipscore.model_dir: {str(err).splitlines()[0]}") from None
    res = scorer.score(ev.videos, ev.prompts)
    return {
        "per_video": {"clipscore/clipsim": res["per_video"]},
        "info": {"variant": res["variant"], "model": res["model"], "num_videos": res["num_videos"]},
    }


@register_metric(
    "indomain",
    weights_key="metrics.indomain.encoder_dir",
    weights_kind="dir",
    optional_weights=True,
    min_videos=2,
    higher_is_better={"indomain/fd": False},
    hint="the RankJump encoder: python train.py experiment=rankjump_encoder",
)
def _indomain(ev: EvalSet, section, cfg) -> dict:
    """In-domain RJ-FD and RJ-TV of the RankJump video-text encoder (``wan2.metrics.indomain``); not FVD / CLIPScore."""
    try:
        from wan2.metrics import indomain
    except ImportError as err:
        raise MetricUnavailable(f"wan2.metrics.indomain does not import ({err})") from None
    idx, real = ev.reference()
    if len(idx) < 2:
        raise MetricUnavailable(f"{len(idx)} video(s) with RankJump metadata; RJ-FD needs real clips of >= 2")
    try:
        res = indomain.indomain_metrics(section.get("encoder_dir"), ev.videos, ev.prompts, real)
    except indomain.EncoderLoadError as err:
        raise ConfigError(str(err)) from None
    details = dict(res.pop("indomain_details", {}))
    per_video = details.pop("text_video_per_video", None)
    out = {
        "summary": {"indomain/fd": res["indomain/fd"]},
        "info": details | {"num_real": res.get("indomain/num_real"), "num_gen": res.get("indomain/num_gen")},
    }
    if per_video is not None:
        out["per_video"] = {"indomain/text_video": per_video}
    else:
        out["summary"]["indomain/text_video"] = res["indomain/text_video"]
    return out


# ----------------------------------------------------------------------------- A/B


def compare(a: dict, b: dict, num_samples: int = 10_000, ci: float = 0.95, seed: int = 0) -> dict:
    """Per summary key: the paired B - A difference with a bootstrap CI (per-video metrics) and a verdict."""
    from wan2.metrics.stats import paired_bootstrap, verdict

    out = {}
    for key in a["summary"]:
        if key not in b["summary"]:
            continue
        hib = a["higher_is_better"].get(key, True)
        va, vb = a["per_video"].get(key), b["per_video"].get(key)
        batches = min(s["metrics"].get("nfe_time", {}).get("num_batches", 0) for s in (a, b))
        if key == "cost/seconds_per_video" and batches < 2:  # one timing per batch: too few to resample
            out[key] = {
                "mean_a": a["summary"][key],
                "mean_b": b["summary"][key],
                "diff": b["summary"][key] - a["summary"][key],
                "higher_is_better": hib,
                "verdict": f"no CI (one timing per batch, {batches} batch)",
            }
            continue
        if va is not None and vb is not None:
            try:
                res = paired_bootstrap(va, vb, num_samples=num_samples, ci=ci, seed=seed)
            except ValueError as err:  # fewer than 2 complete pairs
                out[key] = {
                    "diff": b["summary"][key] - a["summary"][key],
                    "verdict": f"no CI ({err})",
                    "higher_is_better": hib,
                }
                continue
            out[key] = res | {"verdict": verdict(res["ci_low"], res["ci_high"], hib), "higher_is_better": hib}
            continue
        ma, mb = a["summary"][key], b["summary"][key]
        d = mb - ma
        if key == "cost/nfe":  # exact count: no sampling error
            text = "no difference" if d == 0 else ("B better" if (d > 0) == hib else "B worse")
        else:
            text = "no CI (one number per set)"
        out[key] = {"mean_a": ma, "mean_b": mb, "diff": d, "verdict": text, "higher_is_better": hib}
    return out


# ----------------------------------------------------------------------------- the run


def _clean(x):
    """JSON-safe: numpy scalars to Python, NaN / inf to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
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


def _side_report(ev: EvalSet, p: Plan, side: Side | None, cfg, out: Path, sub: Path) -> dict:
    from wan2.report import write_contact_sheets

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
        "contact_sheets": {
            k: {"file": os.path.relpath(f, out), "videos": idx} for k, (f, idx) in sheets.items()
        },
        "videos": _video_rows(ev, scores, out),
        "per_video": scores["per_video"],
    }


def run(cfg, p: Plan) -> dict:
    """Generate (or read) the videos, score them, write report.json / report.html, log to W&B; returns the report."""
    from wan2.export import atomic_write_text
    from wan2.report import render_html

    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    start = time.time()
    if p.mode == "videos":
        sides = {"model": _side_report(load_videos(Path(p.source)), p, None, cfg, out, out)}
    else:
        sides = {}
        for side in p.sides:
            sub = out if p.mode == "generate" else out / side.label
            ev = generate(side, p.items, side.gen(p.gen), sub, cfg)
            sides[side.label] = _side_report(ev, p, side, cfg, out, sub)
    report = {"mode": p.mode, "metrics_run": p.metrics, "seconds": 0.0}
    if p.mode == "compare":
        a, b = sides["A"], sides["B"]
        bs = cfg.get("bootstrap") or {}
        report |= {
            "a": {"name": p.sides[0].name, **a},
            "b": {"name": p.sides[1].name, **b},
            "comparison": compare(
                a, b, int(bs.get("num_samples", 10_000)), float(bs.get("ci", 0.95)), int(cfg.seed)
            ),
        }
        if p.notes:
            report["notes"] = p.notes
        report["summary"] = (
            {f"A/{k}": v for k, v in a["summary"].items()}
            | {f"B/{k}": v for k, v in b["summary"].items()}
            | {f"diff/{k}": c["diff"] for k, c in report["comparison"].items()}
        )
    else:
        report |= sides["model"]
    for d in (report, report.get("a", {}), report.get("b", {})):
        d.pop("per_video", None)  # the same numbers are in `videos`, row by row
    report["seconds"] = round(time.time() - start, 1)
    report = _clean(report)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.html", render_html(report, out))
    if "wandb" in (cfg.get("logger") or {}):  # logger=wandb (configs/logger/wandb.yaml); logger=none: {}
        log_wandb(report, out, cfg)
    return report


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


def vae_fingerprint(ckpt: str) -> str:
    """sha256 of an export's VAE weights (``vae/*.safetensors``): which decoder turns its latents into pixels."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((Path(ckpt) / "vae").glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def vae_mismatch_note(sides: list[Side]) -> str | None:
    """A/B sides that decode with different VAEs: their FD / FVD gap is partly the decoder's, not the denoiser's."""
    if len(sides) != 2 or vae_fingerprint(sides[0].ckpt) == vae_fingerprint(sides[1].ckpt):
        return None
    return (
        "A and B decode with different VAEs (vae/ weights differ): differences in RJ-FD, FVD and the reader's "
        "scores include the decoder's, not only the denoiser's"
    )


def main(cfg) -> int:
    """Plan, run, print the summary; a config or input problem prints one line and returns 2."""
    try:
        p = plan(cfg)
        for name, why in p.skipped.items():
            print(f"note: {name} not run: {why}", file=sys.stderr)
        for note in p.notes:
            print(f"note: {note}", file=sys.stderr)
        report = run(cfg, p)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(str(cfg.out))
    print(json.dumps(report["summary"], indent=1))
    if report["mode"] == "compare":
        for key, c in report["comparison"].items():
            ci = f" [{c['ci_low']:+.4g}, {c['ci_high']:+.4g}]" if "ci_low" in c else ""
            print(f"{key}: B - A = {c['diff']:+.4g}{ci}: {c['verdict']}")
    print(f"report: {out / 'report.html'}", file=sys.stderr)
    return 0
