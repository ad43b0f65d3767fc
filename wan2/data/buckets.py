"""Aspect and length buckets: which (frames, height, width) a clip is cut to, and the batch plan of an epoch.

A bucket is ``F x H x W`` with F = 4k+1 and H, W multiples of the model's VAE spatial stride x patch size
(``multiple``). The spatial buckets keep about one pixel budget (``height * width``) over aspect ratios up to
``max_aspect``; a clip goes to the one whose aspect ratio is nearest its own, so a portrait clip stays portrait.
The frame buckets run from ``--frames`` down by halves, so a short video gives a shorter clip instead of none.

A bucketed shard folder holds ``<bucket>-NNNNNN.tar`` per bucket and ``manifest.json`` (written last) with
``buckets: {"FxHxW": count}``. ``plan_batches`` deals one epoch's batches (each from one bucket) to ranks so
that every clip is in exactly one batch and every rank gets the same number of batches. Torch-free.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = "wan2-buckets/1"
_NAME = re.compile(r"(\d+)x(\d+)x(\d+)")
MIN_SIDE = 16  # the smallest clip side the data settings accept (``check_clip``)


@dataclass(frozen=True, order=True)
class Bucket:
    frames: int
    height: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"

    @classmethod
    def parse(cls, name: str) -> Bucket:
        m = _NAME.fullmatch(name)
        if not m:
            raise ValueError(f"bucket: {name!r} is not FxHxW (e.g. 17x32x32)")
        return cls(*map(int, m.groups()))


def frame_buckets(longest: int, shortest: int = 5) -> list[int]:
    """4k+1 frame counts from ``longest`` down by halves to at least ``shortest``: 81 -> [81, 41, 21, 9, 5]."""
    if longest < 1 or (longest - 1) % 4:
        raise ValueError(f"frames: {longest} is not 4k+1")
    out = [longest]
    while True:
        f = (out[-1] - 1) // 2 // 4 * 4 + 1
        if f < max(shortest, 5) or f == out[-1]:
            return out
        out.append(f)


def spatial_buckets(height: int, width: int, multiple: int, max_aspect: float = 3.0) -> list[tuple[int, int]]:
    """(H, W) pairs, multiples of ``multiple`` and at least 16, with about ``height * width`` pixels, aspect
    ratios within [1 / max_aspect, max_aspect]; one per aspect ratio (the area nearest the budget), sorted."""
    if multiple < 1 or height < 1 or width < 1:
        raise ValueError(f"buckets: height {height}, width {width}, multiple {multiple} must be >= 1")
    budget = height * width
    side = max(multiple, math.ceil(MIN_SIDE / multiple) * multiple)

    def snap(v: float) -> int:
        return max(side, round(v / multiple) * multiple)

    pairs = {(snap(height), snap(width))}
    h = side
    while h * side <= budget * max_aspect:
        w = snap(budget / h)
        for a, b in ((h, w), (w, h)):
            if 1 / max_aspect <= b / a <= max_aspect:
                pairs.add((a, b))
        h += multiple
    best: dict[tuple[int, int], tuple[int, int]] = {}  # reduced aspect ratio -> pair
    for a, b in sorted(pairs):
        g = math.gcd(a, b)
        key = (a // g, b // g)
        if key not in best or abs(a * b - budget) < abs(best[key][0] * best[key][1] - budget):
            best[key] = (a, b)
    return sorted(best.values())


def nearest_size(height: int, width: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The (H, W) in ``sizes`` whose aspect ratio is nearest (in log) that of ``height x width``."""
    target = math.log(width / height)
    return min(sizes, key=lambda s: (abs(math.log(s[1] / s[0]) - target), -s[0] * s[1], s))


def clip_starts(available: float, span: float, stride: float, max_clips: int) -> list[float]:
    """Start times (seconds from the first frame) of up to ``max_clips`` clips of ``span`` seconds, ``stride``
    apart, that end within ``available`` seconds."""
    if stride <= 0:
        raise ValueError(f"clip stride: {stride} is not positive")
    n = min(max_clips, int(math.floor((available - span) / stride + 1e-9)) + 1) if available >= span else 0
    return [round(i * stride, 6) for i in range(max(0, n))]


@dataclass(frozen=True)
class BucketSpec:
    """How clips are cut: target ``fps``, the frame buckets (longest first) and the spatial buckets."""

    fps: float
    frames: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]
    clip_stride: float | None = None  # seconds between clip starts; None: one clip length (no overlap)
    max_clips: int = 8

    @classmethod
    def make(
        cls,
        *,
        fps: float,
        frames: int,
        height: int,
        width: int,
        multiple: int,
        max_aspect: float = 3.0,
        min_frames: int = 5,
        clip_stride: float | None = None,
        max_clips: int = 8,
    ) -> BucketSpec:
        return cls(
            fps=fps,
            frames=tuple(frame_buckets(frames, min_frames)),
            sizes=tuple(spatial_buckets(height, width, multiple, max_aspect)),
            clip_stride=clip_stride,
            max_clips=max_clips,
        )

    def plan(self, height: int, width: int, available: float) -> tuple[Bucket, list[float]] | None:
        """The bucket of a video ``height x width`` with ``available`` seconds from its first frame (the last
        frame counts for half a target frame more), and its clips' start times; None when too short."""
        h, w = nearest_size(height, width, list(self.sizes))
        for f in self.frames:
            span = (f - 1) / self.fps
            starts = clip_starts(available, span, self.clip_stride or span, self.max_clips)
            if starts:
                return Bucket(f, h, w), starts
        return None


