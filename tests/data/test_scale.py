"""Data at scale: shards read through ``pipe:`` URLs are split over ranks and DataLoader workers with no sample
read twice and none missed; the latent cache is built once and read at any world size.

Ranks and workers are simulated the way the readers look them up: ``RANK``/``WORLD_SIZE`` and
``WORKER``/``NUM_WORKERS`` (webdataset's ``pytorch_worker_info``), or the trainer's rank (``VideoDataModule``).
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from tests.conftest import model_cfg
from wan2.data.rankjump import RankJumpConfig
from wan2.data.shards import SplitByNode, expand_shards, rankjump_shards, shard_dataset
from wan2.lightning.data import VideoDataModule

RJ = {"num_frames": 5, "mix": {"rank_up": 1, "rank_down": 1, "hold": 1, "first_entry": 1}}
SPEC = {"num_frames": 5, "height": 32, "width": 32}
NUM, SHARD_SIZE = 16, 2  # 8 shards
KEYS = {f"train-{i:08d}" for i in range(NUM)}
pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_rank_env")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 RankJump shards of 2 clips; returns their brace pattern (``dir/train-{000000..000007}.tar``)."""
    return rankjump_shards(tmp_path_factory.mktemp("shards"), "train", NUM, RankJumpConfig(**RJ), SHARD_SIZE)


def assert_partition(parts: dict) -> None:
    """The key sets of all readers are disjoint, none holds a key twice, and together they hold every key."""
    for name, keys in parts.items():
        assert len(keys) == len(set(keys)), f"{name} read a sample twice"
    for (a, ka), (b, kb) in combinations(parts.items(), 2):
        assert not set(ka) & set(kb), f"{a} and {b} both read {sorted(set(ka) & set(kb))}"
    assert set().union(*map(set, parts.values())) == KEYS


# ----------------------------------------------------------------------------- shards over ranks x workers
@pytest.mark.parametrize("world,workers", [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (3, 2)])
@pytest.mark.parametrize("how", ["env", "rank_arg"])
def test_pipe_shards_split_by_rank_and_worker(shards, monkeypatch, world, workers, how):
    """``pipe:cat`` URLs with brace expansion (as ``pipe:aws s3 cp s3://bucket/train-{...}.tar -``)."""
    url = f"pipe:cat {shards}"
    parts = {}
    for rank in range(world):
        for worker in range(workers):
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", str(workers))
            if how == "env":
                monkeypatch.setenv("RANK", str(rank))
                monkeypatch.setenv("WORLD_SIZE", str(world))
                ds = shard_dataset(url, shuffle_buffer=3, seed=1, **SPEC)
            else:  # the trainer's rank, as VideoDataModule passes it; the environment says nothing
                ds = shard_dataset(url, shuffle_buffer=3, seed=1, rank=rank, world_size=world, **SPEC)
            parts[(rank, worker)] = [s["key"] for s in ds]
            again = [s["key"] for s in ds]  # the next pass: reshuffled, the same shards
            assert sorted(again) == sorted(parts[(rank, worker)])
    assert_partition(parts)
    assert ds.counter.bad == 0


def test_lists_of_brace_patterns_are_expanded(shards):
    """webdataset expands braces only in a string: a list of patterns is expanded item by item here."""
    d = Path(shards).parent
    urls = expand_shards(
        [f"pipe:cat {d}/train-{{000000..000003}}.tar", f"pipe:cat {d}/train-{{000004..000007}}.tar"]
    )
    assert urls == [f"pipe:cat {d}/train-{i:06d}.tar" for i in range(8)]
    assert expand_shards(f"pipe:cat {shards}") == f"pipe:cat {shards}"  # one string: left to webdataset
    assert expand_shards(str(d / "train-*.tar")) == [str(d / f"train-{i:06d}.tar") for i in range(8)]


def test_split_by_node_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="outside"):
        SplitByNode(2, 2)
    with pytest.raises(ValueError, match="both"):
        shard_dataset("x.tar", rank=0, **SPEC)


