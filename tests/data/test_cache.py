"""Latent + text-embedding cache: hit, miss, stale refusal, atomic writes, shard input, precompute script."""

import copy
import dataclasses
import json
from dataclasses import asdict

import pytest
import torch

import wan2.data.cache as cache_mod
from tests.conftest import load_script, model_cfg
from wan2.backbones.stack import build_backbone
from wan2.data.cache import LatentCacheDataset, StaleCacheError, build_latent_cache, cache_mismatch
from wan2.data.datasets import RankJumpVideoDataset, collate
from wan2.data.rankjump import RankJumpConfig
from wan2.data.shards import shard_dataset, write_rankjump_shards
from wan2.lightning.data import LatentDataModule

RJ = {"num_frames": 5, "mix": {"rank_up": 1, "rank_down": 1, "hold": 1, "first_entry": 1}}
RJ_CFG = RankJumpConfig(**RJ)
N = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    cfg = model_cfg("wan_tiny")
    return build_backbone(
        cfg, components=("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
    ).eval()


@pytest.fixture(scope="module")
def built(backbone, tmp_path_factory):
    """A LatentDataModule that built its cache (latents + text) of N clips."""
    dm = LatentDataModule(
        rankjump=RJ, num_train=N, cache_dir=str(tmp_path_factory.mktemp("cache")), cache_text=True
    )
    dm.bind_backbone(backbone)
    dm.prepare_data()
    return dm


def _changed(module: torch.nn.Module) -> torch.nn.Module:
    """A copy with one weight nudged."""
    other = copy.deepcopy(module)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    return other


def test_hit_latents_and_text_equal_a_fresh_encode(built, backbone, monkeypatch):
    path = built.cache_path()
    assert (path / "index.json").is_file() and (path / "latents.safetensors").is_file()
    clips = RankJumpVideoDataset(RJ_CFG, "train", N)
    batch = collate([clips[i] for i in range(N)])
    with torch.no_grad():
        want = backbone.encode_video(batch["video"])  # (N, C, F', H', W')
        want_text = backbone.encode_prompts(batch["caption"])  # (N, L, D)
    built.setup("fit")
    ds = built.train_set
    assert isinstance(ds, LatentCacheDataset) and len(ds) == N
    got = torch.stack([ds[i]["latents"] for i in range(N)])
    assert got.shape == want.shape == (N, *backbone.latent_shape(5, 32, 32))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        torch.stack([ds[i]["text_emb"] for i in range(N)]), want_text, atol=1e-5, rtol=1e-5
    )
    assert [ds[i]["caption"] for i in range(N)] == batch["caption"]
    assert [ds[i]["meta"]["seed"] for i in range(N)] == [m["seed"] for m in batch["meta"]]
    # a second prepare_data finds the cache and encodes nothing
    monkeypatch.setattr(cache_mod, "build_latent_cache", lambda *a, **k: pytest.fail("cache rebuilt"))
    built.prepare_data()
    assert cache_mismatch(path, backbone, with_text=True) is None


def test_miss_other_data_or_vae_gives_another_path(built, backbone):
    def path_of(rankjump=RJ, num=N, bb=backbone):
        dm = LatentDataModule(rankjump=rankjump, num_train=num, cache_dir=built.hparams.cache_dir)
        dm.bind_backbone(bb)
        return dm.cache_path()

    assert path_of() == built.cache_path()
    assert path_of(num=N + 1) != built.cache_path()
    assert path_of(rankjump={**RJ, "rows": 6}) != built.cache_path()
    assert path_of(bb=dataclasses.replace(backbone, vae=_changed(backbone.vae))) != built.cache_path()
    assert not path_of(num=N + 1).exists()


def test_changed_vae_weight_is_refused(built, backbone):
    other = dataclasses.replace(backbone, vae=_changed(backbone.vae))
    with pytest.raises(StaleCacheError, match="VAE"):
        LatentCacheDataset(built.cache_path(), other)
    assert cache_mismatch(built.cache_path(), other).startswith("made by VAE")


