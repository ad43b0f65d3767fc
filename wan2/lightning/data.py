"""LightningDataModules the configs instantiate: RankJump generated on the fly, WebDataset video shards, or a
latent cache; and ``BadSampleLogger``, which logs the shard reader's bad-sample counts.

Every Lightning class of the data path lives here, so that ``wan2.data`` imports no Lightning.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from webdataset.shardlists import expand_urls
from webdataset.utils import pytorch_worker_info

from wan2.compat import batches_done_this_epoch
from wan2.data.buckets import is_bucket_folder
from wan2.data.config import LatentDataConfig, RankJumpDataConfig, ShardDataConfig
from wan2.data.datasets import RankJumpVideoDataset, collate, collate_videos
from wan2.data.shards import BadSampleCounter, expand_shards, shard_dataset


class EpochShuffle(RandomSampler):
    """Shuffle seeded by (seed, epoch) via Lightning's ``set_epoch``: the data order survives a resume.

    Under DDP Lightning replaces it with ``DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED)``, whose
    ``randperm`` seeded by seed + epoch is this same permutation; rank r takes its entries r, r + world, ...
    So one step's batches over all ranks are the 1-process batch (tests/test_distributed.py checks both).
    """

    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


class SkippingBatchSampler(BatchSampler):
    """A BatchSampler that leaves out the first ``skip`` batches of its next pass (then forgets ``skip``)."""

    skip = 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position inside an epoch is saved in Lightning checkpoints.

    Lightning stores ``state_dict()`` of every loader that has one and hands it back on resume; the state is
    the number of batches already trained this epoch (``progress()``), and the resumed pass skips them by
    index, without loading their data. With the (seed, epoch) shuffle this restores the exact data position.
    """

    def __init__(self, *args, progress=None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, SkippingBatchSampler):
            raise TypeError("ResumableDataLoader needs batch_sampler=SkippingBatchSampler(...)")
        self.progress = progress

    def state_dict(self) -> dict:
        return {"batches_done": int(self.progress()) if self.progress is not None else 0}

    def load_state_dict(self, state: dict) -> None:
        done = int(state.get("batches_done", 0))
        self.batch_sampler.skip = done if done < len(self.batch_sampler) else 0


class RankJumpDataModule(L.LightningDataModule):
    """RankJump clips rendered on the fly (no files): deterministic by (split, index), any world size.

    Settings: ``RankJumpDataConfig`` (``wan2/data/config.py``), from ``cfg`` and/or keyword arguments."""

    Config = RankJumpDataConfig  # every setting, its default and its check

    def __init__(self, cfg: RankJumpDataConfig | None = None, **settings):
        super().__init__()
        rj = settings.get("rankjump")
        if dataclasses.is_dataclass(rj):  # a RankJumpConfig instance: its fields
            settings["rankjump"] = dataclasses.asdict(rj)
        self.cfg = self.Config.build(cfg, settings)
        self.save_hyperparameters(self.cfg.to_dict(), logger=False)  # wan2.tasks logs the whole config once
        self.rj_cfg = self.cfg.rankjump.plain()

    @property
    def geometry(self):
        return self.rj_cfg.geometry

    def setup(self, stage: str | None = None) -> None:
        self.train_set = RankJumpVideoDataset(self.rj_cfg, "train", self.hparams.num_train)
        self.val_set = RankJumpVideoDataset(self.rj_cfg, self.hparams.val_split, self.hparams.num_val)

    def train_dataloader(self):
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # seed_everything's seed, as Lightning's DDP sampler
        batches = SkippingBatchSampler(
            EpochShuffle(self.train_set, seed), self.hparams.batch_size, drop_last=True
        )
        return ResumableDataLoader(
            self.train_set,
            batch_sampler=batches,
            collate_fn=collate,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            progress=self._batches_done,
        )

    def _batches_done(self) -> int:
        """Training batches finished in the current epoch (Lightning's progress counter)."""
        return batches_done_this_epoch(self.trainer)

    def val_dataloader(self):
        return DataLoader(
            self.val_set, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=collate, num_workers=0
        )


