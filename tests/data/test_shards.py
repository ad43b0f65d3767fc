import csv
import json
import os
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from tests.conftest import load_script
from wan2.data.ingest import ingest, read_index, resize_crop, sample_clip, scan_folder
from wan2.data.rankjump import RankJump, RankJumpConfig
from wan2.data.shards import (
    BadSampleCounter,
    DataQualityError,
    brace_pattern,
    mp4_damage,
    rankjump_samples,
    rankjump_shards,
    read_manifest,
    shard_dataset,
    write_shards,
)
from wan2.data.video import decode_mp4, encode_mp4, write_mp4
from wan2.lightning.data import VideoDataModule

CFG = RankJumpConfig(mix={"rank_up": 1, "rank_down": 1, "hold": 1, "first_entry": 1})
SPEC = {"num_frames": 17, "height": 32, "width": 32}


@pytest.fixture(scope="module")
def samples():
    return list(rankjump_samples(CFG, "val", 24))


def _write(samples, out, prefix="s", shard_size=3):
    m = write_shards(samples, out, prefix=prefix, shard_size=shard_size)
    return brace_pattern(out, prefix, m["num_shards"]), m


def test_shard_round_trip_plain_webdataset_and_pipe(tmp_path, samples):
    pattern, m = _write(samples[:12], tmp_path, shard_size=4)
    assert m["num_shards"] == 3 and m["num_samples"] == 12
    assert sorted(os.listdir(tmp_path)) == ["s-000000.tar", "s-000001.tar", "s-000002.tar", "s-manifest.json"]
    raw = list(wds.WebDataset(pattern, shardshuffle=False))
    assert [r["__key__"] for r in raw] == [f"val-{i:08d}" for i in range(12)]
    clips = RankJump(CFG, "val", 12)
    for r in raw[:3]:
        clip = clips[int(r["__key__"].split("-")[1])]
        assert r["txt"].decode() == clip.caption
        assert json.loads(r["json"])["event"] == clip.meta["event"]
        assert np.abs(decode_mp4(r["mp4"]).astype(int) - clip.frames).mean() < 3
    decoded = list(shard_dataset(f"pipe:cat {pattern}", **SPEC))
    assert [d["key"] for d in decoded] == [r["__key__"] for r in raw]
    d = decoded[0]
    assert d["video"].shape == (3, 17, 32, 32) and d["video"].dtype == torch.float32
    assert -1 <= d["video"].min() and d["video"].max() <= 1
    assert (
        d["caption"] == raw[0]["txt"].decode() and d["meta"]["event"] == json.loads(raw[0]["json"])["event"]
    )
    globbed = list(shard_dataset(str(tmp_path / "s-*.tar"), **SPEC))
    assert len(globbed) == 12


def test_shards_are_reproducible_and_stale_shards_removed(tmp_path, samples):
    _write(samples[:12], tmp_path, shard_size=3)
    first = (tmp_path / "s-000000.tar").read_bytes()
    _, m = _write(samples[:5], tmp_path, shard_size=3)
    assert (tmp_path / "s-000000.tar").read_bytes() == first
    assert m["shards"] == ["s-000000.tar", "s-000001.tar"]
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".tar")) == m["shards"]


def test_killed_write_leaves_no_half_shard(tmp_path, samples):
    def dying():
        yield from samples[:5]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(dying(), tmp_path, prefix="s", shard_size=3)
    assert sorted(os.listdir(tmp_path)) == ["s-000000.tar"]  # complete shard only, no manifest, no .tmp
    assert read_manifest(tmp_path, "s") is None
    with tarfile.open(tmp_path / "s-000000.tar") as tar:
        assert len(tar.getnames()) == 12  # 3 samples x (mp4, txt, json, sha256)