def test_changed_text_encoder_is_refused_for_text_embeddings(built, backbone):
    other = dataclasses.replace(backbone, text_encoder=_changed(backbone.text_encoder))
    with pytest.raises(StaleCacheError, match="text encoder"):
        LatentCacheDataset(built.cache_path(), other, with_text=True)
    assert len(LatentCacheDataset(built.cache_path(), other, with_text=False)) == N  # latents still valid
    with pytest.raises(StaleCacheError):
        LatentCacheDataset(built.cache_path(), dataclasses.replace(backbone, text_len=16), with_text=True)


def test_latents_only_cache_refuses_text(backbone, tmp_path):
    path = build_latent_cache(backbone, RankJumpVideoDataset(RJ_CFG, "val", 2), tmp_path / "c")
    assert not (path / "text.safetensors").exists()
    with pytest.raises(StaleCacheError):
        LatentCacheDataset(path, backbone, with_text=True)
    assert cache_mismatch(path, backbone, with_text=True) is not None
    assert cache_mismatch(path, backbone) is None


def test_fingerprint_ignores_where_weights_were_loaded_from(backbone, tmp_path):
    from wan2.backbones.stack import load_vae

    backbone.vae.save_pretrained(tmp_path / "vae")
    assert cache_mod.module_fingerprint(load_vae(tmp_path / "vae")) == cache_mod.module_fingerprint(
        backbone.vae
    )


def test_interrupted_build_leaves_no_cache(backbone, tmp_path, monkeypatch):
    real_save = cache_mod.save_file

    def save_then_die(tensors, filename):
        real_save(tensors, filename)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(cache_mod, "save_file", save_then_die)
    ds = RankJumpVideoDataset(RJ_CFG, "val", 2)
    with pytest.raises(KeyboardInterrupt):
        build_latent_cache(backbone, ds, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary leftovers either
    # an interrupted rebuild keeps the previous complete cache
    monkeypatch.setattr(cache_mod, "save_file", real_save)
    build_latent_cache(backbone, ds, tmp_path / "cache", info={"v": 1})
    monkeypatch.setattr(cache_mod, "save_file", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_latent_cache(backbone, ds, tmp_path / "cache", info={"v": 2})
    assert json.loads((tmp_path / "cache/index.json").read_text())["info"] == {"v": 1}
    assert len(LatentCacheDataset(tmp_path / "cache", backbone)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_cache_from_a_shard_stream(backbone, tmp_path):
    write_rankjump_shards(tmp_path / "shards", "val", 6, RJ_CFG, shard_size=4)
    stream = shard_dataset(str(tmp_path / "shards/val-*.tar"), num_frames=5, height=32, width=32)
    path = build_latent_cache(backbone, stream, tmp_path / "c", batch_size=4, info={"source": "shards"})
    ds = LatentCacheDataset(path, backbone)
    want = RankJumpVideoDataset(RJ_CFG, "val", 6)
    assert len(ds) == 6 and [ds[i]["caption"] for i in range(6)] == [want[i]["caption"] for i in range(6)]
    assert ds[0]["latents"].shape == backbone.latent_shape(5, 32, 32)
    assert cache_mismatch(path, backbone, info={"source": "shards"}) is None
    assert cache_mismatch(path, backbone, info={"source": "other"}) == "made from different data"


def _precompute():
    return load_script("scripts/precompute.py", "precompute")


def test_precompute_script_builds_then_skips(backbone, tmp_path, capsys):
    backbone.vae.save_pretrained(tmp_path / "vae")
    main = _precompute().main
    args = [
        "--vae",
        str(tmp_path / "vae"),
        "--split",
        "val",
        "--num",
        "3",
        "--frames",
        "5",
        "--mix",
        "hold=1",
        "--out",
        str(tmp_path / "c"),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert "wrote 3 clips" in capsys.readouterr().out
    ds = LatentCacheDataset(tmp_path / "c", backbone)
    assert len(ds) == 3 and all(m["event"] == "hold" for m in ds.meta)
    info = json.loads((tmp_path / "c/index.json").read_text())["info"]
    assert info["source"] == "rankjump" and info["config"] == json.loads(
        json.dumps(asdict(RankJumpConfig(num_frames=5, mix={"hold": 1.0})))
    )
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(args + ["--with-text"])  # a VAE folder has no text encoder
    with pytest.raises(SystemExit):
        main([*args[:-4], "--out", str(tmp_path / "vae")])  # not a cache: would be replaced
