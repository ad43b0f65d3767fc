"""WebDataset tar shards of short videos: writing (atomic) and reading (split, shuffled, checked).

A sample is tar members sharing a key: ``<key>.mp4`` (H.264, see ``wan2.data.video``), ``<key>.txt`` (the
caption, UTF-8), ``<key>.json`` (metadata) and ``<key>.sha256`` (hex SHA-256 of the mp4 bytes; optional when
reading). Readers decode it to ``{"video": float (C, F, H, W) in [-1, 1], "caption": str, "meta": dict,
"key": str}``. Bad samples are skipped and counted by kind in a ``BadSampleCounter``; too many of them stop
the run with ``DataQualityError``.

The checksum is what catches damaged bytes inside the video stream: H.264 decoders often conceal such damage
and return frames of the right size, which no shape check can tell from a good clip.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import multiprocessing
import os
import random
import re
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice

import numpy as np
import webdataset as wds
from webdataset.shardlists import expand_urls
from webdataset.utils import PipelineStage, pytorch_worker_info

from wan2.data.video import VideoDecodeError, decode_mp4, encode_mp4, frames_to_tensor

log = logging.getLogger(__name__)

# Kinds of bad samples, in the order the counter stores them.
BAD_KINDS = (
    "empty",  # zero-byte mp4
    "truncated",  # mp4 boxes run past the end of the data
    "corrupt",  # mp4 bytes differ from the .sha256 written with them
    "undecodable",  # not a video, or the decoder fails
    "wrong_frames",  # frame count differs from num_frames
    "wrong_size",  # (H, W) differs from (height, width)
    "no_caption",  # missing or blank .txt
    "no_video",  # sample without an .mp4 member
    "bad_meta",  # .json present but not a JSON object
    "tar_error",  # unreadable shard or tar member (one count per error, however many samples it lost)
)

MANIFEST_SUFFIX = "-manifest.json"


class DataQualityError(RuntimeError):
    """Too large a fraction of the samples seen were bad."""


class BadSample(ValueError):
    """One sample is unusable; ``kind`` is one of ``BAD_KINDS``."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.detail = message


# ----------------------------------------------------------------------------- counting bad samples


class BadSampleCounter:
    """Counts samples seen and bad samples per kind, shared by the DataLoader workers of one process.

    The counts live in shared memory created in the parent process, so DataLoader workers started from it
    add to the same numbers and the parent reads them. ``check`` applies the stop rule.
    """

    def __init__(self, max_bad_fraction: float = 0.05, min_seen: int = 200, name: str = "data"):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction: {max_bad_fraction} is outside [0, 1]")
        self.max_bad_fraction = max_bad_fraction
        self.min_seen = min_seen
        self.name = name
        self._counts = multiprocessing.Array("q", 1 + len(BAD_KINDS))  # [seen, bad per kind...]
        self._logged: dict[str, int] = {}

    @property
    def seen(self) -> int:
        return int(self._counts[0])

    @property
    def bad(self) -> int:
        return int(sum(self._counts[1:]))

    def counts(self) -> dict[str, int]:
        """Bad samples per kind (kinds with zero included)."""
        with self._counts.get_lock():
            return {k: int(v) for k, v in zip(BAD_KINDS, self._counts[1:])}

    def summary(self) -> dict:
        """``{"seen": n, "bad": m, "fraction": m / n, <kind>: count, ...}``; handy for logging."""
        counts = self.counts()
        seen, bad = self.seen, sum(counts.values())
        return {"seen": seen, "bad": bad, "fraction": bad / seen if seen else 0.0, **counts}

    def note_seen(self, n: int = 1) -> None:
        with self._counts.get_lock():
            self._counts[0] += n

    def add(self, kind: str, key: str = "", message: str = "") -> None:
        """Count one bad sample (also counts it as seen) and log the first few of each kind."""
        if kind not in BAD_KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {BAD_KINDS}")
        with self._counts.get_lock():
            self._counts[0] += 1
            self._counts[1 + BAD_KINDS.index(kind)] += 1
        n = self._logged.get(kind, 0) + 1
        self._logged[kind] = n
        if n <= 5:
            log.warning(
                "%s: skipped bad sample %s (%s)%s",
                self.name,
                key or "?",
                kind,
                f": {message}" if message else "",
            )

    def check(self) -> None:
        """Raise ``DataQualityError`` when more than ``max_bad_fraction`` of at least ``min_seen`` samples are bad."""
        seen, counts = self.seen, self.counts()
        bad = sum(counts.values())
        if seen >= max(1, self.min_seen) and bad > self.max_bad_fraction * seen:
            kinds = ", ".join(f"{k}={v}" for k, v in counts.items() if v)
            raise DataQualityError(
                f"{self.name}: {bad}/{seen} samples bad ({bad / seen:.1%} > max_bad_fraction "
                f"{self.max_bad_fraction:.1%}): {kinds}"
            )

    def tar_handler(self, exn: BaseException) -> bool:
        """WebDataset ``handler`` for shard/tar errors: count as ``tar_error``, warn, continue (no sleep)."""
        self.add("tar_error", message=_one_line(exn))
        warnings.warn(f"{self.name}: tar error skipped: {_one_line(exn)}", stacklevel=2)
        return True


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


