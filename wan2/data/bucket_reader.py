"""Reading a bucketed shard folder (``make_shards.py --buckets``): batches from one bucket each, every clip once.

The folder's tar shards are indexed once (member offsets from the tar headers), so any clip can be read on its
own. ``BucketBatches`` deals each epoch's batch plan (``wan2.data.buckets.plan_batches``, seeded by seed and
epoch) to ranks, then to the DataLoader workers of a rank, and reads only its own batches: the order is fixed by
(seed, epoch) and each clip is in exactly one batch of one (rank, worker) at any world size and worker count.
The items of a bucket come from the shards (decoded videos) or from that bucket's latent cache.
"""

from __future__ import annotations

import multiprocessing
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import IterableDataset
from webdataset.utils import pytorch_worker_info

from wan2.data.buckets import Bucket, plan_batches, read_bucket_manifest, worker_batches
from wan2.data.datasets import collate_videos
from wan2.data.shards import BadSample, BadSampleCounter, SampleSpec, decode_sample


@dataclass(frozen=True)
class Entry:
    """One sample of a shard: its key and, per member extension, (offset, size) of the bytes in the tar."""

    shard: str
    key: str
    members: tuple[tuple[str, int, int], ...]


def index_shard(path: str, counter: BadSampleCounter | None = None) -> list[Entry]:
    """The samples of one tar shard in file order, from the tar headers (data is skipped, not read). A damaged
    tar keeps the samples before the damage and counts one ``tar_error``."""
    groups: OrderedDict[str, list] = OrderedDict()
    try:
        with tarfile.open(path, "r:") as tf:
            for ti in tf:
                if not ti.isfile():
                    continue
                base = os.path.basename(ti.name)
                key, _, ext = base.partition(".")
                groups.setdefault(key, []).append((ext, ti.offset_data, ti.size))
    except (OSError, tarfile.TarError, EOFError) as err:
        if counter is None:
            raise
        counter.add("tar_error", os.path.basename(path), f"{type(err).__name__}: {err}")
    return [Entry(path, k, tuple(m)) for k, m in groups.items()]


class _Files:
    """A few open shard files per process, read with ``os.pread`` (no shared file offset: a descriptor a
    DataLoader worker inherits by fork cannot be moved under another process's read)."""

    def __init__(self, keep: int = 8):
        self.keep, self.fds, self.pid = keep, OrderedDict(), os.getpid()

    def read(self, path: str, offset: int, size: int) -> bytes:
        if self.pid != os.getpid():  # a forked worker: open its own
            self.fds, self.pid = OrderedDict(), os.getpid()
        fd = self.fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
        self.fds[path] = fd
        while len(self.fds) > self.keep:
            os.close(self.fds.popitem(last=False)[1])
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{path}: {len(data)} of {size} bytes at {offset} (the shard was cut short)")
        return data

    def __getstate__(self):  # a spawned worker opens its own
        return {"keep": self.keep, "fds": OrderedDict(), "pid": -1}


class TarBucket:
    """The clips of one bucket read from its shards: ``load(i)`` -> ``{"video", "caption", "meta", "key"}``."""

    def __init__(self, name: str, entries: list[Entry]):
        b = Bucket.parse(name)
        self.name, self.entries = name, entries
        self.spec = SampleSpec(b.frames, b.height, b.width)
        self.files = _Files()

    def __len__(self) -> int:
        return len(self.entries)

    def raw(self, i: int) -> dict:
        e = self.entries[i]
        sample = {"__key__": e.key}
        for ext, offset, size in e.members:
            sample[ext] = self.files.read(e.shard, offset, size)
        return sample

    def load(self, i: int) -> dict:
        """Raises ``BadSample`` for an unusable clip (``tar_error`` when its shard cannot be read)."""
        try:
            raw = self.raw(i)
        except OSError as err:
            raise BadSample("tar_error", f"{type(err).__name__}: {err}") from err
        return decode_sample(raw, self.spec)


class CachedBucket:
    """The clips of one bucket from its latent cache (``LatentCacheDataset``); ``index`` is global (offset)."""

    def __init__(self, dataset, offset: int = 0):
        self.dataset, self.offset = dataset, offset

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, i: int) -> dict:
        item = dict(self.dataset[i])
        item["index"] = torch.tensor(self.offset + i, dtype=torch.long)
        return item


