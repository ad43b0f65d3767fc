"""Turn a user's videos (a folder of ``clip.mp4`` + ``clip.txt``, or a CSV/JSONL index) into shards.

Each video gives one clip of ``num_frames`` (4k+1) frames sampled at ``fps`` from its first frame (nearest
source frame per target time), resized to cover ``height`` x ``width`` and centre-cropped. Files that
cannot be used are skipped and reported with a reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from wan2.data.shards import make_sample, write_shards
from wan2.data.video import VideoDecodeError, iter_frames

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".gif")


class TooShortError(ValueError):
    """The video ends before the last frame of the clip."""


@dataclass
class Item:
    path: str
    caption: str | None  # None when no caption was found
    key: str


@dataclass
class IngestSummary:
    written: int = 0  # clips
    videos: int = 0  # videos that gave at least one clip (bucketed ingest)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, message), first few
    manifest: dict = field(default_factory=dict)

    def skip(self, path: str, reason: str, message: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 50:
            self.examples.append((path, reason, message))

    def merge(self, other: IngestSummary) -> None:
        """Add another summary's skips and video count (a worker's part of a bucketed ingest)."""
        self.skipped.update(other.skipped)
        self.examples += other.examples[: max(0, 50 - len(self.examples))]
        self.videos += other.videos

    def report(self) -> str:
        """A short multi-line text: written, skipped per reason, and a few examples."""
        lines = [f"written: {self.written} clips in {self.manifest.get('num_shards', 0)} shards"]
        if self.manifest.get("buckets"):
            buckets = ", ".join(f"{b}={n}" for b, n in self.manifest["buckets"].items())
            lines[0] += f" from {self.videos} videos; buckets: {buckets}"
        total = sum(self.skipped.values())
        lines.append(
            f"skipped: {total}"
            + (" (" + ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items())) + ")" if total else "")
        )
        for path, reason, message in self.examples[:10]:
            lines.append(f"  {reason}: {path}" + (f" ({message})" if message else ""))
        return "\n".join(lines)


def stable_key(relpath: str) -> str:
    """A tar-safe key from a relative path: readable stem (no dots) plus a short hash of the full path."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(relpath)[0]).strip("_")[-40:] or "clip"
    return f"{stem}_{hashlib.sha1(relpath.encode('utf-8')).hexdigest()[:10]}"


