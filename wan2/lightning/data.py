"""LightningDataModules the configs instantiate: RankJump generated on the fly, shards, or a latent cache."""

from __future__ import annotations

import os

import lightning as L
import torch
from torch.utils.data import DataLoader, RandomSampler

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
    """Shuffle seeded by (seed, epoch) via Lightning's ``set_epoch``: the data order survives a resume."""

    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


class RankJumpDataModule(L.LightningDataModule):
    """RankJump clips rendered on the fly (no files): deterministic by (split, index), any world size."""

    def __init__(self, rankjump: dict | None = None, num_train: int = 4000, num_val: int = 64,
                 val_split: str = "heldout", batch_size: int = 8, num_workers: int = 0):
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
        sampler = EpochShuffle(self.train_set, seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=self.hparams.num_workers, drop_last=True,
                          persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=collate,
                          num_workers=0)


class LatentDataModule(RankJumpDataModule):
    """RankJump encoded once into a latent cache (``wan2.data.cache``); training steps read latents only.

    Validation yields rendered held-out clips (video + metadata) so objectives can sample from their captions
    and judge the motion with the reader.
    """

    def __init__(self, rankjump: dict | None = None, num_train: int = 4000, num_val: int = 64,
                 val_split: str = "heldout", batch_size: int = 32, val_batch_size: int = 16,
                 num_workers: int = 0, cache_dir: str = "data/cache", cache_text: bool = False):
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
        return Path(self.hparams.cache_dir) / f"rankjump-train-{data_key}-vae{module_fingerprint(self.backbone.vae)}"

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

        self.train_set = LatentCacheDataset(self.cache_path(), self.backbone, with_text=self.hparams.cache_text)
        self.val_set = RankJumpVideoDataset(self.rj_cfg, self.hparams.val_split, self.hparams.num_val)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.val_batch_size, shuffle=False,
                          collate_fn=collate, num_workers=0)