def _bad_samples(good):
    """One sample of each bad kind, built from a good sample; keys name the expected kind."""
    mp4 = good["mp4"]
    frames = decode_mp4(mp4)

    def s(kind, **kw):
        out = {"__key__": f"bad_{kind}", "mp4": mp4, "txt": b"a caption", "json": b"{}"}
        out.update(kw)
        return {k: v for k, v in out.items() if v is not None}

    return [
        s("undecodable", mp4=np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()),
        s("undecodable", __key__="bad_undecodable2", mp4=b"\x00\x00\x00\x10ftypisom" + b"\xff" * 200),
        s("truncated", mp4=mp4[: len(mp4) // 2]),
        s("truncated", __key__="bad_truncated2", mp4=mp4[:-10]),
        s("empty", mp4=b""),
        s("wrong_size", mp4=encode_mp4(frames[:, :24], 8)),
        s("wrong_frames", mp4=encode_mp4(frames[:13], 8)),
        s("no_caption", txt=None),
        s("no_caption", __key__="bad_no_caption2", txt=b"  \n"),
        s("no_video", mp4=None),
        s("bad_meta", json=b"{not json"),
    ]


def test_each_kind_of_bad_sample_is_counted_and_skipped(tmp_path, samples):
    bad = _bad_samples(samples[0])
    mixed = [samples[0], *bad[:6], samples[1], *bad[6:], samples[2]]
    pattern, _ = _write(mixed, tmp_path, shard_size=5)
    counter = BadSampleCounter(max_bad_fraction=1.0, min_seen=1)
    out = list(shard_dataset(pattern, counter=counter, **SPEC))
    assert [o["key"] for o in out] == [s["__key__"] for s in samples[:3]]
    counts = counter.counts()
    expected = {}
    for b in bad:
        kind = b["__key__"].removeprefix("bad_").rstrip("2")
        expected[kind] = expected.get(kind, 0) + 1
    assert {k: v for k, v in counts.items() if v} == expected
    assert counter.seen == len(mixed) and counter.bad == len(bad)


def test_mp4_damage():
    mp4 = encode_mp4(np.zeros((5, 16, 16, 3), np.uint8), 8)
    assert mp4_damage(mp4) is None
    assert mp4_damage(mp4[:-1]) == "truncated"
    assert mp4_damage(b"garbage" * 10) == "undecodable"


def test_truncated_tar_is_counted_not_fatal(tmp_path, samples):
    pattern, _ = _write(samples[:6], tmp_path, shard_size=3)
    path = tmp_path / "s-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    counter = BadSampleCounter(max_bad_fraction=1.0, min_seen=1)
    with pytest.warns(UserWarning, match="tar error"):
        out = list(shard_dataset(pattern, counter=counter, **SPEC))
    keys = [o["key"] for o in out]
    assert keys[-3:] == [s["__key__"] for s in samples[3:6]] and len(keys) < 6
    assert counter.counts()["tar_error"] >= 1


def test_stop_rule_raises_data_quality_error(tmp_path, samples):
    bad = _bad_samples(samples[0])
    pattern, _ = _write([*samples[:3], *bad[:4], *samples[3:6]], tmp_path, shard_size=20)
    counter = BadSampleCounter(max_bad_fraction=0.2, min_seen=5)
    with pytest.raises(
        DataQualityError, match=r"2/5 samples bad \(40\.0% > max_bad_fraction 20\.0%\): undecodable=2$"
    ):
        list(shard_dataset(pattern, counter=counter, **SPEC))
    # under the minimum seen, the same data passes
    ok = list(shard_dataset(pattern, counter=BadSampleCounter(0.2, min_seen=100), **SPEC))
    assert len(ok) == 6
    # all bad: an error even under the minimum
    only_bad, _ = _write(bad[:3], tmp_path / "bad", shard_size=20)
    with pytest.raises(DataQualityError, match="all 3 samples"):
        list(shard_dataset(only_bad, counter=BadSampleCounter(0.2, min_seen=100), **SPEC))


def test_two_ranks_two_workers_see_each_sample_once(tmp_path, samples, monkeypatch):
    pattern, m = _write(samples, tmp_path, shard_size=3)  # 8 shards
    assert m["num_shards"] == 8
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = shard_dataset(pattern, shuffle_buffer=4, seed=1, **SPEC)
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        keys = [s["key"] for s in loader]
        assert len(keys) == 12
        seen.extend(keys)
        assert ds.counter.seen == 12  # counted across the workers
    assert sorted(seen) == sorted(s["__key__"] for s in samples)


def test_shuffle_is_seeded_and_changes_per_pass(tmp_path, samples):
    pattern, _ = _write(samples, tmp_path, shard_size=3)

    def order(ds):
        return [s["__key__"] for s in ds]

    a = wds.WebDataset(pattern, shardshuffle=False).compose(_shuffle(5, 1))
    b = wds.WebDataset(pattern, shardshuffle=False).compose(_shuffle(5, 1))
    first = order(a)
    assert first == order(b)
    assert sorted(first) == sorted(s["__key__"] for s in samples) and first != sorted(first)
    assert order(a) != first  # the next pass reshuffles


def _shuffle(bufsize, seed):
    from wan2.data.shards import SeededShuffle

    return SeededShuffle(bufsize, seed)


def test_datamodule_batches_and_bad_counts(tmp_path, samples):
    bad = _bad_samples(samples[0])
    pattern, _ = _write([*samples[:10], bad[0]], tmp_path, shard_size=4)
    dm = VideoDataModule(
        pattern,
        val_shards=pattern,
        batch_size=4,
        num_workers=0,
        shuffle_buffer=4,
        min_seen=1,
        max_bad_fraction=0.5,
        **SPEC,
    )
    batches = list(dm.train_dataloader())
    assert [b["video"].shape[0] for b in batches] == [4, 4, 2]
    b = batches[0]
    assert b["video"].shape == (4, 3, 17, 32, 32) and b["video"].dtype == torch.float32
    assert isinstance(b["caption"], list) and all(isinstance(c, str) and c for c in b["caption"])
    assert isinstance(b["meta"], list) and all(isinstance(x, dict) for x in b["meta"])
    assert dm.bad_counts()["train"]["undecodable"] == 1 and dm.bad_counts()["train"]["seen"] == 11
    val = list(dm.val_dataloader())
    assert sum(len(v["key"]) for v in val) == 10
    assert VideoDataModule(pattern, **SPEC).val_dataloader() == []


def test_datamodule_epoch_size_with_workers(tmp_path, samples):
    pattern, _ = _write(samples[:16], tmp_path, shard_size=4)
    dm = VideoDataModule(pattern, batch_size=2, num_workers=2, shuffle_buffer=4, epoch_size=12, **SPEC)
    loader = dm.train_dataloader()
    assert len(loader) == 6
    epochs = [[k for b in loader for k in b["key"]] for _ in range(2)]
    assert [len(e) for e in epochs] == [12, 12]
    assert epochs[0] != epochs[1]


def test_rankjump_shards_generates_once(tmp_path):
    cfg = RankJumpConfig(num_frames=5)
    pattern = rankjump_shards(tmp_path, "train", 6, cfg, shard_size=4)
    assert pattern.endswith("train-{000000..000001}.tar")
    mtime = os.path.getmtime(tmp_path / "train-000000.tar")
    assert rankjump_shards(tmp_path, "train", 6, cfg, shard_size=4) == pattern
    assert os.path.getmtime(tmp_path / "train-000000.tar") == mtime
    out = list(shard_dataset(pattern, num_frames=5, height=32, width=32))
    assert len(out) == 6
    rankjump_shards(tmp_path, "train", 8, cfg, shard_size=4)  # a different request regenerates
    assert read_manifest(tmp_path, "train")["num_samples"] == 8


# ----------------------------------------------------------------------------- ingestion


def _ramp_video(path, n=48, fps=24, h=40, w=56):
    """Frame i is a flat gray of value 5 * i, so a decoded frame tells its source index."""
    frames = np.stack([np.full((h, w, 3), 5 * i, np.uint8) for i in range(n)])
    write_mp4(frames, path, fps=fps)


def test_sample_clip_picks_frames_at_the_target_fps(tmp_path):
    _ramp_video(tmp_path / "ramp.mp4")
    clip = sample_clip(tmp_path / "ramp.mp4", 13, fps=8, height=32, width=32)
    assert clip.shape == (13, 32, 32, 3)
    index = np.rint(clip[:, 16, 16, 0] / 5.0).astype(int)
    assert index.tolist() == list(range(0, 37, 3))


def test_resize_crop_centre():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255  # the centre half is white
    out = resize_crop(img, 32, 32)
    assert out.shape == (32, 32, 3) and out.min() > 200


def test_folder_ingestion_with_summary(tmp_path):
    src = tmp_path / "videos"
    (src / "sub").mkdir(parents=True)
    for name in ("a", "b", "sub/c"):
        _ramp_video(src / f"{name}.mp4")
        (src / f"{name}.txt").write_text(f"clip {name}\n")
    _ramp_video(src / "nocaption.mp4")
    (src / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500))
    (src / "corrupt.txt").write_text("broken")
    _ramp_video(src / "short.mp4", n=10)
    (src / "short.txt").write_text("too short")
    (src / "notes.md").write_text("ignored")

    items = scan_folder(src)
    assert len(items) == 6
    summary = ingest(
        items, tmp_path / "out", num_frames=17, fps=8, height=32, width=32, shard_size=2, progress=False
    )
    assert summary.written == 3
    assert dict(summary.skipped) == {"missing_caption": 1, "undecodable": 1, "too_short": 1}
    assert "skipped: 3" in summary.report()
    out = list(shard_dataset(summary.manifest["pattern"], **SPEC))
    assert sorted(o["caption"] for o in out) == ["clip a", "clip b", "clip sub/c"]
    assert all(o["video"].shape == (3, 17, 32, 32) for o in out)


def test_index_files(tmp_path):
    _ramp_video(tmp_path / "x.mp4")
    with open(tmp_path / "i.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption"])
        w.writerow(["x.mp4", "a ramp"])
        w.writerow(["missing.mp4", "gone"])
    (tmp_path / "i.jsonl").write_text(json.dumps({"path": "x.mp4", "caption": ""}) + "\n")
    items = read_index(tmp_path / "i.csv")
    assert [i.caption for i in items] == ["a ramp", "gone"] and os.path.isabs(items[0].path)
    assert read_index(tmp_path / "i.jsonl")[0].caption is None
    summary = ingest(items, tmp_path / "out", num_frames=9, fps=8, progress=False)
    assert summary.written == 1 and dict(summary.skipped) == {"not_found": 1}