# ----------------------------------------------------------------------------- the folder's manifest


def is_bucket_folder(path) -> bool:
    """A folder with a ``manifest.json`` (the mark a bucketed shard set is complete)."""
    return isinstance(path, (str, os.PathLike)) and (Path(path) / MANIFEST).is_file()


def read_bucket_manifest(folder) -> dict:
    """The checked ``manifest.json`` of a bucketed shard folder; ``ValueError`` (one line) when unusable."""
    path = Path(folder) / MANIFEST
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the manifest ({type(err).__name__}: {err})") from None
    if (
        not isinstance(m, dict)
        or not isinstance(m.get("buckets"), dict)
        or not isinstance(m.get("shards"), dict)
    ):
        raise ValueError(
            f"{path}: not a bucketed shard manifest (needs 'buckets' and 'shards'; write it with "
            "scripts/make_shards.py --buckets)"
        )
    for name, files in m["shards"].items():
        Bucket.parse(name)
        missing = [f for f in files if not (Path(folder) / f).is_file()]
        if missing:
            raise ValueError(
                f"{path}: bucket {name}: shard {missing[0]!r} is missing ({len(missing)} of {len(files)})"
            )
    if not sum(m["buckets"].values()):
        raise ValueError(f"{path}: no clips in any bucket")
    return m


def largest_bucket(spec) -> Bucket | None:
    """The bucket with the most pixels x frames of a bucketed folder (what memory is planned for), else None."""
    if not is_bucket_folder(spec):
        return None
    try:
        names = read_bucket_manifest(spec)["buckets"]
    except ValueError:
        return None
    return max((Bucket.parse(n) for n in names), key=lambda b: (b.frames * b.height * b.width, b))


def bucket_size_problem(manifest: dict, multiple: int, temporal: int) -> str | None:
    """Why a bucket of ``manifest`` does not fit a model (H, W multiples of ``multiple``, F = temporal k + 1)."""
    for name in sorted(manifest["buckets"]):
        b = Bucket.parse(name)
        if b.height % multiple or b.width % multiple:
            return f"bucket {name}: {b.height}x{b.width} is not a multiple of {multiple} (VAE stride x patch size)"
        if (b.frames - 1) % temporal:
            return f"bucket {name}: {b.frames} frames is not {temporal}k+1 (the VAE's temporal stride)"
    return None


# ----------------------------------------------------------------------------- one epoch's batches


def plan_batches(
    counts: dict[str, int], batch_size: int, seed: int, epoch: int, world_size: int = 1
) -> list[list[tuple[str, int]]]:
    """All batches of one epoch as lists of (bucket, index in bucket), in a deterministic shuffled order.

    Each bucket's clips are shuffled (seeded by seed, epoch, bucket) and cut into batches of ``batch_size`` (the
    last one of a bucket smaller); the batch order is shuffled; then the largest batches are halved until the
    number of batches is a multiple of ``world_size``, so that ``batches[rank::world_size]`` gives every rank as
    many steps and every clip is in exactly one batch. ``ValueError`` when there are fewer clips than ranks.
    """
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size {batch_size} and world_size {world_size} must be >= 1")
    total = sum(counts.values())
    if total < world_size:
        raise ValueError(f"{total} clips cannot give each of {world_size} ranks a batch")
    batches: list[list[tuple[str, int]]] = []
    for name in sorted(counts):
        idx = list(range(counts[name]))
        random.Random(f"{seed}/{epoch}/{name}").shuffle(idx)
        batches += [[(name, i) for i in idx[j : j + batch_size]] for j in range(0, len(idx), batch_size)]
    random.Random(f"{seed}/{epoch}").shuffle(batches)
    while len(batches) % world_size:
        k = max(range(len(batches)), key=lambda j: (len(batches[j]), -j))  # the first largest batch
        b = batches[k]
        batches[k : k + 1] = [b[: len(b) // 2], b[len(b) // 2 :]]
    return batches


def worker_batches(batches: list, rank: int, world_size: int, worker: int = 0, num_workers: int = 1) -> list:
    """This (rank, DataLoader worker)'s share: rank r takes batches r, r + world, ...; its worker w of n takes
    every n-th of those from w, which the DataLoader (round-robin over workers) yields in the rank's order."""
    if not 0 <= rank < world_size or not 0 <= worker < num_workers:
        raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{num_workers} out of range")
    return batches[rank::world_size][worker::num_workers]
