"""A training run through ``train()`` on shards holding 100 bad samples among good ones (issue 8, point 5).

Five kinds of damage, 20 samples each, spread over 10 shards: corrupt bytes, truncated mp4, zero-byte mp4,
wrong size (10 at 48x48, 10 with 9 frames) and no caption (10 missing, 10 blank). The run (tiny model,
``data=shards``, two DataLoader workers, one epoch) must finish, count every bad sample by kind in its
metrics, and train on every good sample once and on no bad one.
"""

import csv
import hashlib
import json
import struct

import numpy as np
import pytest

from tests.conftest import compose_cfg
from wan2.data.rankjump import RankJumpConfig
from wan2.data.shards import (
    BAD_KINDS,
    BadSample,
    SampleSpec,
    brace_pattern,
    decode_sample,
    mp4_damage,
    rankjump_samples,
    write_shards,
)
from wan2.data.video import decode_mp4, encode_mp4
from wan2.lightning.flow_module import FlowMatchingModule
from wan2.tasks import train

CFG = RankJumpConfig()  # 17 frames, 32x32: the tiny model's clips
NUM_GOOD, NUM_SHARDS, BATCH = 300, 10, 16
# injected damage -> the kind the reader must count it as, and how many
INJECTED = {
    "corrupt": ("corrupt", 20),  # bytes changed inside the video stream (the decoder would conceal it)
    "truncated": ("truncated", 20),
    "zero_byte": ("empty", 20),
    "size_48": ("wrong_size", 10),
    "frames_9": ("wrong_frames", 10),
    "no_txt": ("no_caption", 10),
    "blank_txt": ("no_caption", 10),
}


def _mdat_payload(mp4: bytes) -> tuple[int, int]:
    """(start, end) of the mdat box's payload."""
    pos = 0
    while pos + 8 <= len(mp4):
        size, kind = struct.unpack(">I4s", mp4[pos : pos + 8])
        if kind == b"mdat":
            return pos + 8, pos + size
        pos += size
    raise AssertionError("no mdat box")


