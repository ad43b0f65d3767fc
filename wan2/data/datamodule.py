"""Lightning DataModule over WebDataset video shards, plus RankJump shards on demand for tests and demos."""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict

import lightning as L
import torch
from torch.utils.data import DataLoader
from webdataset.shardlists import expand_urls
from webdataset.utils import pytorch_worker_info

from wan2.data.shards import (
    BadSampleCounter,
    brace_pattern,
    expand_shards,
    read_manifest,
    shard_dataset,
    write_rankjump_shards,
)


def collate_videos(samples: list[dict]) -> dict:
    """Stack videos, keep captions, metadata and keys as lists."""
    return {
        "video": torch.stack([s["video"] for s in samples]),  # (B, C, F, H, W)
        "caption": [s["caption"] for s in samples],
        "meta": [s["meta"] for s in samples],
        "key": [s["key"] for s in samples],
    }


def _identity(batch):
    return batch


class VideoDataModule(L.LightningDataModule):
    """Batches ``{"video": (B, C, F, H, W) in [-1, 1], "caption": [str], "meta": [dict], "key": [str]}``.

    Shards are split by rank then by worker; batching happens inside the workers. ``epoch_size`` (samples
    per epoch over all ranks) turns the shards into an endless, reshuffled stream cut into epochs of that
    size (``with_epoch``); without it an epoch is one pass over the shards. Workers are persistent so that
    each epoch reshuffles. Bad samples are skipped and counted: see ``bad_counts``.
    """

    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | list[str] | None = None,
        batch_size: int = 4,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        seed: int = 0,
        num_frames: int = 17,
        height: int = 32,
        width: int = 32,
        max_bad_fraction: float = 0.05,
        min_seen: int = 200,
        epoch_size: int | None = None,
        val_batch_size: int | None = None,
        pin_memory: bool = False,
    ):
        super().__init__()
        if (num_frames - 1) % 4 != 0 or num_frames < 1:
            raise ValueError(f"num_frames: {num_frames} is not 4k+1 (5, 9, 13, 17, ...)")
        if batch_size < 1:
            raise ValueError(f"batch_size: {batch_size} is below 1")
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.num_frames, self.height, self.width = num_frames, height, width
        self.max_bad_fraction = max_bad_fraction
        self.min_seen = min_seen
        self.epoch_size = epoch_size
        self.pin_memory = pin_memory
        self.counters: dict[str, BadSampleCounter] = {}

    def _world_size(self) -> int:
        if self.trainer is not None:
            return self.trainer.world_size
        return pytorch_worker_info()[1]

    def _dataset(self, split: str, shards, shuffle_buffer: int):
        readers = self._world_size() * max(1, self.num_workers)
        urls = expand_shards(shards)
        num_shards = len(expand_urls(urls) if isinstance(urls, str) else urls)
        if num_shards < readers:
            warnings.warn(
                f"{split}: {num_shards} shards for {readers} readers (ranks x workers): some read nothing; "
                "write smaller shards",
                stacklevel=2,
            )
        counter = BadSampleCounter(self.max_bad_fraction, self.min_seen, name=split)
        self.counters[split] = counter
        return shard_dataset(
            shards,
            num_frames=self.num_frames,
            height=self.height,
            width=self.width,
            shuffle_buffer=shuffle_buffer,
            seed=self.seed,
            counter=counter,
        )

    def _loader(self, ds) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=None,  # batched in the pipeline
            collate_fn=_identity,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self._dataset("train", self.train_shards, self.shuffle_buffer)
        if self.epoch_size:
            workers = max(1, self.num_workers)
            per_worker = max(1, math.ceil(self.epoch_size / (self._world_size() * workers * self.batch_size)))
            ds = ds.batched(self.batch_size, collation_fn=collate_videos, partial=False)
            ds = ds.with_epoch(per_worker).with_length(per_worker * workers, silent=True)
        else:
            ds = ds.batched(self.batch_size, collation_fn=collate_videos, partial=True)
        return self._loader(ds)

    def val_dataloader(self):
        if not self.val_shards:
            return []
        ds = self._dataset("val", self.val_shards, 0)
        return self._loader(ds.batched(self.val_batch_size, collation_fn=collate_videos, partial=True))

    def bad_counts(self) -> dict[str, dict]:
        """Per split: samples seen, bad, bad fraction and bad count per kind (this process and its workers)."""
        return {split: counter.summary() for split, counter in self.counters.items()}


class BadSampleLogger(L.Callback):
    """Log the DataModule's bad-sample counts as ``data/<split>_<name>`` metrics at each epoch end."""

    def _log(self, trainer, pl_module, split: str) -> None:
        dm = trainer.datamodule
        if not isinstance(dm, VideoDataModule) or split not in dm.counters:
            return
        stats = dm.counters[split].summary()
        metrics = {
            f"data/{split}_{k}": float(v) for k, v in stats.items() if k in ("seen", "bad", "fraction") or v
        }
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "val")


def rankjump_shards(out_dir: str | os.PathLike, split: str, num: int, cfg, shard_size: int = 100) -> str:
    """Shards of the first ``num`` RankJump clips of ``split``; generated unless a matching set exists.

    Returns the brace pattern of the shards (``out_dir/<split>-{000000..NNNNNN}.tar``).
    """
    wanted = json.loads(json.dumps({"source": "rankjump", "split": split, "num": num, "config": asdict(cfg)}))
    manifest = read_manifest(out_dir, split)
    if manifest is None or manifest.get("info") != wanted or manifest.get("shard_size") != shard_size:
        manifest = write_rankjump_shards(out_dir, split, num, cfg, shard_size=shard_size)
    return brace_pattern(out_dir, split, manifest["num_shards"])