def index_folder(folder, counter: BadSampleCounter | None = None) -> dict[str, TarBucket]:
    """Bucket name -> ``TarBucket`` of a bucketed shard folder (its manifest checked)."""
    manifest = read_bucket_manifest(folder)
    out = {}
    for name in sorted(manifest["shards"]):
        entries = [e for f in manifest["shards"][name] for e in index_shard(str(Path(folder) / f), counter)]
        if entries:
            out[name] = TarBucket(name, entries)
    return out


def bucket_cache_info(folder, name: str) -> dict:
    """What identifies one bucket's data for its latent cache: the folder, the bucket, its shards' sizes and
    modification times."""
    manifest = read_bucket_manifest(folder)
    files = []
    for f in manifest["shards"].get(name, []):
        st = (Path(folder) / f).stat()
        files.append([f, st.st_size, int(st.st_mtime)])
    return {"source": "buckets", "folder": os.path.abspath(folder), "bucket": name, "files": files}


class BucketSamples(IterableDataset):
    """Every good clip of one bucket in shard order (bad ones skipped and counted): what a latent cache encodes."""

    def __init__(self, bucket: TarBucket, counter: BadSampleCounter | None = None):
        self.bucket, self.counter = bucket, counter or BadSampleCounter(name=bucket.name)

    def __iter__(self):
        for i in range(len(self.bucket)):
            try:
                item = self.bucket.load(i)
            except BadSample as err:
                self.counter.add(err.kind, self.bucket.entries[i].key, err.detail)
                continue
            self.counter.note_seen()
            yield item


class BucketBatches(IterableDataset):
    """Collated batches of one (rank, worker), each from one bucket, from ``sources`` (name -> bucket source).

    ``set_epoch`` (shared with the DataLoader workers) picks the plan; ``skip`` leaves out the rank's first
    batches of the next pass (a resumed epoch). A bad clip is dropped from its batch (counted in ``counter``); a
    batch with no good clip is left out. ``len`` is the number of batches per rank.
    """

    def __init__(
        self,
        sources: dict,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        counter: BadSampleCounter | None = None,
        collate_fn=collate_videos,
    ):
        if (rank is None) != (world_size is None):
            raise ValueError("BucketBatches: give both rank and world_size, or neither")
        self.sources, self.batch_size, self.seed = sources, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.counter = counter or BadSampleCounter(name="train")
        self.collate_fn = collate_fn
        self.counts = {name: len(src) for name, src in sources.items()}
        self._state = multiprocessing.Array(
            "q", 2
        )  # [epoch, batches to skip]: set in the parent, read in workers
        world = world_size or pytorch_worker_info()[1]
        self._len = len(plan_batches(self.counts, batch_size, seed, 0, world)) // world

    def set_epoch(self, epoch: int) -> None:
        self._state[0] = epoch

    def set_skip(self, batches: int) -> None:
        self._state[1] = batches

    def __len__(self) -> int:
        return self._len

    def _load(self, name: str, i: int):
        src = self.sources[name]
        try:
            item = src.load(i)
        except BadSample as err:
            key = src.entries[i].key if hasattr(src, "entries") else f"{name}/{i}"
            self.counter.add(err.kind, key, err.detail)
            self.counter.check()
            return None
        self.counter.note_seen()
        return item

    def __iter__(self):
        rank, world, worker, workers = pytorch_worker_info()
        if self.world_size is not None:
            rank, world = self.rank, self.world_size
        epoch, skip = int(self._state[0]), int(self._state[1])
        batches = plan_batches(self.counts, self.batch_size, self.seed, epoch, world)[rank::world][skip:]
        for batch in worker_batches(batches, 0, 1, worker, workers):
            items = [x for x in (self._load(name, i) for name, i in batch) if x is not None]
            if items:
                yield self.collate_fn(items)


def cached_sources(caches: dict[str, object]) -> dict[str, CachedBucket]:
    """Bucket name -> ``CachedBucket`` with global indices (buckets in name order)."""
    out, offset = {}, 0
    for name in sorted(caches):
        out[name] = CachedBucket(caches[name], offset)
        offset += len(caches[name])
    return out
