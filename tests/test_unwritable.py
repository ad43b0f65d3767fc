"""Unwritable output folders (issue 14, item 7): train.py and evaluate.py answer one line naming the key and the
path, exit 2, before Hydra creates its run folder (no traceback, nothing created).

Tests run as root, for whom permission bits do not count: the bad inputs are ones that fail for root too (a path
under a regular file or a device, the file itself, /proc, /sys, a name too long, a read-only mount where this
machine lets the test mount one)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from wan2.startup import dir_problem


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@contextlib.contextmanager
def read_only_mount(where: Path):
    """A read-only tmpfs at ``where`` (root with CAP_SYS_ADMIN), else None."""
    where.mkdir()
    ok = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True
    )
    try:
        yield where if ok.returncode == 0 else None
    finally:
        if ok.returncode == 0:
            subprocess.run(["umount", str(where)], capture_output=True)


def bad_dirs(tmp_path: Path) -> list[str]:
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me\n")
    return [
        str(blocker / "run"),  # under a regular file
        str(blocker),  # the file itself
        "/dev/null/run",  # under a device
        "/proc/wan2-run",  # /proc takes no new folders, not even from root
        "/sys/wan2-run",
        str(tmp_path / ("x" * 300) / "run"),  # a name longer than the file system allows
    ]


def assert_one_line(r: subprocess.CompletedProcess, key: str, path: str) -> None:
    assert r.returncode == 2, (path, r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith(f"error: {key}: cannot write to {path!r}"), lines[0]
    assert "Traceback" not in r.stderr


def test_train_unwritable_output_dir_is_one_line(tmp_path):
    paths = bad_dirs(tmp_path)
    for path in paths:
        assert_one_line(
            run("train.py", f"paths.output_dir={path}", "trainer.max_steps=1"), "paths.output_dir", path
        )
    r = run("train.py", "hydra.run.dir=/proc/wan2-hydra")
    assert_one_line(r, "hydra.run.dir", "/proc/wan2-hydra")
    with read_only_mount(tmp_path / "ro") as ro:
        if ro is not None:
            assert_one_line(run("train.py", f"paths.output_dir={ro}/run"), "paths.output_dir", f"{ro}/run")
    assert (tmp_path / "a_file").read_text() == "keep me\n"
    assert not Path("/proc/wan2-run").exists() and not Path("/sys/wan2-run").exists()
    print(f"train.py: {len(paths) + 2} unwritable folders, one line each")


def test_evaluate_unwritable_out_is_one_line(tmp_path):
    paths = bad_dirs(tmp_path)
    for path in paths:
        assert_one_line(run("evaluate.py", f"out={path}", "logger=none"), "out", path)
    # out defaults to paths.output_dir: the key evaluate writes to is named
    assert_one_line(run("evaluate.py", "paths.output_dir=/proc/wan2-eval"), "out", "/proc/wan2-eval")
    assert (tmp_path / "a_file").read_text() == "keep me\n"


def test_probe_creates_nothing(tmp_path):
    """The check makes and removes a probe folder in the nearest existing ancestor: nothing stays."""
    assert dir_problem(tmp_path / "a" / "b" / "c") is None
    assert dir_problem(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["a_file", "a_file/x/y"])
def test_probe_names_the_file_in_the_way(tmp_path, name):
    (tmp_path / "a_file").write_text("x")
    assert "is not a folder" in dir_problem(tmp_path / name)
