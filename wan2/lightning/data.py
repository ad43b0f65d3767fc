"""LightningDataModules the configs instantiate: RankJump generated on the fly, shards, or a latent cache."""

from __future__ import annotations

import os

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from wan2.data.datasets import RankJumpVideoDataset, collate
from wan2.data.rankjump import RankJumpConfig


def rankjump_config(spec: dict | None) -> RankJumpConfig:
    spec = dict(spec or {})
    if "colours" in spec:
        spec["colours"] = tuple(spec["colours"])
    if "mix" in spec:
        spec["mix"] = dict(spec["mix"])
    return RankJumpConfig(**spec)


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
    """RankJump clips rendered on the fly (no files): deterministic by (split, index), any world size."""

    def __init__(
        self,
        rankjump: dict | None = None,
        num_train: int = 4000,
        num_val: int = 64,
        val_split: str = "heldout",
        batch_size: int = 8,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.rj_cfg = rankjump_config(rankjump)

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
        trainer = self.trainer
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    def val_dataloader(self):
        return DataLoader(
            self.val_set, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=collate, num_workers=0
        )


class LatentDataModule(RankJumpDataModule):
    """RankJump encoded once into a latent cache (``wan2.data.cache``); training steps read latents only.

    Validation yields rendered held-out clips (video + metadata) so objectives can sample from their captions
    and judge the motion with the reader.
    """

    def __init__(
        self,
        rankjump: dict | None = None,
        num_train: int = 4000,
        num_val: int = 64,
        val_split: str = "heldout",
        batch_size: int = 32,
        val_batch_size: int = 16,
        num_workers: int = 0,
        cache_dir: str = "data/cache",
        cache_text: bool = False,
    ):
        super().__init__(rankjump, num_train, num_val, val_split, batch_size, num_workers)
        self.save_hyperparameters()
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

        key = json.dumps({"rj": asdict(self.rj_cfg), "n": self.hparams.num_train}, sort_keys=True)
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