@pytest.mark.parametrize("world", [1, 2])
def test_datamodule_splits_pipe_shards_by_the_trainers_rank(shards, monkeypatch, world):
    """VideoDataModule with a list of ``pipe:`` patterns, 2 DataLoader workers per rank (real processes). The
    environment claims a single process: the split follows the trainer (``SplitByNode``) all the same."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    d = Path(shards).parent
    train = [f"pipe:cat {d}/train-{{000000..000003}}.tar", f"pipe:cat {d}/train-{{000004..000007}}.tar"]
    parts = {}
    for rank in range(world):
        dm = VideoDataModule(train, batch_size=3, num_workers=2, shuffle_buffer=4, **SPEC)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        loader = dm.train_dataloader()
        parts[rank] = [k for batch in loader for k in batch["key"]]
        assert dm.bad_counts()["train"]["seen"] == len(parts[rank])  # counted across the workers
        del loader
    assert_partition(parts)


# ----------------------------------------------------------------------------- the latent cache at any world size
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A LatentDataModule that built its cache of 10 clips at world size 1 (prepare_data, i.e. rank 0)."""
    from wan2.backbones.stack import build_backbone
    from wan2.lightning.data import LatentDataModule

    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = model_cfg("wan_tiny")
    backbone = build_backbone(
        cfg, components=("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
    )
    root = tmp_path_factory.mktemp("cache")

    def make(**trainer):
        dm = LatentDataModule(rankjump=RJ, num_train=10, batch_size=2, cache_dir=str(root))
        dm.bind_backbone(backbone.eval())
        if trainer:
            dm.trainer = SimpleNamespace(**trainer)
        return dm

    make().prepare_data()
    torch.set_num_threads(n)
    return SimpleNamespace(make=make, root=root, backbone=backbone, n=10)


def test_cache_is_built_once_and_keyed_independent_of_world_size(cache, monkeypatch):
    import wan2.data.cache as cache_mod

    path = cache.make().cache_path()
    assert [p.name for p in cache.root.iterdir()] == [path.name] and (path / "index.json").is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was built again")

    monkeypatch.setattr(cache_mod, "build_latent_cache", no_rebuild)
    for world in (2, 3, 8):
        for rank in {0, world - 1}:
            dm = cache.make(world_size=world, global_rank=rank)
            assert dm.cache_path() == path
            dm.prepare_data()  # what rank 0 of a bigger job runs: finds the cache, builds nothing
            dm.setup("fit")  # what every rank runs: reads it
            assert len(dm.train_set) == cache.n


@pytest.mark.parametrize("world", [2, 3])
def test_cache_read_with_a_distributed_sampler_covers_every_index(cache, world):
    """DistributedSampler (what Lightning puts in front of a map-style dataset under DDP), per epoch:

    - ``drop_last=False`` (Lightning's default): the shuffled indices are padded with their own first
      ``(-n) % world`` entries to ``ceil(n / world) * world`` and dealt out rank by rank: every index is read,
      the padded ones twice;
    - ``drop_last=True``: the last ``n % world`` shuffled indices are left out of that epoch (others next epoch);
      the rest is read exactly once.
    """
    from wan2.data.cache import LatentCacheDataset

    path, n = cache.make().cache_path(), cache.n
    # every rank opens the same files
    datasets = [LatentCacheDataset(path, cache.backbone) for _ in range(world)]
    assert all(torch.equal(ds.latents, datasets[0].latents) for ds in datasets)
    missed_per_epoch = []
    for epoch in (0, 1):
        per_rank = []
        for rank, ds in enumerate(datasets):
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
        counts = Counter(i for part in per_rank for i in part)
        assert set(counts) == set(range(n))
        assert all(len(p) == math.ceil(n / world) for p in per_rank)
        assert sum(c - 1 for c in counts.values()) == (-n) % world  # padding: these indices come twice

        dropped = []
        for rank, ds in enumerate(datasets):
            sampler = DistributedSampler(
                ds, num_replicas=world, rank=rank, shuffle=True, seed=0, drop_last=True
            )
            sampler.set_epoch(epoch)
            dropped.append(list(sampler))
        flat = [i for p in dropped for i in p]
        assert len(flat) == len(set(flat)) == n - n % world and all(len(p) == n // world for p in dropped)
        missed_per_epoch.append(set(range(n)) - set(flat))
    if n % world:
        assert missed_per_epoch[0] != missed_per_epoch[1]  # a different tail is left out each epoch


@pytest.mark.parametrize("world", [2, 3])
def test_lightning_keeps_the_resumable_loader_when_it_injects_the_sampler(cache, world):
    """What Lightning does to ``train_dataloader()`` under DDP (``_request_dataloader`` / ``_update_dataloader``):
    the cache's ResumableDataLoader and SkippingBatchSampler survive, over a DistributedSampler per rank."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    from wan2.lightning.data import ResumableDataLoader, SkippingBatchSampler

    n, batch = cache.n, 2
    per_rank = []
    for rank in range(world):
        dm = cache.make(world_size=world, global_rank=rank)
        dm.setup("fit")
        with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
            loader = dm.train_dataloader()
        sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
        loader = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
        assert isinstance(loader, ResumableDataLoader) and isinstance(
            loader.batch_sampler, SkippingBatchSampler
        )
        assert loader.batch_sampler.sampler is sampler and loader.batch_sampler.batch_size == batch
        per_rank.append([i for b in loader.batch_sampler for i in b])
    share = math.ceil(n / world)
    kept = share - share % batch  # SkippingBatchSampler drops each rank's last partial batch
    assert all(len(p) == kept for p in per_rank)
    counts = Counter(i for p in per_rank for i in p)
    assert sum(c - 1 for c in counts.values()) <= (-n) % world  # repeats only from the padding
