"""Untrusted checkpoint files (issue 14, class 1): no file wan2 resumes from can run code.

A sharded (FSDP2 / torch.distributed.checkpoint) checkpoint folder holds ``meta.pt``, ``.metadata`` (which
torch itself reads with plain ``pickle.load``) and ``.distcp`` shards whose non-tensor entries torch unpickles
with ``weights_only=False``. Each payload below writes a marker file when it runs; every test asserts the
marker is absent and the refusal is one line naming the file. The stock torch reader is run once on the same
payload as a control: it does write the marker, so the payloads are live.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from wan2.lightning.reliability import (
    DCP_GLOBALS,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    check_sharded_checkpoint,
    read_dcp_metadata,
    safe_torch_load,
)

FSDP_CPU = (
    "trainer=fsdp",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.precision=32-true",
    "trainer.strategy.param_dtype=null",
)


class Payload:
    """Unpickling it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def env() -> dict:
    e = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    e.pop("WAN2_RUN_DIR", None)
    return e


def train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def tiny(out: Path, data: Path, steps: int, *extra: str) -> list[str]:
    return [
        "experiment=pretrain_tiny",
        f"paths.output_dir={out}",
        f"paths.data_dir={data}",
        "data.num_train=8",
        "data.batch_size=4",
        f"trainer.max_steps={steps}",
        "trainer.max_time=null",
        "trainer.limit_val_batches=0",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.progress=null",
        "logger=csv",
        "export.enabled=false",
        "threads=1",
        *extra,
    ]