def damage(kind: str, sample: dict, rng: np.random.Generator) -> dict:
    """A damaged copy of a good tar sample (the other members, .sha256 included, left as written)."""
    out = dict(sample, __key__=f"bad_{kind}_{sample['__key__'].replace('-', '_')}")
    mp4 = sample["mp4"]
    if kind == "corrupt":
        start, end = _mdat_payload(mp4)
        data = bytearray(mp4)
        for i in rng.choice(np.arange(start + (end - start) // 2, end), 8, replace=False):  # past x264's SEI
            data[i] ^= 0xFF
        out["mp4"] = bytes(data)
    elif kind == "truncated":
        out["mp4"] = mp4[: int(len(mp4) * rng.uniform(0.2, 0.9))]
        assert mp4_damage(out["mp4"]) == "truncated"
    elif kind == "zero_byte":
        out["mp4"] = b""
    elif kind in ("size_48", "frames_9"):  # well-formed videos of the wrong shape, with a matching checksum
        frames = decode_mp4(mp4)  # (17, 32, 32, 3)
        frames = (
            np.pad(frames, ((0, 0), (8, 8), (8, 8), (0, 0)), mode="edge") if kind == "size_48" else frames[:9]
        )
        out["mp4"] = encode_mp4(frames, CFG.fps)
        out["sha256"] = hashlib.sha256(out["mp4"]).hexdigest().encode()
    elif kind == "no_txt":
        del out["txt"]
    elif kind == "blank_txt":
        out["txt"] = b" \n"
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """10 shards of 40: 300 good RankJump clips and the 100 damaged ones at random places."""
    out = tmp_path_factory.mktemp("bad_shards")
    rng = np.random.default_rng(0)
    good = list(rankjump_samples(CFG, "train", NUM_GOOD))
    sources = iter(rankjump_samples(CFG, "val", sum(n for _, n in INJECTED.values())))
    bad = [damage(kind, next(sources), rng) for kind, (_, n) in INJECTED.items() for _ in range(n)]
    order = rng.permutation(len(good) + len(bad))
    samples = [(good + bad)[i] for i in order]
    m = write_shards(samples, out, prefix="mixed", shard_size=len(samples) // NUM_SHARDS)
    assert m["num_shards"] == NUM_SHARDS
    return {
        "pattern": brace_pattern(out, "mixed", m["num_shards"]),
        "good": [s["__key__"] for s in good],
        "bad": [s["__key__"] for s in bad],
        "corrupt": [s for s in bad if s["__key__"].startswith("bad_corrupt_")],
    }


@pytest.fixture(scope="module")
def run(shards, tmp_path_factory):
    """One epoch of the tiny flow-matching model on the shards; records the keys each training step got."""
    tmp = tmp_path_factory.mktemp("bad_run")
    overrides = [
        "data=shards",
        f"data.train_shards='{shards['pattern']}'",  # quoted: Hydra parses braces
        f"data.batch_size={BATCH}",
        "data.num_workers=2",  # counts made in the workers must reach the metrics
        "data.shuffle_buffer=32",
        "data.max_bad_fraction=0.5",
        "trainer.max_steps=-1",
        "++trainer.max_epochs=1",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
        "callbacks.progress=null",
        "logger=csv",
        "export.enabled=false",
        "threads=1",
        "model.transformer.num_layers=2",  # the tiny model, shallower: this run is about the data
        f"paths.root_dir={tmp}",
        f"paths.outputs_dir={tmp}/outputs",
        f"paths.output_dir={tmp}/run",
    ]
    steps: list[list[str]] = []
    original = FlowMatchingModule.training_step

    def recording_step(self, batch, batch_idx):
        assert tuple(batch["video"].shape[1:]) == (3, 17, 32, 32)
        assert len(batch["key"]) == batch["video"].shape[0] == len(batch["caption"])
        steps.append(list(batch["key"]))
        return original(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FlowMatchingModule, "training_step", recording_step)
        metrics = train(compose_cfg(overrides, root_dir=None))  # paths.root_dir: in the overrides
    return {"metrics": metrics, "steps": steps, "dir": tmp / "run"}


def expected_counts() -> dict[str, int]:
    counts = dict.fromkeys(BAD_KINDS, 0)
    for kind, n in INJECTED.values():
        counts[kind] += n
    return counts


def test_run_finishes_and_counts_every_bad_sample_by_kind(run):
    metrics = run["metrics"]
    saved = json.loads((run["dir"] / "metrics.json").read_text())
    total_bad = sum(n for _, n in INJECTED.values())
    assert total_bad == 100
    for m in (metrics, saved):
        assert {k: int(m[f"data/train_{k}"]) for k in BAD_KINDS} == expected_counts()
        assert m["data/train_bad"] == total_bad
        assert m["data/train_seen"] - m["data/train_bad"] == NUM_GOOD  # good samples in one epoch
        assert m["data/train_fraction"] == pytest.approx(total_bad / (NUM_GOOD + total_bad))
        assert m["global_step"] == len(run["steps"])
    print(
        "bad-sample counts:",
        {k: int(metrics[f"data/train_{k}"]) for k in BAD_KINDS if metrics[f"data/train_{k}"]},
    )


def test_no_bad_sample_reaches_training_and_every_good_one_does(run, shards):
    used = [k for step in run["steps"] for k in step]
    assert not set(used) & set(shards["bad"])
    assert sorted(used) == sorted(shards["good"])  # each good sample exactly once in the epoch
    assert max(len(s) for s in run["steps"]) == BATCH


def test_corrupt_samples_need_the_checksum(shards):
    """Without their .sha256, some corrupt clips decode to clips of the right shape: the damage is concealed."""
    spec = SampleSpec(17, 32, 32)
    passed = 0
    for sample in shards["corrupt"]:
        with pytest.raises(BadSample, match="corrupt"):
            decode_sample(sample, spec)
        try:
            decode_sample({k: v for k, v in sample.items() if k != "sha256"}, spec)
            passed += 1
        except BadSample:  # the decoder noticed (undecodable) or lost frames (wrong_frames)
            pass
    print(f"corrupt clips that decode without a checksum: {passed}/{len(shards['corrupt'])}")
    assert passed > 0


def test_counts_in_the_csv_log(run):
    with open(run["dir"] / "csv" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("data/train_bad")]
    assert len(rows) == 1  # logged once, at the end of the epoch
    assert float(rows[0]["data/train_bad"]) == 100 and float(rows[0]["data/train_corrupt"]) == 20