# ----------------------------------------------------------------------------- checking and decoding one sample


@dataclass(frozen=True)
class SampleSpec:
    """What a good sample must look like."""

    num_frames: int
    height: int
    width: int


def mp4_damage(data: bytes) -> str | None:
    """Look at the top-level mp4 boxes: ``"truncated"``, ``"undecodable"`` (not an mp4 layout) or None."""
    pos, n = 0, len(data)
    if n < 8 or data[4:8] != b"ftyp":
        return "undecodable"
    while pos + 8 <= n:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if not re.fullmatch(rb"[a-zA-Z0-9 ]{4}", kind):
            return "undecodable"
        if size == 1:  # 64-bit size follows the type
            if pos + 16 > n:
                return "truncated"
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:  # box runs to the end of the file
            return None
        if size < 8:
            return "undecodable"
        pos += size
    return "truncated" if pos != n else None


def decode_sample(sample: dict, spec: SampleSpec) -> dict:
    """Raw tar sample -> ``{"video", "caption", "meta", "key"}``; raises ``BadSample`` for unusable ones."""
    key = sample.get("__key__", "?")
    raw_caption = sample.get("txt")
    caption = raw_caption.decode("utf-8", errors="replace").strip() if raw_caption is not None else ""
    if not caption:
        raise BadSample("no_caption", "missing .txt" if raw_caption is None else "blank caption")
    meta: dict = {}
    if sample.get("json") is not None:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as err:
            raise BadSample("bad_meta", _one_line(err)) from err
        if not isinstance(meta, dict):
            raise BadSample("bad_meta", f"expected a JSON object, got {type(meta).__name__}")
    data = sample.get("mp4")
    if data is None:
        raise BadSample(
            "no_video", f"no .mp4 member (has {sorted(k for k in sample if not k.startswith('__'))})"
        )
    if len(data) == 0:
        raise BadSample("empty", "zero-byte mp4")
    damage = mp4_damage(data)
    if damage == "truncated":
        raise BadSample("truncated", f"mp4 boxes run past the end of {len(data)} bytes")
    expected = sample.get("sha256")
    if expected is not None:
        expected = expected.decode("ascii", errors="replace").strip().lower()
        if hashlib.sha256(data).hexdigest() != expected:
            raise BadSample("corrupt", f"sha256 of the {len(data)} mp4 bytes differs from {expected[:12]}...")
    try:
        frames = decode_mp4(data)  # (F, H, W, 3) uint8
    except VideoDecodeError as err:
        raise BadSample("undecodable", str(err)) from err
    f, h, w, _ = frames.shape
    if f != spec.num_frames:
        raise BadSample("wrong_frames", f"{f} frames, expected {spec.num_frames}")
    if (h, w) != (spec.height, spec.width):
        raise BadSample("wrong_size", f"{h}x{w}, expected {spec.height}x{spec.width}")
    return {"video": frames_to_tensor(frames), "caption": caption, "meta": meta, "key": key}


def decode_and_check(src: Iterable[dict], spec: SampleSpec, counter: BadSampleCounter) -> Iterator[dict]:
    """Decode each raw sample, skip and count bad ones, apply the stop rule."""
    good = bad = 0
    for sample in src:
        try:
            out = decode_sample(sample, spec)
        except BadSample as err:
            bad += 1
            counter.add(err.kind, sample.get("__key__", ""), err.detail)
            counter.check()
            continue
        counter.note_seen()
        counter.check()
        good += 1
        yield out
    if good == 0 and bad > 0:
        kinds = ", ".join(f"{k}={v}" for k, v in counter.counts().items() if v)
        raise DataQualityError(f"{counter.name}: all {bad} samples of this worker's shards are bad: {kinds}")


class DecodeStage(PipelineStage):
    """Pipeline stage running ``decode_and_check`` (a class, not a lambda, so that it pickles)."""

    def __init__(self, spec: SampleSpec, counter: BadSampleCounter):
        self.spec = spec
        self.counter = counter

    def run(self, src):
        return decode_and_check(src, self.spec, self.counter)


class SeededShuffle(PipelineStage):
    """Buffer shuffle seeded by (seed, pass, rank, worker); the pass number advances on each run."""

    def __init__(self, bufsize: int, seed: int = 0):
        self.bufsize = bufsize
        self.seed = seed
        self.epoch = -1

    def run(self, src):
        self.epoch += 1
        rank, _, worker, _ = pytorch_worker_info()
        rng = random.Random(f"{self.seed}/{self.epoch}/{rank}/{worker}")
        return _buffer_shuffle(src, self.bufsize, rng)


