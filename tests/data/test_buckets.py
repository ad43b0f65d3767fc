"""Aspect / length buckets: several clips per video, captions at scale, bucketed shards read once per epoch.

Videos are generated tiny (16-64 px, a few dozen frames): frame i is a flat gray of 5 * (i % 50), so a decoded
frame tells which source frame the clip took. Ranks and workers are simulated as ``tests/data/test_scale.py``
does: the trainer's rank as an argument, the worker through ``WORKER`` / ``NUM_WORKERS``.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import load_script
from wan2.data.bucket_reader import BucketBatches, index_folder
from wan2.data.buckets import (
    Bucket,
    BucketSpec,
    bucket_size_problem,
    clip_starts,
    frame_buckets,
    largest_bucket,
    nearest_size,
    plan_batches,
    read_bucket_manifest,
    spatial_buckets,
)
from wan2.data.clips import ingest_buckets, stream_clips
from wan2.data.ingest import scan_folder
from wan2.data.video import write_mp4
from wan2.lightning.data import VideoDataModule

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_rank_env")


def ramp(path, n: int, h: int, w: int, fps: float = 8, caption: str | None = "auto") -> None:
    """A video whose frame i is gray 5 * (i % 50); ``caption`` goes to a same-stem .txt sidecar."""
    frames = np.stack([np.full((h, w, 3), 5 * (i % 50), np.uint8) for i in range(n)])
    write_mp4(frames, path, fps=fps)
    if caption is not None:
        path.with_suffix(".txt").write_text(f"a clip of {path.stem}" if caption == "auto" else caption)


def source_index(clip: np.ndarray) -> list[int]:
    return np.rint(clip[:, clip.shape[1] // 2, clip.shape[2] // 2, 0] / 5.0).astype(int).tolist()


SPEC = BucketSpec.make(fps=8, frames=17, height=32, width=32, multiple=8, max_clips=3)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Mixed sizes and lengths, and bad input: returns the folder."""
    d = tmp_path_factory.mktemp("videos")
    ramp(d / "landscape.mp4", 40, 36, 64)  # 5 s: 2 clips of 17 frames (2 s each, stride 2 s)
    ramp(d / "portrait.mp4", 20, 64, 36)  # 2.5 s: 1 clip
    ramp(d / "square.mp4", 17, 40, 40)  # exactly 17 frames: 1 clip
    ramp(d / "very_long.mp4", 240, 32, 48, fps=16)  # 15 s: capped at --max-clips 3
    ramp(d / "very_short.mp4", 6, 32, 32)  # 0.75 s: one 5-frame clip instead of none
    ramp(d / "blink.mp4", 2, 32, 32)  # 0.25 s: shorter than the shortest bucket
    ramp(d / "no_caption.mp4", 20, 32, 32, caption=None)
    ramp(d / "sliver.mp4", 9, 16, 200)  # aspect 12.5:1: an absurd size
    (d / "unreadable.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    (d / "unreadable.txt").write_text("broken")
    return d


@pytest.fixture(scope="module")
def folder(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("buckets")
    summary = ingest_buckets(scan_folder(videos), out, SPEC, shard_size=2, progress=False)
    return SimpleNamespace(path=out, summary=summary)


# ----------------------------------------------------------------------------- planning


def test_frame_and_spatial_buckets():
    assert frame_buckets(81) == [81, 41, 21, 9, 5]
    assert frame_buckets(17) == [17, 9, 5] and frame_buckets(17, shortest=9) == [17, 9]
    with pytest.raises(ValueError, match="4k\\+1"):
        frame_buckets(16)
    sizes = spatial_buckets(480, 832, 32)  # the 5B's 480p budget, sides multiples of 16 x 2
    assert (480, 832) in sizes and (832, 480) in sizes
    assert all(h % 32 == 0 and w % 32 == 0 and 1 / 3 <= w / h <= 3 for h, w in sizes)
    assert all(abs(h * w / (480 * 832) - 1) < 0.2 for h, w in sizes)
    tiny = spatial_buckets(32, 32, 8)
    assert (32, 32) in tiny and all(min(s) >= 16 and s[0] % 8 == 0 == s[1] % 8 for s in tiny)
    # a portrait phone recording stays portrait, a landscape one landscape
    assert nearest_size(1920, 1080, sizes) == (832, 480)
    assert nearest_size(1080, 1920, sizes) == (480, 832)
    assert clip_starts(5.0, 2.0, 2.0, 8) == [0.0, 2.0] and clip_starts(1.9, 2.0, 2.0, 8) == []
    assert clip_starts(60.0, 2.0, 10.0, 3) == [0.0, 10.0, 20.0]
    plan = SPEC.plan(64, 36, 1.0)  # a 1 s portrait video: the 9-frame bucket
    assert plan == (Bucket(9, 40, 24), [0.0])
    assert SPEC.plan(32, 32, 0.3) is None


def test_bucket_sizes_checked_against_the_model():
    m = {"buckets": {"17x32x48": 3}}
    assert bucket_size_problem(m, 8, 2) is None
    assert "multiple of 32" in bucket_size_problem(m, 32, 4)
    assert "4k+1" in bucket_size_problem({"buckets": {"11x32x32": 1}}, 8, 4)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_plan_gives_every_clip_once_and_every_rank_as_many_batches(world):
    counts = {"17x32x32": 11, "17x24x40": 6, "5x32x32": 1, "9x40x24": 3}
    plan = plan_batches(counts, 4, seed=3, epoch=0, world_size=world)
    assert len(plan) % world == 0
    flat = [x for b in plan for x in b]
    assert sorted(flat) == sorted((n, i) for n, c in counts.items() for i in range(c))
    assert all(len({n for n, _ in b}) == 1 and 1 <= len(b) <= 4 for b in plan)  # one bucket per batch
    assert plan == plan_batches(counts, 4, seed=3, epoch=0, world_size=world)  # deterministic
    assert plan != plan_batches(counts, 4, seed=3, epoch=1, world_size=world)  # reshuffled per epoch
    with pytest.raises(ValueError, match="cannot give each"):
        plan_batches({"5x32x32": 2}, 4, 0, 0, world_size=3)


# ----------------------------------------------------------------------------- decoding clips


def test_stream_clips_picks_frames_at_the_target_fps(tmp_path):
    ramp(tmp_path / "r.mp4", 48, 32, 32, fps=24)  # 2 s at 24 fps
    clips = list(stream_clips(tmp_path / "r.mp4", [0.0, 0.5, 1.6], 5, 8, 16, 24))
    assert [c for c, _, _ in clips] == [0, 1, 2]  # overlapping clips from one pass
    for _, start, frames in clips[:2]:
        assert frames.shape == (5, 16, 24, 3)
        assert source_index(frames) == [int(start * 24) + 3 * i for i in range(5)]
    assert clips[2][2] is None  # 1.6 s + 4 frames at 8 fps ends 0.14 s after the last frame


def test_stream_clips_seeks_over_gaps_and_stops_after_the_last_clip(tmp_path):
    import av

    def long_video(keyint: int) -> None:  # 20 s at 20 fps, a keyframe every ``keyint`` frames
        with av.open(str(tmp_path / "long.mp4"), mode="w") as out:
            stream = out.add_stream("libx264", rate=20)
            stream.height = stream.width = 32
            stream.options = {"x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0"}
            for i in range(400):
                img = np.full((32, 32, 3), 5 * (i % 50), np.uint8)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(stream.encode())

    long_video(400)  # one keyframe: seeking would go back to the start and decode it twice
    stats = {}
    clips = list(stream_clips(tmp_path / "long.mp4", [0.0, 7.0], 5, 4, 32, 32, stats=stats))
    assert stats["seeks"] == 0 and stats["decoded"] == 161  # up to the last frame of the clip at 7-8 s
    assert source_index(clips[1][2]) == [(140 + 5 * i) % 50 for i in range(5)]
    long_video(12)  # a keyframe every 0.6 s
    stats = {}
    clips = list(stream_clips(tmp_path / "long.mp4", [0.0, 7.0, 14.0], 5, 4, 32, 32, stats=stats))
    assert stats["seeks"] == 2  # over the 6 s gaps, to the keyframe before each clip
    # 21 frames per clip plus at most a keyframe interval (12) before each sought clip; the rest of the 400
    # frames (after 15 s) is never decoded
    assert 63 <= stats["decoded"] <= 63 + 2 * 12 and stats["converted"] == 15
    for _, start, frames in clips:
        assert source_index(frames) == [(int(start * 20) + 5 * i) % 50 for i in range(5)]


def test_phone_portrait_with_a_display_rotation_stays_portrait(tmp_path):
    """Phones store portrait video as landscape frames plus a display matrix (-90 degrees): the clip is upright."""
    import av

    with av.open(str(tmp_path / "phone.mp4"), mode="w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height = 64, 36  # stored landscape
        stream.set_display_rotation(-90)  # shown rotated 90 degrees clockwise: 36 wide, 64 tall
        for _ in range(17):
            img = np.zeros((36, 64, 3), np.uint8)
            img[:18] = 255  # the stored top half is white: shown upright, the right half
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    (tmp_path / "phone.txt").write_text("a phone recording")
    summary = ingest_buckets(scan_folder(tmp_path), tmp_path / "out", SPEC, progress=False)
    assert summary.manifest["buckets"] == {"17x40x24": 1}  # portrait
    clip = index_folder(tmp_path / "out")["17x40x24"].load(0)
    assert clip["meta"]["source_size"] == [64, 36] and clip["meta"]["rotation"] == 270
    frame = clip["video"][:, 0]  # (3, 40, 24) in [-1, 1]
    assert frame[:, :, 16:].mean() > 0.8 and frame[:, :, :8].mean() < -0.8  # white right, black left


# ----------------------------------------------------------------------------- writing buckets


def test_mixed_videos_go_to_their_buckets(folder):
    s = folder.summary
    manifest = read_bucket_manifest(folder.path)
    # landscape 2 + very_long 3 (32x48 is nearest 24x40), portrait 1, square 1, very_short 1 (5 frames)
    assert manifest["buckets"] == {"17x24x40": 5, "17x40x24": 1, "17x32x32": 1, "5x32x32": 1}
    assert s.written == 8 and s.videos == 5 and manifest["num_samples"] == 8
    assert dict(s.skipped) == {"too_short": 1, "missing_caption": 1, "bad_size": 1, "undecodable": 1}
    assert manifest["skipped"] == dict(s.skipped)
    assert "buckets: 17x24x40=5" in s.report() and "skipped: 4" in s.report()
    assert sorted(os.listdir(folder.path)) == sorted(
        ["manifest.json", *(f for files in manifest["shards"].values() for f in files)]
    )
    buckets = index_folder(folder.path)
    long_clips = [
        buckets["17x24x40"].load(i)
        for i in range(5)
        if buckets["17x24x40"].entries[i].key.startswith("very_long")
    ]
    metas = sorted((c["meta"] for c in long_clips), key=lambda m: m["start"])
    assert [m["start"] for m in metas] == [0.0, 2.0, 4.0]
    assert all(
        m["fps"] == 8 and m["source_fps"] == 16 and m["source"].endswith("very_long.mp4") for m in metas
    )
    assert all(c["caption"] == "a clip of very_long" for c in long_clips)
    for c in long_clips:  # 8 fps from 16 fps: every other source frame from the clip's start
        first = int(c["meta"]["start"] * 16)
        frames = ((c["video"][0, :, 12, 20] + 1) * 127.5).round().numpy()
        assert np.rint(frames / 5).astype(int).tolist() == [(first + 2 * i) % 50 for i in range(17)]
    portrait = buckets["17x40x24"].load(0)
    assert portrait["video"].shape == (3, 17, 40, 24) and portrait["meta"]["source_size"] == [64, 36]


def test_two_worker_processes_write_the_same_shards(folder, videos, tmp_path):
    """``--workers 2``: videos cut in 2 processes, clips written in the same order: identical shards."""
    summary = ingest_buckets(scan_folder(videos), tmp_path, SPEC, shard_size=2, progress=False, workers=2)
    one, two = read_bucket_manifest(folder.path), read_bucket_manifest(tmp_path)
    assert two["buckets"] == one["buckets"] and two["skipped"] == one["skipped"] and summary.videos == 5
    for files in one["shards"].values():
        for f in files:
            assert (tmp_path / f).read_bytes() == (folder.path / f).read_bytes()


def test_rewrite_removes_stale_buckets_and_a_failed_run_leaves_no_manifest(tmp_path, videos, monkeypatch):
    import wan2.data.clips as clips

    items = [i for i in scan_folder(videos) if i.path.endswith(("landscape.mp4", "portrait.mp4"))]
    ingest_buckets(items, tmp_path, SPEC, shard_size=1, progress=False)
    ingest_buckets(items[:1], tmp_path, SPEC, shard_size=1, progress=False)
    assert read_bucket_manifest(tmp_path)["buckets"] == {"17x24x40": 2}
    assert sorted(os.listdir(tmp_path)) == ["17x24x40-000000.tar", "17x24x40-000001.tar", "manifest.json"]

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(clips, "make_sample", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_buckets(items, tmp_path, SPEC, progress=False)
    assert not (tmp_path / "manifest.json").exists()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_make_shards_buckets_with_caption_index(tmp_path, videos, capsys):
    script = load_script("scripts/make_shards.py", "make_shards")
    with open(tmp_path / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "text"])
        w.writerow([str(videos / "no_caption.mp4"), "captioned by the index"])
    out = tmp_path / "out"
    argv = ["--videos", str(videos), "--out", str(out), "--buckets", "--frames", "17", "--no-progress"]
    rc = script.main(argv + ["--captions", str(tmp_path / "captions.csv"), "--path-column", "file",
                             "--caption-column", "text"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0 and "missing_caption" not in text and f"data.train_shards={out}" in text
    m = read_bucket_manifest(out)
    assert m["info"]["sizes"] == [list(s) for s in spatial_buckets(32, 32, 8)]  # wan_tiny: 4 x 2
    buckets = index_folder(out)
    caps = {buckets[n].load(i)["caption"] for n in buckets for i in range(len(buckets[n]))}
    assert "captioned by the index" in caps
    # a JSONL index with its own caption field; the 5B's sides (multiples of 32)
    (tmp_path / "i.jsonl").write_text(json.dumps({"path": str(videos / "square.mp4"), "desc": "sq"}) + "\n")
    rc = script.main(["--index", str(tmp_path / "i.jsonl"), "--caption-column", "desc", "--out",
                      str(tmp_path / "o5b"), "--buckets", "--model", "wan22_ti2v_5b", "--frames", "17",
                      "--height", "64", "--width", "64", "--no-progress"])  # fmt: skip
    assert rc == 0 and read_bucket_manifest(tmp_path / "o5b")["buckets"] == {"17x64x64": 1}
    for bad, message in (
        (["--model", "no_such_model"], "no model config"),
        (["--max-clips", "0"], "--max-clips: 0 is below 1"),
        (["--max-aspect", "0.5"], "--max-aspect: 0.5 is below 1"),
        (["--clip-stride", "-1"], "--clip-stride: -1.0 is not positive"),
        (["--prefix", "x"], "named after their bucket"),
    ):
        with pytest.raises(SystemExit):
            script.main(argv + bad)
        assert message in capsys.readouterr().err
    assert read_bucket_manifest(out) == m  # the folder of the good run is untouched
    with pytest.raises(SystemExit):
        script.main(["--index", str(tmp_path / "captions.csv"), "--out", str(tmp_path / "x"), "--buckets"])
    assert "needs a header with columns 'path'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reading buckets


def _keys(batch) -> list[str]:
    return list(batch["key"])


def test_two_ranks_two_workers_read_each_clip_once_with_buckets(folder, monkeypatch):
    buckets = index_folder(folder.path)
    every = sorted(b.entries[i].key for b in buckets.values() for i in range(len(b)))
    for epoch in (0, 1):
        parts, batches_per_rank = {}, Counter()
        for rank in range(2):
            ds = BucketBatches(buckets, 2, seed=5, rank=rank, world_size=2)
            ds.set_epoch(epoch)
            for worker in range(2):
                monkeypatch.setenv("WORKER", str(worker))
                monkeypatch.setenv("NUM_WORKERS", "2")
                got = list(ds)
                for b in got:  # one bucket per batch: one clip size, one bucket in the metadata
                    assert len({m["bucket"] for m in b["meta"]}) == 1
                    bucket = Bucket.parse(b["meta"][0]["bucket"])
                    assert b["video"].shape[1:] == (3, bucket.frames, bucket.height, bucket.width)
                parts[(rank, worker)] = [k for b in got for k in _keys(b)]
                batches_per_rank[rank] += len(got)
            assert batches_per_rank[rank] == len(ds)
        flat = [k for p in parts.values() for k in p]
        assert sorted(flat) == every  # each clip exactly once, over 2 ranks x 2 workers
        assert batches_per_rank[0] == batches_per_rank[1]  # DDP: as many steps on every rank
        if epoch == 0:
            first = parts
    assert first != parts  # the next epoch reshuffles


def test_datamodule_with_real_workers_matches_the_plan(folder):
    """2 real DataLoader workers at rank 1 of 2 yield that rank's batches of the plan, in order."""
    buckets = index_folder(folder.path)
    plan = plan_batches({n: len(b) for n, b in buckets.items()}, 2, 0, 0, 2)
    want = [[buckets[n].entries[i].key for n, i in b] for b in plan[1::2]]
    dm = VideoDataModule(str(folder.path), batch_size=2, num_workers=2, seed=0)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2, current_epoch=0)
    loader = dm.train_dataloader()
    assert len(loader) == len(want)
    assert [_keys(b) for b in loader] == want
    assert dm.bucket_counts() == {"17x24x40": 5, "17x40x24": 1, "17x32x32": 1, "5x32x32": 1}
    assert dm.bad_counts()["train"]["seen"] == sum(map(len, want))  # counted across the workers
    # resumed after 2 batches of epoch 0: the rest of that epoch, then epoch 1 whole
    dm.trainer.current_epoch = 0
    loader = dm.train_dataloader()
    loader.load_state_dict({"epoch": 0, "batches_done": 2})
    assert [_keys(b) for b in loader] == want[2:]
    dm.trainer.current_epoch = 1  # the same persistent workers, the next epoch's plan
    plan1 = plan_batches({n: len(b) for n, b in buckets.items()}, 2, 0, 1, 2)
    want1 = [[buckets[n].entries[i].key for n, i in b] for b in plan1[1::2]]
    assert [_keys(b) for b in loader] == want1 != want
    del loader


def test_bucketed_folder_in_a_lightning_fit_logs_bucket_counts(folder):
    import lightning as L

    from wan2.lightning.data import BadSampleLogger

    shapes = []

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            shapes.append(tuple(batch["video"].shape[1:]))
            return (batch["video"].mean() - self.w).pow(2)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = VideoDataModule(str(folder.path), batch_size=2, num_workers=0)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[BadSampleLogger()],
    )
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.global_step == 6  # 17x24x40: 3 batches, one batch for each other bucket
    assert set(shapes) == {(3, 17, 24, 40), (3, 17, 40, 24), (3, 17, 32, 32), (3, 5, 32, 32)}
    m = trainer.callback_metrics
    assert m["data/bucket_17x24x40"] == 5 and m["data/bucket_5x32x32"] == 1
    assert m["data/buckets"] == 4 and m["data/clips"] == 8 and m["data/train_bad"] == 0


def test_config_check_takes_a_bucket_folder(folder, tmp_path):
    from tests.conftest import compose_cfg
    from wan2.config_check import ConfigError, check_train_config

    cfg = compose_cfg(["data=shards", f"data.train_shards={folder.path}"])
    check_train_config(cfg)  # a folder with its manifest is a valid data.train_shards
    assert largest_bucket(str(folder.path)) == Bucket(
        17, 32, 32
    )  # the most pixels x frames: what scripts/plan.py sizes memory for
    assert largest_bucket(str(tmp_path)) is None
    cfg = compose_cfg(["data=shards", f"data.train_shards={folder.path}", "model=wan22_ti2v_5b"])
    with pytest.raises(ConfigError, match="17x24x40.*multiple of 32"):
        check_train_config(cfg)
    shards = [f"data.train_shards={folder.path}/17x32x32-000000.tar", f"data.cache_dir={tmp_path}"]
    with pytest.raises(
        ConfigError, match="data.cache_dir: .* needs data.train_shards to be a bucketed folder"
    ):
        check_train_config(compose_cfg(["data=shards", *shards]))
    with pytest.raises(ValueError, match="needs data.train_shards to be a bucketed folder"):
        VideoDataModule(shards[0].split("=", 1)[1], cache_dir=str(tmp_path))
    cfg = compose_cfg(["data=shards", f"data.train_shards={tmp_path}"])
    with pytest.raises(ConfigError, match="folder without manifest.json"):
        check_train_config(cfg)
    (tmp_path / "manifest.json").write_text("{not json")
    cfg = compose_cfg(["data=shards", f"data.train_shards={tmp_path}"])
    with pytest.raises(ConfigError, match="cannot read the manifest"):
        check_train_config(cfg)


def test_latent_cache_per_bucket(folder, tmp_path, monkeypatch, capsys):
    """``precompute.py --shards FOLDER`` writes one cache per bucket; the DataModule with ``cache_dir`` finds them
    up to date (builds nothing) and trains on latents, a batch per bucket, each clip once."""
    import wan2.data.cache as cache_mod
    from tests.conftest import ROOT

    script = load_script("scripts/precompute.py", "precompute")
    vae = str(ROOT / "pretrained" / "vae_tiny")
    out = tmp_path / "cache"
    argv = ["--vae", vae, "--shards", str(folder.path), "--out", str(out), "--device", "cpu"]
    assert script.main(argv) == 0
    text = capsys.readouterr().out
    assert "wrote 5 clips of bucket 17x24x40" in text
    assert sorted(p.name for p in out.iterdir()) == ["17x24x40", "17x32x32", "17x40x24", "5x32x32"]
    assert script.main(argv) == 0 and capsys.readouterr().out.count("up to date") == 4

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a bucket cache was built again")

    monkeypatch.setattr(cache_mod, "build_latent_cache", no_rebuild)
    backbone = script.load_encoders(vae, None, "cpu")
    dm = VideoDataModule(str(folder.path), batch_size=2, num_workers=0, cache_dir=str(out))
    dm.bind_backbone(backbone)
    dm.prepare_data()
    batches = list(dm.train_dataloader())
    assert len(batches) == 6 and all("video" not in b for b in batches)
    # tiny VAE: 4x space, 2x time, 16 channels
    shapes = {tuple(b["latents"].shape[1:]) for b in batches}
    assert shapes == {(16, 9, 6, 10), (16, 9, 10, 6), (16, 9, 8, 8), (16, 3, 8, 8)}
    index = sorted(i for b in batches for i in b["index"].tolist())
    assert index == list(range(8))  # every clip once, global indices across buckets


def test_bench_decode_section_at_tiny_size():
    """``scripts/bench.py --only decode --tiny``: the keys, one clip per case, a peak RSS (never timings)."""
    import argparse

    bench = load_script("scripts/bench.py", "bench_script")
    out = bench.SECTIONS["decode"](argparse.Namespace(tiny=True, quick=True))
    assert out["file"]["frames"] == 60 and out["whole_file_decoded_uint8_mb"] > 0
    assert [c["case"] for c in out["cases"]] == ["contiguous", "sparse_seek"]
    for c in out["cases"]:
        assert c["clips"] >= 1 and c["bucket"] == "17x64x112" and c["peak_rss_mb"] >= c["rss_before_mb"] > 0
        assert c["decoded_frames_per_s"] > 0 and c["frames_scaled"] <= c["frames_decoded"] <= 60


@pytest.mark.slow
def test_train_lora_on_a_bucketed_folder_with_per_bucket_caches(folder, tmp_path):
    """``train.py objective=lora ... data=shards data.train_shards=FOLDER data.cache_dir=... data.cache_text=true``
    (the data/README command for the tiny stack): one epoch from latents, every clip once, one bucket per step,
    bucket counts in metrics.json."""
    from tests.conftest import ROOT, compose_cfg
    from wan2.lightning.flow_module import FlowMatchingModule
    from wan2.tasks import train

    overrides = [
        "objective=lora",
        f"model.pretrained={ROOT / 'pretrained' / 'wan_tiny_base'}",
        "data=shards",
        f"data.train_shards={folder.path}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.cache_text=true",
        "data.batch_size=2",
        "data.num_workers=0",
        "trainer.max_steps=6",  # one epoch: 3 batches of 17x24x40, one of each other bucket
        "trainer.max_time=null",
        "callbacks.progress=null",
        "logger=csv",
        "export.enabled=false",
        "threads=1",
        f"paths.output_dir={tmp_path / 'run'}",
    ]
    steps = []
    original = FlowMatchingModule.training_step

    def recording_step(self, batch, batch_idx):
        steps.append((tuple(batch["latents"].shape[1:]), batch["index"].tolist(), "text_emb" in batch))
        return original(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FlowMatchingModule, "training_step", recording_step)
        metrics = train(compose_cfg(overrides))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["data/bucket_17x24x40"] == 5 and saved["data/clips"] == 8 and saved["global_step"] == 6
    assert metrics["global_step"] == len(steps) == 6
    assert sorted(i for _, idx, _ in steps for i in idx) == list(range(8))  # every clip once
    assert len({s for s, _, _ in steps}) == 4 and all(t for _, _, t in steps)  # 4 buckets, cached text
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        saved_b[len("data/bucket_") :] for saved_b in saved if saved_b.startswith("data/bucket_")
    )


def test_resume_from_a_lightning_checkpoint_continues_the_epoch(folder, tmp_path):
    """Stopped after 2 of 6 steps of epoch 0 and resumed from last.ckpt: the batches trained are those of one
    uninterrupted run, across the epoch boundary (BucketLoader's state in the checkpoint)."""
    import lightning as L

    seen: list[list[str]] = []

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            seen.append(list(batch["key"]))
            return (batch["video"].mean() - self.w).pow(2)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(steps: int, out, ckpt_path=None) -> list[list[str]]:
        seen.clear()
        trainer = L.Trainer(
            max_steps=steps,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[
                L.pytorch.callbacks.ModelCheckpoint(dirpath=out, save_last=True, every_n_train_steps=1)
            ],
        )
        dm = VideoDataModule(str(folder.path), batch_size=2, num_workers=0, seed=3)
        trainer.fit(Tiny(), datamodule=dm, ckpt_path=ckpt_path)
        return list(seen)

    whole = fit(8, tmp_path / "whole")
    first = fit(2, tmp_path / "cut")
    rest = fit(8, tmp_path / "cut", ckpt_path=tmp_path / "cut" / "last.ckpt")
    assert len(whole) == 8 and first + rest == whole
