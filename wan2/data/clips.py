"""Several clips per video into aspect / length buckets (``make_shards.py --buckets``), decoded as a stream.

``stream_clips`` decodes a video once, front to back, keeping only the frames the clips need (nearest source
frame per target time) resized to the bucket: memory holds the clips being filled, never the whole file. Where
the next clip starts more than ``seek_gap`` seconds ahead it seeks (to the keyframe before it, when that lies
ahead of the current frame) instead of decoding the gap, and it stops decoding after the last clip. ``ingest_buckets`` probes each video, picks its
bucket (``wan2.data.buckets``), cuts its clips and writes them to one shard set per bucket with the folder's
``manifest.json`` written last; unusable videos are skipped and counted by reason.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator

import numpy as np
import webdataset as wds

from wan2.data.buckets import FORMAT, MANIFEST, Bucket, BucketSpec
from wan2.data.ingest import IngestSummary, Item
from wan2.data.shards import make_sample
from wan2.data.video import _DECODE_ERRORS, VideoDecodeError, _one_line, _open, probe

MAX_SIDE = 8192  # a frame side above this is an absurd size (skipped as bad_size)
MAX_ASPECT = 8.0  # so is an aspect ratio beyond 8:1


def rotation_steps(frame) -> int:
    """Quarter turns counterclockwise (0-3) that show a frame upright: its display matrix (phones store portrait
    video as landscape frames with a rotation of -90 degrees)."""
    return round(float(getattr(frame, "rotation", 0) or 0) / 90) % 4


def cover_crop(frame, height: int, width: int) -> np.ndarray:
    """A decoded ``av.VideoFrame`` -> uint8 (height, width, 3) upright: scaled by swscale to cover, centre-cropped.

    Downscaling averages areas (as good as Lanczos for shrinking, 2.5x faster on 1080p); upscaling is bicubic."""
    k = rotation_steps(frame)
    th, tw = (width, height) if k % 2 else (height, width)  # the target before the rotation
    h, w = frame.height, frame.width
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    interpolation = "AREA" if scale < 1 else "BICUBIC"
    img = frame.reformat(width=nw, height=nh, format="rgb24", interpolation=interpolation).to_ndarray()
    top, left = (nh - th) // 2, (nw - tw) // 2
    img = img[top : top + th, left : left + tw]
    return np.ascontiguousarray(np.rot90(img, k) if k else img)  # (H, W, 3)


def display_rotation(src) -> int:
    """Quarter turns of the first frame's display matrix (0 when there is none or it cannot be read)."""
    try:
        container = _open(src)
    except VideoDecodeError:
        return 0
    try:
        for frame in container.decode(video=0):
            return rotation_steps(frame)
    except _DECODE_ERRORS:
        return 0
    finally:
        container.close()
    return 0


class _Clip:
    """One clip being filled: its target times and a preallocated uint8 (F, H, W, 3) buffer."""

    def __init__(self, index: int, start: float, t0: float, num_frames: int, fps: float):
        self.index, self.start = index, start
        self.targets = t0 + start + np.arange(num_frames) / fps  # (F,) seconds in the stream's clock
        self.buf: np.ndarray | None = None  # allocated when its first frame arrives
        self.n = 0

    def add(self, img: np.ndarray) -> None:
        if self.buf is None:
            self.buf = np.empty((len(self.targets), *img.shape), np.uint8)
        self.buf[self.n] = img
        self.n += 1

    @property
    def done(self) -> bool:
        return self.n == len(self.targets)

    @property
    def next_target(self) -> float:
        return float(self.targets[self.n])