def _buffer_shuffle(src: Iterable, bufsize: int, rng: random.Random) -> Iterator:
    """Fill a buffer of ``bufsize`` items, then yield a random one for each new item; shuffle the rest."""
    buf: list = []
    for sample in src:
        if len(buf) < bufsize:
            buf.append(sample)
            continue
        i = rng.randrange(bufsize)
        buf[i], sample = sample, buf[i]
        yield sample
    rng.shuffle(buf)
    yield from buf


# ----------------------------------------------------------------------------- reading


def expand_shards(spec: str | Iterable[str]) -> str | list[str]:
    """Expand local globs (``dir/*.tar``); one brace pattern, ``::`` list or ``pipe:`` URL passes to webdataset.

    In a list, every item is expanded here (globs, braces, ``::``), since webdataset expands only a string:
    ``["pipe:aws s3 cp s3://b/a-{000..009}.tar -", "dir/*.tar"]`` becomes one URL per shard.
    """
    if isinstance(spec, (str, os.PathLike)):
        spec = os.fspath(spec)
        if not spec.startswith("pipe:") and "://" not in spec and any(c in spec for c in "*?["):
            paths = sorted(glob.glob(spec))
            if not paths:
                raise FileNotFoundError(f"shards: no file matches {spec!r}")
            return paths
        return spec
    out: list[str] = []
    for s in spec:
        e = expand_shards(s)
        out.extend(expand_urls(e) if isinstance(e, str) else e)
    return out


