"""Leftovers, damaged files and divergence (issue 14, classes 9 and 10).

- Temp files of killed checkpoint / export writes are removed when the next run starts in that folder;
  ``checkpoints/`` deleted while a checkpoint is being written is made again and the run goes on.
- A truncated ``last.ckpt`` is reported as truncated or corrupt, never as "refused to unpickle"; a truncated
  or damaged latent cache is found by the sizes and sha256 in its index and rebuilt.
- A diverging run (``objective.lr=1e30``, or weights blown up mid-run) stops naming
  ``checkpoints/last_good.ckpt``, which holds the last weights that still trained, not the huge ones.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.test_faults import tiny_run_args
from wan2.lightning.reliability import (
    AtomicCheckpointIO,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    safe_torch_load,
)

INJECT = "+callbacks.faults._target_=wan2.testing.FaultInjector"


def tiny(out: Path, data: Path, steps: int, *extra: str) -> list[str]:
    """test_faults' tiny run (later overrides win): 16 clips, ``steps`` steps, no validation."""
    return tiny_run_args(
        out, data, "data.num_train=16", f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", *extra
    )


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WAN2_RUN_DIR", None)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def max_abs(state_dict: dict) -> float:
    return max(
        float(t.abs().max()) for t in state_dict.values() if torch.is_tensor(t) and t.is_floating_point()
    )


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- damaged checkpoints
def _variants(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, expected kind: 'corrupt' | 'refused')."""
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.randn(20_000)}, "global_step": 7}, buf)
    whole = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"state_dict": {}, "x": Payload(tmp_path / "MARKER")}, buf)
    evil = buf.getvalue()
    cases = {f"cut at {f:.0%}": (whole[: int(len(whole) * f)], "corrupt") for f in (0.01, 0.5, 0.9, 0.99)}
    cases.update(
        {
            "empty": (b"", "corrupt"),
            "last byte missing": (whole[:-1], "corrupt"),
            "text": (b"not a checkpoint\n", "corrupt"),
            "zeros": (bytes(4096), "corrupt"),
            "zip magic then noise": (b"PK\x03\x04" + os.urandom(4000), "corrupt"),
            "archive with a payload, cut": (evil[: len(evil) // 2], "corrupt"),
            "archive with a payload": (evil, "refused"),
            "raw pickle payload": (pickle.dumps(Payload(tmp_path / "MARKER")), "refused"),
        }
    )
    return cases


def test_truncated_checkpoints_are_reported_as_truncated_not_refused(tmp_path):
    """12 damaged or crafted files: one line naming the file each, 'truncated or corrupt' for damage and
    'refused to unpickle' only for a pickle that names other objects; no payload runs."""
    cases = _variants(tmp_path)
    for name, (data, kind) in cases.items():
        path = tmp_path / "last.ckpt"
        path.write_bytes(data)
        for load in (
            safe_torch_load,
            lambda p: safe_torch_load(p, mmap=True),
            AtomicCheckpointIO().load_checkpoint,
        ):
            with pytest.raises(UnsafeCheckpointError) as err:
                load(path)
            msg = str(err.value)
            assert "\n" not in msg and str(path) in msg, (name, msg)
            if kind == "corrupt":
                assert isinstance(err.value, CorruptCheckpointError), (name, msg)
                assert "refused" not in msg and ("truncated" in msg or "corrupt" in msg), (name, msg)
            else:
                assert not isinstance(err.value, CorruptCheckpointError) and "refused to unpickle" in msg, (
                    name
                )
    assert not (tmp_path / "MARKER").exists()
    assert len(cases) == 12


# ----------------------------------------------------------------------------- checkpoints/ deleted
def test_checkpoint_folder_deleted_mid_write_is_made_again(tmp_path, monkeypatch):
    """The folder vanishes after the temporary file was written and before the rename: written again."""
    folder = tmp_path / "checkpoints"
    real_save = torch.save
    calls = []

    def save_then_delete(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            shutil.rmtree(folder)  # the open temp file is now unlinked; os.replace will fail

    monkeypatch.setattr(torch, "save", save_then_delete)
    AtomicCheckpointIO().save_checkpoint({"global_step": 3, "w": torch.ones(3)}, folder / "last.ckpt")
    monkeypatch.setattr(torch, "save", real_save)
    assert len(calls) == 2
    assert safe_torch_load(folder / "last.ckpt")["global_step"] == 3
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]  # no temp file left


def test_leftovers_are_removed_at_start_and_a_deleted_checkpoint_folder_is_survived(tmp_path):
    """A run folder holding what killed writes leave (names as AtomicCheckpointIO, atomic_dir,
    atomic_write_text, swap_in and FSDP2Strategy make them): removed when the next run starts there, the
    user's own files kept. During that run ``checkpoints/`` is deleted while step 2 is being saved: the run
    finishes and ``last.ckpt`` holds the final step."""
    out, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    leftovers = [
        Path(tempfile.mkstemp(prefix=".last.ckpt.tmp-", dir=ckpt)[1]),
        Path(tempfile.mkstemp(prefix=".epoch=0-step=3.ckpt.tmp-", dir=ckpt)[1]),
        Path(tempfile.mkstemp(prefix=".last_good.ckpt.tmp-", dir=ckpt)[1]),
        Path(tempfile.mkdtemp(prefix=".export.tmp-", dir=out)),
        Path(tempfile.mkstemp(prefix=".metrics.json.tmp-", dir=out)[1]),
        out / ".export.old-4242",
        ckpt / "last.ckpt.tmp",
    ]
    for d in (leftovers[3], leftovers[5], leftovers[6]):
        d.mkdir(exist_ok=True)
        (d / "part.safetensors").write_bytes(os.urandom(1000))
    keep = [out / "notes.tmp", out / "notes.old", out / ".hidden"]
    for p in keep:
        p.write_text("the user's")

    r = run(tiny(out, tmp_path / "data", 4, INJECT, "+callbacks.faults.rm_checkpoints_steps=[2]"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "removed 7 leftovers of interrupted writes" in r.stdout + r.stderr  # the run log (stdout)
    assert not [p for p in leftovers if p.exists() or p.is_symlink()]
    assert all(p.read_text() == "the user's" for p in keep)
    assert safe_torch_load(ckpt / "last.ckpt")["global_step"] == 4
    assert "Traceback" not in r.stderr
    assert not list(ckpt.glob(".*.tmp-*"))


# ----------------------------------------------------------------------------- latent cache
@pytest.fixture(scope="module")
def cache_dm(tmp_path_factory):
    from omegaconf import OmegaConf

    from wan2.backbones.stack import build_backbone
    from wan2.lightning.data import LatentDataModule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = OmegaConf.load(ROOT / "configs/model/wan_tiny.yaml")
    backbone = build_backbone(
        cfg, components=("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
    )
    rj = {"num_frames": 5, "mix": {"rank_up": 1, "rank_down": 1, "hold": 1, "first_entry": 1}}
    dm = LatentDataModule(rankjump=rj, num_train=4, cache_dir=str(tmp_path_factory.mktemp("cache")))
    dm.bind_backbone(backbone.eval())
    dm.prepare_data()
    return dm


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif how == "bit flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bad index":
        path.write_text(data.decode()[: len(data) // 2])


@pytest.mark.parametrize(
    "file, how, says",
    [
        ("latents.safetensors", "truncated", "truncated"),
        ("latents.safetensors", "empty", "truncated"),
        ("latents.safetensors", "bit flip", "sha256"),
        ("index.json", "bad index", "index.json is damaged"),
    ],
)
def test_a_damaged_latent_cache_is_found_and_rebuilt(cache_dm, file, how, says):
    from wan2.data.cache import CorruptCacheError, LatentCacheDataset, cache_mismatch

    path = cache_dm.cache_path()
    good = LatentCacheDataset(path, cache_dm.backbone).latents.clone()
    _damage(path / file, how)
    why = cache_mismatch(path, cache_dm.backbone)
    assert why is not None and says in why, why
    with pytest.raises(CorruptCacheError, match=f"{path.name}.*{says}") as err:
        LatentCacheDataset(path, cache_dm.backbone)
    assert "\n" not in str(err.value)
    cache_dm.prepare_data()  # what a run does first: rebuilds it
    assert cache_mismatch(path, cache_dm.backbone) is None
    assert torch.equal(LatentCacheDataset(path, cache_dm.backbone).latents, good)


def test_a_cache_index_without_checksums_still_catches_truncation(cache_dm):
    """Caches written before checksums were recorded: the safetensors header gives the length."""
    import json

    from wan2.data.cache import cache_mismatch

    path = cache_dm.cache_path()
    index = json.loads((path / "index.json").read_text())
    index.pop("files")
    (path / "index.json").write_text(json.dumps(index))
    assert cache_mismatch(path, cache_dm.backbone) is None
    _damage(path / "latents.safetensors", "truncated")
    assert "truncated" in cache_mismatch(path, cache_dm.backbone)
    cache_dm.prepare_data()
    assert cache_mismatch(path, cache_dm.backbone) is None


# ----------------------------------------------------------------------------- divergence
def test_divergence_names_the_last_good_state_not_the_huge_weights(tmp_path):
    """``objective.lr=1e30``: the first update makes every weight ~1e29 (finite), the next loss is NaN; the
    stop line names last_good.ckpt, which holds the starting weights, while last.ckpt holds the huge ones.
    Weights blown up after step 5 of a healthy run (and checkpointed): last_good.ckpt is the checkpoint of
    step 4, finite, and resuming from it trains on."""
    data = tmp_path / "data"
    out = tmp_path / "lr"
    r = run(tiny(out, data, 8, "objective.lr=1e30", "reliability.max_nonfinite_in_row=3"))
    assert r.returncode == 1, r.stderr[-3000:]
    (line,) = error_lines(r.stderr)
    good, last = out / "checkpoints" / "last_good.ckpt", out / "checkpoints" / "last.ckpt"
    assert f"The last good state is {good} (step 0," in line and "Traceback" not in r.stderr
    assert max_abs(safe_torch_load(good)["state_dict"]) < 100
    assert max_abs(safe_torch_load(last)["state_dict"]) > 1e20  # what the message used to name

    out = tmp_path / "blowup"
    r = run(
        tiny(
            out, data, 12, INJECT, "+callbacks.faults.blowup_steps=[5]", "reliability.max_nonfinite_in_row=3"
        )
    )
    assert r.returncode == 1, r.stderr[-3000:]
    (line,) = error_lines(r.stderr)
    good = out / "checkpoints" / "last_good.ckpt"
    assert f"The last good state is {good} (step 4," in line
    state = safe_torch_load(good)
    assert state["global_step"] == 4 and max_abs(state["state_dict"]) < 100
    assert max_abs(safe_torch_load(out / "checkpoints" / "last.ckpt")["state_dict"]) > 1e20
    # resuming from it as the line says trains on
    r = run(tiny(out, data, 6, f"ckpt_path={good}"))
    assert r.returncode == 0, r.stderr[-3000:]
    state = safe_torch_load(out / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 6 and max_abs(state["state_dict"]) < 100