class LatentDataModule(RankJumpDataModule):
    """RankJump encoded once into a latent cache (``wan2.data.cache``); training steps read latents only.

    Validation yields rendered held-out clips (video + metadata) so objectives can sample from their captions
    and judge the motion with the reader.
    """

    Config = LatentDataConfig

    def __init__(self, cfg: LatentDataConfig | None = None, **settings):
        super().__init__(cfg, **settings)
        self.backbone = None

    def bind_backbone(self, backbone) -> None:
        """The cache is keyed by (and built with) this backbone's VAE / text encoder."""
        self.backbone = backbone

    def cache_path(self):
        import hashlib
        import json
        from dataclasses import asdict
        from pathlib import Path

        from wan2.data.cache import module_fingerprint

        rj = asdict(self.rj_cfg)
        if rj["window_mix"] == 0:  # no windowed clips: the key (and the cache) of the data before windows
            del rj["window_mix"], rj["max_rank"]
        key = json.dumps({"rj": rj, "n": self.hparams.num_train}, sort_keys=True)
        data_key = hashlib.sha256(key.encode()).hexdigest()[:12]
        return (
            Path(self.hparams.cache_dir)
            / f"rankjump-train-{data_key}-vae{module_fingerprint(self.backbone.vae)}"
        )

    def prepare_data(self) -> None:
        from wan2.data.cache import build_latent_cache, cache_mismatch

        if self.backbone is None:
            raise RuntimeError("LatentDataModule needs bind_backbone(backbone) before use")
        path = self.cache_path()
        # (re)build when missing or unusable, e.g. text embeddings wanted but a latents-only cache is there
        if cache_mismatch(path, self.backbone, with_text=self.hparams.cache_text) is not None:
            ds = RankJumpVideoDataset(self.rj_cfg, "train", self.hparams.num_train)
            build_latent_cache(self.backbone, ds, path, with_text=self.hparams.cache_text)

    def setup(self, stage: str | None = None) -> None:
        from wan2.data.cache import LatentCacheDataset

        self.train_set = LatentCacheDataset(
            self.cache_path(), self.backbone, with_text=self.hparams.cache_text
        )
        self.val_set = RankJumpVideoDataset(self.rj_cfg, self.hparams.val_split, self.hparams.num_val)

    def val_dataloader(self):
        return DataLoader(
            self.val_set,
            batch_size=self.hparams.val_batch_size,
            shuffle=False,
            collate_fn=collate,
            num_workers=0,
        )


def _identity(batch):
    return batch