def stream_clips(
    src,
    starts: list[float],
    num_frames: int,
    fps: float,
    height: int,
    width: int,
    seek_gap: float = 2.0,
    stats: dict | None = None,
) -> Iterator[tuple[int, float, np.ndarray | None]]:
    """Yield ``(clip index, start seconds from the first frame, uint8 (F, H, W, 3))`` per clip, in order of
    completion; ``None`` for a clip the video ends before (the last frame still serves targets within half a
    clip frame after it). Raises ``VideoDecodeError``; decoding stops once every clip is complete. ``stats``
    (a dict) receives ``decoded`` (frames decoded), ``converted`` (frames scaled) and ``seeks``."""
    stats = {} if stats is None else stats
    stats.update(decoded=0, converted=0, seeks=0)
    container = _open(src)
    try:
        if not container.streams.video:
            raise VideoDecodeError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: decoding is most of the cost
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        clips: list[_Clip] = []
        prev = None  # (t, av frame) decoded before the current one
        resized: list = []  # [(av frame, image)] of the last two frames taken: a frame used twice is resized once
        sought = -1.0
        index = 0

        def take(frame) -> np.ndarray:
            for f, img in resized:
                if f is frame:
                    return img
            img = cover_crop(frame, height, width)
            stats["converted"] += 1
            resized[:] = [*resized[-1:], (frame, img)]
            return img

        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except _DECODE_ERRORS as err:
                raise VideoDecodeError(f"decoding failed after {index} frames: {_one_line(err)}") from err
            t = float(frame.time) if frame.time is not None else (index / rate if rate else float(index))
            index += 1
            stats["decoded"] += 1
            if index == 1:
                clips = [_Clip(i, s, t, num_frames, fps) for i, s in enumerate(starts)]
            for clip in clips:
                while not clip.done and t >= clip.next_target:
                    target = clip.next_target
                    near_prev = prev is not None and target - prev[0] < t - target
                    clip.add(take(prev[1] if near_prev else frame))
            for clip in [c for c in clips if c.done]:
                yield clip.index, clip.start, clip.buf
            clips = [c for c in clips if not c.done]
            if not clips:
                break
            prev = (t, frame)
            ahead = min(c.next_target for c in clips)
            if ahead - t > seek_gap and ahead > sought and all(c.n == 0 for c in clips):
                sought = ahead
                offset = int((ahead - 0.5 / fps) / stream.time_base)
                key = _keyframe_at_or_before(src, offset)
                if key is not None and key * stream.time_base > t + 1 / fps:
                    # the keyframe before the next clip lies ahead: jump there rather than decode the gap
                    stats["seeks"] += 1
                    container.seek(offset, stream=stream, backward=True)
                    frames, prev = container.decode(stream), None
        if index == 0:
            raise VideoDecodeError("no decodable frames")
        for clip in clips:  # the video ended: its last frame serves targets within half a clip frame
            while prev is not None and not clip.done and clip.next_target - prev[0] <= 0.5 / fps:
                clip.add(take(prev[1]))
            yield clip.index, clip.start, clip.buf if clip.done else None
    finally:
        container.close()


def _keyframe_at_or_before(src, offset: int) -> int | None:
    """pts of the keyframe a backward seek to ``offset`` (stream time base) lands on, read by demuxing one
    packet of a second handle; None when ``src`` is not a file path or that fails. A seek that would land
    behind the current position (sparse keyframes) would decode those frames twice: it is not made."""
    if not isinstance(src, (str, os.PathLike)):
        return None
    try:
        with _open(src) as c:
            stream = c.streams.video[0]
            c.seek(offset, stream=stream, backward=True)
            for packet in c.demux(stream):
                if packet.pts is not None:
                    return int(packet.pts)
    except (VideoDecodeError, *_DECODE_ERRORS):
        return None
    return None


# ----------------------------------------------------------------------------- writing one shard set per bucket


class BucketWriter:
    """Shards ``<bucket>-NNNNNN.tar`` per bucket in one folder; ``manifest.json`` written by ``close`` last.

    Each shard is written as ``*.tar.tmp`` and renamed when complete; a run that fails removes its partial shards
    and writes no manifest, so an incomplete folder is never taken for a complete one.
    """

    _SHARD = re.compile(r"\d+x\d+x\d+-\d{6}\.tar(\.tmp)?")

    def __init__(self, out_dir, shard_size: int = 1000):
        if shard_size < 1:
            raise ValueError(f"shard_size: {shard_size} is below 1")
        self.out_dir, self.shard_size = os.fspath(out_dir), shard_size
        os.makedirs(self.out_dir, exist_ok=True)
        manifest = os.path.join(self.out_dir, MANIFEST)
        if os.path.exists(manifest):
            os.remove(manifest)  # being rewritten: not complete until the new manifest lands
        self.writers: dict[str, wds.ShardWriter] = {}
        self.done: dict[str, list[str]] = {}
        self.counts: Counter = Counter()

    def write(self, bucket: Bucket, sample: dict) -> None:
        name = bucket.name
        if name not in self.writers:
            self.done[name] = []

            def finish(tmp: str, name=name) -> None:
                os.replace(tmp, tmp[: -len(".tmp")])
                self.done[name].append(os.path.basename(tmp[: -len(".tmp")]))

            pattern = os.path.join(self.out_dir, f"{name}-%06d.tar.tmp")
            self.writers[name] = wds.ShardWriter(
                pattern, maxcount=self.shard_size, post=finish, verbose=0, mtime=0.0
            )
        self.writers[name].write(sample)
        self.counts[name] += 1

    def abort(self) -> None:
        """Close without promoting the open shards, remove them; no manifest is written."""
        for w in self.writers.values():
            w.post = None
            tmp = w.fname
            w.close()
            if tmp and os.path.exists(tmp):
                os.remove(tmp)

    def close(self, info: dict, skipped: dict | None = None) -> dict:
        """Finish every shard, remove stale bucket shards of an earlier run, write and return the manifest."""
        for w in self.writers.values():
            w.close()
        keep = {f for files in self.done.values() for f in files}
        for name in os.listdir(self.out_dir):
            if self._SHARD.fullmatch(name) and name not in keep:
                os.remove(os.path.join(self.out_dir, name))
        manifest = {
            "format": FORMAT,
            "num_samples": sum(self.counts.values()),
            "buckets": dict(sorted(self.counts.items())),
            "shards": {k: sorted(v) for k, v in sorted(self.done.items())},
            "num_shards": sum(len(v) for v in self.done.values()),
            "shard_size": self.shard_size,
            "info": info,
            "skipped": dict(skipped or {}),
        }
        path = os.path.join(self.out_dir, MANIFEST)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)
        return manifest