class SplitByNode:
    """Shard splitter for a fixed (rank, world_size): rank r reads shards r, r + world_size, ...

    webdataset's ``split_by_node`` looks the rank up where the shards are listed, in each DataLoader worker:
    ``RANK``/``WORLD_SIZE`` or an initialized torch.distributed. Under ``srun`` Lightning sets neither variable,
    and a worker started by spawn or forkserver (not fork) has no process group, so every rank would read every
    shard. The DataModule passes the trainer's rank instead. A class, not a closure, so that it pickles.
    """

    def __init__(self, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size

    def __call__(self, src: Iterable) -> Iterator:
        return islice(src, self.rank, None, self.world_size)


def shard_dataset(
    shards: str | Iterable[str],
    *,
    num_frames: int,
    height: int,
    width: int,
    shuffle_buffer: int = 0,
    seed: int = 0,
    counter: BadSampleCounter | None = None,
    max_bad_fraction: float = 0.05,
    min_seen: int = 200,
    shard_shuffle: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> wds.WebDataset:
    """WebDataset of decoded, checked samples, split by node (rank) and by DataLoader worker.

    Shards are split first by rank, then by worker, so each shard is read by one (rank, worker) per pass;
    the shard list is cut before it is shuffled, so the parts never overlap. ``rank``/``world_size`` fix the
    rank (``SplitByNode``); without them it is read in each worker from ``RANK``/``WORLD_SIZE`` or
    torch.distributed. ``pipe:`` URLs (``pipe:aws s3 cp s3://b/train-{000000..000099}.tar -``) are opened as
    shell commands that write the tar to stdout. With ``shuffle_buffer > 0`` the shard order and the samples
    are shuffled, seeded by (seed, pass, rank, worker).
    """
    counter = counter or BadSampleCounter(max_bad_fraction, min_seen)
    shard_shuffle = shuffle_buffer > 0 if shard_shuffle is None else shard_shuffle
    if (rank is None) != (world_size is None):
        raise ValueError("shard_dataset: give both rank and world_size, or neither")
    ds = wds.WebDataset(
        expand_shards(shards),
        handler=counter.tar_handler,
        nodesplitter=wds.split_by_node if world_size is None else SplitByNode(rank, world_size),
        workersplitter=wds.split_by_worker,
        shardshuffle=1000 if shard_shuffle else False,
        detshuffle=True,
        seed=seed,
        empty_check=False,
    )
    if shuffle_buffer > 0:
        ds = ds.compose(SeededShuffle(shuffle_buffer, seed=seed))
    ds = ds.compose(DecodeStage(SampleSpec(num_frames, height, width), counter))
    ds.counter = counter
    return ds


# ----------------------------------------------------------------------------- writing


def make_sample(key: str, frames: np.ndarray, caption: str, meta: dict, fps: float) -> dict:
    """A tar sample (all values bytes) from uint8 frames (F, H, W, 3); ``key`` must not contain dots."""
    if "." in key or "/" in key or not key:
        raise ValueError(f"key: {key!r} must be non-empty without '.' or '/'")
    mp4 = encode_mp4(frames, fps)
    return {
        "__key__": key,
        "mp4": mp4,
        "txt": caption.encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
        "sha256": hashlib.sha256(mp4).hexdigest().encode("ascii"),
    }


def brace_pattern(out_dir: str | os.PathLike, prefix: str, num_shards: int) -> str:
    """``dir/prefix-{000000..000009}.tar`` for ``num_shards`` shards."""
    last = max(num_shards - 1, 0)
    return os.path.join(os.fspath(out_dir), f"{prefix}-{{{0:06d}..{last:06d}}}.tar")


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_shards(
    samples: Iterable[dict],
    out_dir: str | os.PathLike,
    prefix: str = "shard",
    shard_size: int = 1000,
    info: dict | None = None,
) -> dict:
    """Write samples (from ``make_sample``) to ``out_dir/prefix-NNNNNN.tar``; returns the manifest.

    Each shard is written as ``*.tar.tmp`` and renamed when complete, so a killed run never leaves a half
    shard under a final name. Stale ``prefix-NNNNNN.tar`` shards from an earlier, larger run are removed,
    and ``prefix-manifest.json`` (shards, sample count, ``info``) is written last as the completion mark.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size: {shard_size} is below 1")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, prefix + MANIFEST_SUFFIX)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # the set is being rewritten: not complete until the new manifest lands
    done: list[str] = []

    def finish(tmp_name: str) -> None:
        final = tmp_name[: -len(".tmp")]
        os.replace(tmp_name, final)
        done.append(final)

    pattern = os.path.join(out_dir, f"{prefix}-%06d.tar.tmp")
    writer = wds.ShardWriter(pattern, maxcount=shard_size, post=finish, verbose=0, mtime=0.0)
    count = 0
    try:
        for sample in samples:
            writer.write(sample)
            count += 1
    except BaseException:
        writer.post = None  # do not promote the partial shard
        tmp = writer.fname
        writer.close()
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        raise
    writer.close()
    if count == 0 and done:  # ShardWriter opens a first shard up front; drop it when nothing was written
        os.remove(done.pop())
    keep = {os.path.basename(p) for p in done}
    for name in os.listdir(out_dir):
        if re.fullmatch(rf"{re.escape(prefix)}-\d{{6}}\.tar(\.tmp)?", name) and name not in keep:
            os.remove(os.path.join(out_dir, name))
    manifest = {
        "prefix": prefix,
        "num_samples": count,
        "num_shards": len(done),
        "shard_size": shard_size,
        "shards": sorted(os.path.basename(p) for p in done),
        "pattern": brace_pattern(out_dir, prefix, len(done)),
        "info": info or {},
    }
    _atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(out_dir: str | os.PathLike, prefix: str) -> dict | None:
    """The manifest of a complete shard set whose shards all exist, else None."""
    path = os.path.join(os.fspath(out_dir), prefix + MANIFEST_SUFFIX)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not all(os.path.exists(os.path.join(os.fspath(out_dir), s)) for s in manifest.get("shards", [])):
        return None
    return manifest


def rankjump_samples(cfg, split: str, num: int) -> Iterator[dict]:
    """Tar samples of the first ``num`` clips of ``RankJump(cfg, split)``; keys ``<split>-NNNNNNNN``."""
    from wan2.data.rankjump import RankJump

    ds = RankJump(cfg, split, num)
    for i in range(num):
        clip = ds[i]
        yield make_sample(f"{split}-{i:08d}", clip.frames, clip.caption, clip.meta, cfg.fps)


def write_rankjump_shards(
    out_dir, split: str, num: int, cfg, shard_size: int = 1000, progress: bool = False
) -> dict:
    """Generate ``num`` RankJump clips of ``split`` into shards ``out_dir/<split>-NNNNNN.tar``."""
    from dataclasses import asdict

    from tqdm import tqdm

    samples = tqdm(
        rankjump_samples(cfg, split, num), total=num, disable=not progress, desc=f"rankjump {split}"
    )
    info = {"source": "rankjump", "split": split, "num": num, "config": asdict(cfg)}
    return write_shards(samples, out_dir, prefix=split, shard_size=shard_size, info=info)


def rankjump_shards(out_dir: str | os.PathLike, split: str, num: int, cfg, shard_size: int = 100) -> str:
    """Shards of the first ``num`` RankJump clips of ``split``; generated unless a matching set exists.

    Returns the brace pattern of the shards (``out_dir/<split>-{000000..NNNNNN}.tar``).
    """
    wanted = json.loads(json.dumps({"source": "rankjump", "split": split, "num": num, "config": asdict(cfg)}))
    manifest = read_manifest(out_dir, split)
    if manifest is None or manifest.get("info") != wanted or manifest.get("shard_size") != shard_size:
        manifest = write_rankjump_shards(out_dir, split, num, cfg, shard_size=shard_size)
    return brace_pattern(out_dir, split, manifest["num_shards"])