class VideoDataModule(L.LightningDataModule):
    """Batches ``{"video": (B, C, F, H, W) in [-1, 1], "caption": [str], "meta": [dict], "key": [str]}``.

    Shards (paths, globs, brace patterns, lists of them, ``pipe:`` URLs) are split by the trainer's rank, then
    by worker, with no shard read twice in a pass; batching happens inside the workers. ``epoch_size`` (samples
    per epoch over all ranks) turns the shards into an endless, reshuffled stream cut into epochs of that
    size (``with_epoch``); without it an epoch is one pass over the shards. Workers are persistent so that
    each epoch reshuffles. Bad samples are skipped and counted: see ``bad_counts`` and ``BadSampleLogger``.
    Without ``val_shards`` there is no validation.

    A folder written by ``make_shards.py --buckets`` (its ``manifest.json``) as ``train_shards`` reads aspect /
    length buckets instead (``wan2.data.bucket_reader``): each batch from one bucket, the clip size from the
    manifest (``num_frames / height / width`` unused), each clip once per epoch at any world size and worker
    count, in an order fixed by (seed, epoch), resumable mid-epoch; with ``cache_dir`` each bucket is encoded
    once into its own latent cache (``cache_dir/<FxHxW>``, as ``scripts/precompute.py --shards DIR`` writes).
    """

    rj_cfg = None  # not generated by RankJump: objectives' exports record no RankJump geometry

    Config = ShardDataConfig  # every setting, its default and its check (wan2/data/config.py)

    def __init__(
        self, train_shards: str | list[str] | None = None, cfg: ShardDataConfig | None = None, **settings
    ):
        super().__init__()
        if train_shards is not None:
            settings["train_shards"] = train_shards
        c = self.cfg = self.Config.build(cfg, settings)
        self.train_shards = c.train_shards
        self.val_shards = c.val_shards
        self.batch_size = c.batch_size
        self.val_batch_size = c.val_batch_size or c.batch_size
        self.num_workers = c.num_workers
        self.shuffle_buffer = c.shuffle_buffer
        self.seed = c.seed
        self.num_frames, self.height, self.width = c.num_frames, c.height, c.width
        self.max_bad_fraction = c.max_bad_fraction
        self.min_seen = c.min_seen
        self.epoch_size = c.epoch_size
        self.pin_memory = c.pin_memory
        self.cache_dir, self.cache_text = c.cache_dir, c.cache_text
        self.counters: dict[str, BadSampleCounter] = {}
        self.bucketed = is_bucket_folder(self.train_shards)
        if self.cache_dir and not self.bucketed:
            raise ValueError(
                f"data.cache_dir: {self.cache_dir!r} needs data.train_shards to be a bucketed folder "
                f"(make_shards.py --buckets), not {self.train_shards!r}"
            )
        self.backbone = None
        self._buckets = None  # bucket name -> TarBucket, indexed on first use

    def bind_backbone(self, backbone) -> None:
        """The per-bucket latent caches (``cache_dir``) are built with and checked against this backbone."""
        self.backbone = backbone

    def buckets(self) -> dict:
        """Bucket name -> its clips in the shards (a bucketed ``train_shards`` folder only)."""
        from wan2.data.bucket_reader import index_folder

        if self._buckets is None:
            counter = self.counters.setdefault(
                "train", BadSampleCounter(self.max_bad_fraction, self.min_seen, name="train")
            )
            self._buckets = index_folder(self.train_shards, counter)
        return self._buckets

    def bucket_counts(self) -> dict[str, int]:
        """``{"FxHxW": clips}`` of a bucketed ``train_shards`` folder; ``{}`` for plain shards."""
        return {name: len(b) for name, b in self.buckets().items()} if self.bucketed else {}

    def _bucket_cache(self, name: str):
        from pathlib import Path

        from wan2.data.bucket_reader import bucket_cache_info

        return Path(self.cache_dir) / name, bucket_cache_info(self.train_shards, name)

    def prepare_data(self) -> None:
        """With ``cache_dir`` and a bucketed folder: encode each bucket whose cache is missing or stale."""
        if not (self.bucketed and self.cache_dir):
            return
        from wan2.data.bucket_reader import BucketSamples
        from wan2.data.cache import build_latent_cache, cache_mismatch

        if self.backbone is None:
            raise RuntimeError("VideoDataModule with cache_dir needs bind_backbone(backbone) before use")
        for name, bucket in self.buckets().items():
            path, info = self._bucket_cache(name)
            if cache_mismatch(path, self.backbone, with_text=self.cache_text, info=info) is not None:
                samples = BucketSamples(bucket, self.counters["train"])
                build_latent_cache(
                    self.backbone,
                    samples,
                    path,
                    with_text=self.cache_text,
                    info=info,
                    desc=f"encoding {name}",
                )

    def _bucket_loader(self) -> DataLoader:
        from wan2.data.bucket_reader import BucketBatches, cached_sources

        sources, collate_fn = self.buckets(), collate_videos
        if self.cache_dir:
            from wan2.data.cache import LatentCacheDataset, StaleCacheError, cache_mismatch

            caches = {}
            for name in sources:
                path, info = self._bucket_cache(name)
                if (
                    why := cache_mismatch(path, self.backbone, with_text=self.cache_text, info=info)
                ) is not None:
                    raise StaleCacheError(f"data.cache_dir: bucket {name}: {path}: {why}; run prepare_data")
                caches[name] = LatentCacheDataset(path, self.backbone, with_text=self.cache_text)
            sources, collate_fn = cached_sources(caches), collate
        ds = BucketBatches(
            sources,
            self.batch_size,
            seed=self.seed,
            counter=self.counters["train"],
            collate_fn=collate_fn,
            **self._rank(),
        )
        return BucketLoader(
            ds,
            epoch=(lambda: self.trainer.current_epoch) if self.trainer is not None else None,
            progress=lambda: batches_done_this_epoch(self.trainer) if self.trainer is not None else 0,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def _world_size(self) -> int:
        if self.trainer is not None:
            return self.trainer.world_size
        return pytorch_worker_info()[1]

    def _rank(self) -> dict:
        """The trainer's rank for the shard split (see ``SplitByNode``); without a trainer: read in the workers."""
        if self.trainer is None:
            return {}
        return {"rank": self.trainer.global_rank, "world_size": self.trainer.world_size}

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
            **self._rank(),
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
        if self.bucketed:
            return self._bucket_loader()
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


class BucketLoader(DataLoader):
    """The DataLoader of ``BucketBatches``: each pass takes the trainer's epoch (else counts its passes) and
    saves its position inside the epoch in Lightning checkpoints, so a resumed epoch skips the batches done."""

    def __init__(self, dataset, *, epoch=None, progress=None, **kwargs):
        super().__init__(dataset, batch_size=None, collate_fn=_identity, **kwargs)
        self.epoch_fn, self.progress = epoch, progress
        self.passes = 0
        self.resume: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def __iter__(self):
        epoch = int(self.epoch_fn()) if self.epoch_fn is not None else self.passes
        self.passes += 1
        skip = self.resume[1] if self.resume is not None and self.resume[0] == epoch else 0
        self.dataset.set_epoch(epoch)  # shared memory: the workers read it when this pass starts
        self.dataset.set_skip(skip)
        return super().__iter__()

    def state_dict(self) -> dict:
        epoch = int(self.epoch_fn()) if self.epoch_fn is not None else max(0, self.passes - 1)
        return {"epoch": epoch, "batches_done": int(self.progress()) if self.progress is not None else 0}

    def load_state_dict(self, state: dict) -> None:
        done = int(state.get("batches_done", 0))
        self.resume = (int(state.get("epoch", 0)), done if done < len(self.dataset) else 0)


class BadSampleLogger(L.Callback):
    """Log the DataModule's bad-sample counts at each train / validation epoch end (any other DataModule: nothing),
    and a bucketed folder's clips per bucket once at the start of training.

    Metrics: ``data/<split>_seen`` (samples read, good and bad), ``data/<split>_bad``, ``data/<split>_fraction``
    and ``data/<split>_<kind>`` for every kind in ``BAD_KINDS`` (zeros included). Counts run from the start of
    the run (they do not restart each epoch), include the DataLoader workers' counts and are summed over ranks.
    They count what was read: an epoch cut short (``max_steps``, ``limit_val_batches``) also counts the
    samples the workers had prefetched.
    """

    def _log(self, trainer, pl_module, split: str) -> None:
        dm = trainer.datamodule
        if not isinstance(dm, VideoDataModule) or split not in dm.counters:
            return
        counter = dm.counters[split]
        counts = counter.counts()
        local = torch.tensor([counter.seen, *counts.values()], dtype=torch.int64, device=pl_module.device)
        total = trainer.strategy.reduce(local, reduce_op="sum").tolist()  # (seen, bad per kind...) over ranks
        seen, per_kind = total[0], dict(zip(counts, total[1:]))
        bad = sum(per_kind.values())
        metrics = {"seen": seen, "bad": bad, "fraction": bad / seen if seen else 0.0, **per_kind}
        # already summed over ranks: no sync_dist
        pl_module.log_dict(
            {f"data/{split}_{k}": float(v) for k, v in metrics.items()}, on_step=False, on_epoch=True
        )

    def on_train_start(self, trainer, pl_module) -> None:
        """A bucketed folder: clips per bucket, once (``data/bucket_<FxHxW>``, ``data/buckets``, ``data/clips``)."""
        dm = trainer.datamodule
        counts = dm.bucket_counts() if isinstance(dm, VideoDataModule) else {}
        if counts:
            metrics = {f"data/bucket_{name}": float(n) for name, n in counts.items()}
            metrics.update({"data/buckets": float(len(counts)), "data/clips": float(sum(counts.values()))})
            pl_module.log_dict(metrics, on_step=False, on_epoch=True)  # the same on every rank: no sync

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, "val")