# ----------------------------------------------------------------------------- ingest


def _size_problem(height: int, width: int) -> str | None:
    if min(height, width) < 16 or max(height, width) > MAX_SIDE:
        return f"{width}x{height} is outside 16..{MAX_SIDE} pixels a side"
    if max(height, width) / min(height, width) > MAX_ASPECT:
        return f"{width}x{height} has an aspect ratio beyond {MAX_ASPECT:g}:1"
    return None


def video_clips(item: Item, spec: BucketSpec, summary: IngestSummary) -> Iterator[tuple[Bucket, dict]]:
    """(bucket, tar sample) for each clip of one video; a video that gives none is counted by reason."""
    try:
        info = probe(item.path)
    except VideoDecodeError as err:
        summary.skip(item.path, "undecodable", str(err))
        return
    turns = display_rotation(item.path)
    height, width = (info.width, info.height) if turns % 2 else (info.height, info.width)  # as displayed
    if (problem := _size_problem(height, width)) is not None:
        summary.skip(item.path, "bad_size", problem)
        return
    src_step = 1 / info.fps if info.fps else 0.0
    available = info.duration - src_step + 0.5 / spec.fps  # the first frame to the last, plus half a frame
    planned = spec.plan(height, width, available)
    if planned is None:
        need = (spec.frames[-1] - 1) / spec.fps
        summary.skip(
            item.path,
            "too_short",
            f"{info.duration:.2f}s; the shortest bucket ({spec.frames[-1]} frames) needs {need:.2f}s",
        )
        return
    bucket, starts = planned
    written = 0
    try:
        for c, start, frames in stream_clips(
            item.path, starts, bucket.frames, spec.fps, bucket.height, bucket.width
        ):
            if frames is None:
                summary.skip(item.path, "clip_cut_short", f"clip {c} at {start:.2f}s runs past the end")
                continue
            meta = {
                "source": item.path,
                "clip": c,
                "start": start,
                "fps": spec.fps,
                "source_fps": info.fps,
                "source_size": [height, width],  # as displayed (after the display matrix's rotation)
                "rotation": 90 * turns,
                "bucket": bucket.name,
                "num_frames": bucket.frames,
                "height": bucket.height,
                "width": bucket.width,
                "caption": item.caption,
            }
            written += 1
            yield bucket, make_sample(f"{item.key}_c{c:03d}", frames, item.caption, meta, spec.fps)
    except VideoDecodeError as err:
        summary.skip(
            item.path, "undecodable", str(err) + (f" (after {written} clips, kept)" if written else "")
        )
    if written:
        summary.videos += 1


def _cut_video(job: tuple[Item, BucketSpec]) -> tuple[list[tuple[Bucket, dict]], IngestSummary]:
    """One video's clips and what it skipped (a worker process's job: a whole video, in order)."""
    item, spec = job
    summary = IngestSummary()
    return list(video_clips(item, spec, summary)), summary


def ingest_buckets(
    items: list[Item],
    out_dir,
    spec: BucketSpec,
    *,
    shard_size: int = 1000,
    progress: bool = True,
    workers: int = 1,
) -> IngestSummary:
    """Cut every usable video into bucketed clips under ``out_dir``; returns what was written and skipped.

    With ``workers > 1`` videos are decoded and encoded in that many processes; clips are written in the
    order of ``items`` all the same, so the shards do not depend on the number of workers.
    """
    import multiprocessing

    from tqdm import tqdm

    summary = IngestSummary()
    usable, seen = [], set()
    for item in items:
        if not os.path.exists(item.path):
            summary.skip(item.path, "not_found")
        elif not item.caption:
            summary.skip(item.path, "missing_caption")
        elif item.key in seen:
            summary.skip(item.path, "duplicate")
        else:
            seen.add(item.key)
            usable.append(item)
    writer = BucketWriter(out_dir, shard_size)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        jobs = ((item, spec) for item in usable)
        if pool is None:  # one video at a time, its clips streamed to the shards
            results = ((video_clips(item, spec, summary), None) for item, spec in jobs)
        else:
            results = pool.imap(_cut_video, jobs)
        for clips, part in tqdm(
            results, total=len(usable), desc="ingest", unit="video", disable=not progress
        ):
            for bucket, sample in clips:
                writer.write(bucket, sample)
                summary.written += 1
            if part is not None:
                summary.merge(part)
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
    info = {
        "source": "ingest",
        "fps": spec.fps,
        "frames": list(spec.frames),
        "sizes": [list(s) for s in spec.sizes],
        "clip_stride": spec.clip_stride,
        "max_clips": spec.max_clips,
        "videos": summary.videos,
    }
    summary.manifest = writer.close(info, summary.skipped)
    return summary