def test_make_shards_script(tmp_path, capsys):
    script = load_script("scripts/make_shards.py", "make_shards")
    rc = script.main(
        [
            "--rankjump",
            "--split",
            "val",
            "--num",
            "5",
            "--frames",
            "5",
            "--shard-size",
            "2",
            "--mix",
            "rank_up=1,hold=0.5",
            "--out",
            str(tmp_path / "rj"),
            "--no-progress",
        ]
    )
    assert rc == 0 and "wrote 5 clips in 3 shards" in capsys.readouterr().out
    meta = [
        s["meta"]
        for s in shard_dataset(brace_pattern(tmp_path / "rj", "val", 3), num_frames=5, height=32, width=32)
    ]
    assert {m["event"] for m in meta} <= {"rank_up", "hold"}
    (tmp_path / "v").mkdir()
    _ramp_video(tmp_path / "v" / "a.mp4")
    (tmp_path / "v" / "a.txt").write_text("ramp")
    rc = script.main(
        ["--videos", str(tmp_path / "v"), "--out", str(tmp_path / "o"), "--frames", "9", "--no-progress"]
    )
    assert rc == 0 and "written: 1 clips" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main(["--rankjump", "--out", str(tmp_path), "--frames", "6"])


def test_datamodule_in_a_lightning_fit(tmp_path):
    import lightning as L

    from wan2.lightning.data import BadSampleLogger

    pattern = rankjump_shards(tmp_path, "train", 8, RankJumpConfig(num_frames=5), shard_size=4)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            assert batch["video"].shape == (2, 3, 5, 32, 32)
            return (batch["video"].mean() - self.w).pow(2)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = VideoDataModule(
        pattern, batch_size=2, num_workers=0, epoch_size=6, num_frames=5, height=32, width=32
    )
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[BadSampleLogger()],
    )
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.global_step == 6
    assert trainer.callback_metrics["data/train_bad"] == 0


def test_too_few_shards_warns(tmp_path, samples):
    pattern, _ = _write(samples[:4], tmp_path, shard_size=4)
    with pytest.warns(UserWarning, match="1 shards for 2 readers"):
        VideoDataModule(pattern, num_workers=2, **SPEC).train_dataloader()