def one_line_refusal(r: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, exactly one non-empty stderr line, starting with 'error:' and naming each of ``names``."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-3000:]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def fsdp_ckpt(tmp_path_factory) -> Path:
    """A real sharded checkpoint: 2 steps of trainer=fsdp on 1 CPU process (gloo)."""
    root = tmp_path_factory.mktemp("fsdp")
    r = train(*tiny(root / "run", root / "data", 2, *FSDP_CPU))
    assert r.returncode == 0, r.stderr[-3000:]
    last = root / "run" / "checkpoints" / "last.ckpt"
    assert (last / ".metadata").is_file() and (last / "meta.pt").is_file()
    return last


def crafted_copy(src: Path, dst: Path, file: str, payload: bytes) -> Path:
    shutil.copytree(src, dst)
    (dst / file).write_bytes(payload)
    return dst


# ----------------------------------------------------------------------------- the restricted unpickler
def test_restricted_unpickler_reads_a_real_fsdp_checkpoint(fsdp_ckpt):
    """A real FSDP2 ``.metadata`` loads with the allow-list, which holds exactly the globals it uses (+ dtypes,
    paths of other systems, OrderedDict); the whole folder passes the pre-check."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    with open(fsdp_ckpt / ".metadata", "rb") as f:
        Recorder(f).load()
    meta = read_dcp_metadata(fsdp_ckpt / ".metadata")
    assert isinstance(meta, Metadata) and len(meta.state_dict_metadata) > 100
    assert any(isinstance(m, BytesStorageMetadata) for m in meta.state_dict_metadata.values())
    allowed = {(m, n) for m, names in DCP_GLOBALS.items() for n in names}
    dtypes = {(m, n) for m, n in seen if m == "torch" and isinstance(getattr(torch, n), torch.dtype)}
    assert seen - dtypes <= allowed, seen - allowed
    assert {m for m, _ in seen} >= {"torch.distributed.checkpoint.metadata", "torch"}
    check_sharded_checkpoint(fsdp_ckpt)


@pytest.mark.parametrize(
    "global_",
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("torch.distributed.checkpoint.metadata", "os.system"),  # a dotted name through an allowed module
        ("torch.distributed.checkpoint.metadata", "torch"),
        ("torch", "load"),
        ("torch.serialization", "load"),
    ],
)
def test_restricted_unpickler_refuses_every_other_global(tmp_path, global_):
    """A protocol-4 pickle calling ``module.name('touch MARKER')``: refused before the name is looked up."""
    marker = tmp_path / "MARKER"
    module, name = global_
    arg = f"touch {marker}".encode()

    def unicode(s: bytes) -> bytes:
        return b"\x8c" + bytes([len(s)]) + s  # SHORT_BINUNICODE

    data = (
        b"\x80\x04" + unicode(module.encode()) + unicode(name.encode()) + b"\x93" + unicode(arg) + b"\x85R."
    )
    meta = tmp_path / ".metadata"
    meta.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata.*refused to unpickle") as err:
        read_dcp_metadata(meta)
    assert "\n" not in str(err.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------- the load path itself
def test_sharded_load_refuses_a_file_swapped_after_the_check(tmp_path):
    """What ``FSDP2Strategy.load_checkpoint`` reads through (``load_sharded``): a crafted ``.metadata`` and a
    crafted non-tensor entry are refused while loading, as one ``UnsafeCheckpointError``; the stock reader
    runs the very same payloads (the control)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    from wan2.lightning.distributed import load_sharded

    marker = tmp_path / "MARKER"
    good = tmp_path / "good"
    dcp.save({"w": torch.randn(4), "lr": 0.1}, checkpoint_id=good)
    state = {"w": torch.zeros(4), "lr": 0.0}
    load_sharded(state, good)  # a plain one loads
    assert state["lr"] == 0.1 and torch.count_nonzero(state["w"]) == 4

    swapped = crafted_copy(good, tmp_path / "swapped", ".metadata", pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match="refused to unpickle"):
        load_sharded({"w": torch.zeros(4), "lr": 0.0}, swapped)
    assert not marker.exists()

    entry = tmp_path / "entry"  # the metadata is genuine, the entry "lr" is a pickled payload
    dcp.save({"w": torch.randn(4), "lr": Payload(marker)}, checkpoint_id=entry)
    with pytest.raises(UnsafeCheckpointError, match="'lr': refused to unpickle"):
        load_sharded({"w": torch.zeros(4), "lr": 0.0}, entry)
    assert not marker.exists()
    torch.save({}, entry / "meta.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"__0_0\.distcp.*\(lr\): refused to unpickle"):
        check_sharded_checkpoint(entry)
    assert not marker.exists()

    # control: torch's own reader runs both payloads
    with pytest.raises(AttributeError):  # os.system's exit code is no Metadata: torch fails after running it
        FileSystemReader(swapped).read_metadata()
    assert marker.exists()
    marker.unlink()
    dcp.load({"w": torch.zeros(4), "lr": 0.0}, checkpoint_id=entry)
    assert marker.exists()


def test_shards_named_outside_the_folder_are_refused(fsdp_ckpt, tmp_path):
    from torch.distributed.checkpoint.metadata import Metadata

    meta: Metadata = read_dcp_metadata(fsdp_ckpt / ".metadata")
    index = next(iter(meta.storage_data))
    meta.storage_data[index].relative_path = "../../etc/passwd"
    folder = crafted_copy(fsdp_ckpt, tmp_path / "ckpt", ".metadata", pickle.dumps(meta))
    with pytest.raises(UnsafeCheckpointError, match="outside its folder"):
        check_sharded_checkpoint(folder)


# ----------------------------------------------------------------------------- through train.py
@pytest.fixture(scope="module")
def crafted(fsdp_ckpt, tmp_path_factory) -> tuple[Path, Path, dict[str, Path]]:
    """Crafted copies of the real checkpoint: a payload as ``.metadata``, as ``meta.pt`` (torch.save of an
    object); plus the marker they would create."""
    root = tmp_path_factory.mktemp("crafted")
    marker = root / "MARKER"
    folders = {
        ".metadata": crafted_copy(fsdp_ckpt, root / "metadata", ".metadata", pickle.dumps(Payload(marker))),
        "meta.pt": shutil.copytree(fsdp_ckpt, root / "meta_pt"),
    }
    torch.save({"state_dict": {}, "x": Payload(marker)}, folders["meta.pt"] / "meta.pt")
    return root, marker, folders


@pytest.mark.parametrize("file", [".metadata", pytest.param("meta.pt", marks=pytest.mark.slow)])
def test_train_refuses_a_crafted_sharded_checkpoint_in_one_line(crafted, file):
    """``ckpt_path=<folder>`` and ``ckpt_path=last`` (the folder as the run's ``checkpoints/last.ckpt``): exit 2,
    one line naming the file, before anything is built; the payload never runs."""
    root, marker, folders = crafted
    folder = folders[file]
    r = train(*tiny(root / f"direct{file}", root / "data", 2, *FSDP_CPU, f"ckpt_path={folder}"))
    one_line_refusal(r, str(folder / file), "refused to unpickle")
    assert not marker.exists()

    out = root / f"last{file}"
    shutil.copytree(folder, out / "checkpoints" / "last.ckpt")
    r = train(*tiny(out, root / "data", 2, *FSDP_CPU, "ckpt_path=last"))
    one_line_refusal(r, str(out / "checkpoints" / "last.ckpt" / file), "refused to unpickle")
    assert not marker.exists()
    assert (out / "checkpoints" / "last.ckpt" / file).is_file()  # nothing deleted


def test_truncated_checkpoints_are_called_truncated_not_refused(tmp_path):
    """A truncated ``last.ckpt`` (and ``.metadata``): one line 'truncated or corrupt', never 'refused to
    unpickle', with the other checkpoints of the folder named."""
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.randn(1000)}, "global_step": 3}, ckpt / "epoch=0-step=3.ckpt")
    whole = (ckpt / "epoch=0-step=3.ckpt").read_bytes()
    (ckpt / "last.ckpt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        safe_torch_load(ckpt / "last.ckpt")
    r = train(*tiny(tmp_path / "run", tmp_path / "data", 2, "ckpt_path=last"))
    line = one_line_refusal(r, str(ckpt / "last.ckpt"), "truncated or corrupt", "epoch=0-step=3.ckpt")
    assert "refused" not in line


def test_train_resumes_a_real_sharded_checkpoint_through_the_safe_reader(fsdp_ckpt, tmp_path):
    """The genuine folder resumes in its own run folder (FSDP2Strategy.load_checkpoint ->
    SafeFileSystemReader / SafeLoadPlanner): step 2 -> 3; a non-FSDP run given it says in one line to use
    trainer=fsdp. Last in this file: it moves the shared checkpoint on."""
    out = fsdp_ckpt.parent.parent
    r = train(*tiny(out, tmp_path / "data", 3, "ckpt_path=last"))
    one_line_refusal(r, "sharded (FSDP) checkpoint", "trainer=fsdp")
    r = train(*tiny(out, out.parent / "data", 3, *FSDP_CPU, "ckpt_path=last"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert safe_torch_load(fsdp_ckpt / "meta.pt")["global_step"] == 3