def _read_caption(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().strip()
    except OSError:
        return None
    return text or None


def scan_folder(root: str | os.PathLike) -> list[Item]:
    """Videos under ``root`` (recursive, sorted) with the caption of a same-stem ``.txt`` next to each."""
    root = os.fspath(root)
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            caption = _read_caption(os.path.splitext(path)[0] + ".txt")
            items.append(Item(path=path, caption=caption, key=stable_key(rel)))
    return items


def read_index(
    index: str | os.PathLike, *, path_column: str = "path", caption_column: str = "caption"
) -> list[Item]:
    """Rows of a CSV (a header naming ``path_column`` and ``caption_column``) or JSONL (those fields).

    Relative paths are taken relative to the index file's folder; a row without a caption has ``caption=None``.
    """
    index = os.fspath(index)
    base = os.path.dirname(os.path.abspath(index))
    rows: list[dict] = []
    if index.endswith(".jsonl"):
        with open(index, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as err:
                        raise ValueError(f"{index}:{n}: not JSON: {err}") from err
                    if not isinstance(rows[-1], dict):
                        raise ValueError(f"{index}:{n}: not a JSON object")
    elif index.endswith(".csv"):
        with open(index, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or path_column not in reader.fieldnames:
                raise ValueError(
                    f"{index}: needs a header with columns {path_column!r} and {caption_column!r}, "
                    f"got {reader.fieldnames}"
                )
            if caption_column not in reader.fieldnames:
                raise ValueError(f"{index}: no caption column {caption_column!r} in {reader.fieldnames}")
            rows = list(reader)
    else:
        raise ValueError(f"index: {index!r} must end in .csv or .jsonl")
    items = []
    for row in rows:
        rel = str(row.get(path_column) or "").strip()
        if not rel:
            continue
        path = rel if os.path.isabs(rel) else os.path.join(base, rel)
        caption = str(row.get(caption_column) or "").strip() or None
        items.append(Item(path=path, caption=caption, key=stable_key(rel)))
    return items


def add_captions(items: list[Item], index: list[Item]) -> list[Item]:
    """Items whose caption comes from ``index`` (rows of ``read_index``) where it names the same file, else
    the item's own (its ``.txt`` sidecar)."""
    by_path = {os.path.realpath(i.path): i.caption for i in index if i.caption}
    return [Item(i.path, by_path.get(os.path.realpath(i.path), i.caption), i.key) for i in items]


def resize_crop(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (h, w, 3) -> (height, width, 3): scale to cover the target (Lanczos), then centre-crop."""
    h, w = img.shape[:2]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    pil = Image.fromarray(img).resize((nw, nh), Image.Resampling.LANCZOS)
    top, left = (nh - height) // 2, (nw - width) // 2
    return np.asarray(pil.crop((left, top, left + width, top + height)))


def sample_clip(src, num_frames: int, fps: float, height: int, width: int) -> np.ndarray:
    """Decode ``num_frames`` frames at ``fps`` from the start of a video, resized: uint8 (F, H, W, 3).

    Streams through the video keeping only the chosen frames. Raises ``VideoDecodeError`` or
    ``TooShortError``.
    """
    if num_frames < 1 or (num_frames - 1) % 4 != 0:
        raise ValueError(f"num_frames: {num_frames} is not 4k+1")
    out: list[np.ndarray] = []
    targets: np.ndarray | None = None
    prev: tuple[float, np.ndarray] | None = None
    last_t, cache = None, (None, None)

    def take(img: np.ndarray) -> None:
        nonlocal cache
        if cache[0] is not img:  # a source frame used twice (low source fps) is resized once
            cache = (img, resize_crop(img, height, width))
        out.append(cache[1])

    frames = iter_frames(src)
    try:
        for t, img in frames:
            if targets is None:
                targets = t + np.arange(num_frames) / fps  # (F,) seconds
            while len(out) < num_frames and t >= targets[len(out)]:
                target = targets[len(out)]
                take(prev[1] if prev is not None and target - prev[0] < t - target else img)
            if len(out) == num_frames:
                break
            prev, last_t = (t, img), t
    finally:
        frames.close()  # stop decoding and close the file once the clip is complete
    if targets is not None and len(out) < num_frames and prev is not None:
        # the last frame still counts for a target within half a clip frame after it
        while len(out) < num_frames and targets[len(out)] - prev[0] <= 0.5 / fps:
            take(prev[1])
    if len(out) < num_frames:
        span = (num_frames - 1) / fps
        got = (last_t - targets[0]) if targets is not None and last_t is not None else 0.0
        raise TooShortError(f"needs {span:.2f}s for {num_frames} frames at {fps:g} fps, video has {got:.2f}s")
    return np.stack(out)  # (F, H, W, 3)


def iter_clips(
    items: list[Item],
    summary: IngestSummary,
    *,
    num_frames: int,
    fps: float,
    height: int,
    width: int,
    progress: bool = True,
) -> Iterator[dict]:
    """Tar samples of the usable items; the others are recorded in ``summary`` with a reason."""
    from tqdm import tqdm

    seen_keys: set[str] = set()
    for item in tqdm(items, desc="ingest", unit="video", disable=not progress):
        if not os.path.exists(item.path):
            summary.skip(item.path, "not_found")
            continue
        if not item.caption:
            summary.skip(item.path, "missing_caption")
            continue
        if item.key in seen_keys:
            summary.skip(item.path, "duplicate")
            continue
        try:
            frames = sample_clip(item.path, num_frames, fps, height, width)
        except TooShortError as err:
            summary.skip(item.path, "too_short", str(err))
            continue
        except VideoDecodeError as err:
            summary.skip(item.path, "undecodable", str(err))
            continue
        seen_keys.add(item.key)
        meta = {
            "source": item.path,
            "caption": item.caption,
            "height": height,
            "width": width,
            "num_frames": num_frames,
            "fps": fps,
        }
        summary.written += 1
        yield make_sample(item.key, frames, item.caption, meta, fps)


def ingest(
    items: list[Item],
    out_dir,
    *,
    prefix: str = "shard",
    shard_size: int = 1000,
    num_frames: int = 17,
    fps: float = 8,
    height: int = 32,
    width: int = 32,
    progress: bool = True,
) -> IngestSummary:
    """Write the usable items as shards ``out_dir/prefix-NNNNNN.tar``; returns what was written and skipped."""
    summary = IngestSummary()
    clips = iter_clips(
        items, summary, num_frames=num_frames, fps=fps, height=height, width=width, progress=progress
    )
    info = {"source": "ingest", "num_frames": num_frames, "fps": fps, "height": height, "width": width}
    summary.manifest = write_shards(clips, out_dir, prefix=prefix, shard_size=shard_size, info=info)
    summary.manifest["skipped"] = dict(summary.skipped)
    return summary
