"""scripts/compare_runs.py (issue 17.4): a table, compare.csv / compare.json and SVG curves from two tiny runs'
local files; a folder that is not a run gets one line and nothing is written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_train

SCRIPT = ROOT / "scripts" / "compare_runs.py"


def tiny(out, data_dir, lr: str) -> list[str]:
    return [
        "experiment=pretrain_tiny",
        f"paths.output_dir={out}",
        f"paths.data_dir={data_dir}",
        "data.num_train=8",
        "data.batch_size=4",
        "trainer.max_steps=2",
        "trainer.max_time=null",
        "trainer.val_check_interval=1",
        "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=1",
        "data.num_val=2",
        "data.val_batch_size=2",
        "objective.sample.num_inference_steps=1",
        f"objective.lr={lr}",
        "callbacks.progress=null",
        "logger=csv",
        "export.enabled=false",
        "threads=1",
    ]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    runs = [tmp / "lr_a", tmp / "lr_b"]
    for run, lr in zip(runs, ["0.001", "0.003"]):
        res = run_train(tiny(run, tmp / "data", lr), timeout=400)
        assert res.returncode == 0, res.stderr[-3000:]
    return runs


def compare(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_table_files_and_plots(two_runs, tmp_path):
    out = tmp_path / "cmp"
    res = compare(*two_runs, "--out", out)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("|")]
    assert len(lines) == 4  # header, rule, one row per run
    assert "objective.lr=0.001" in lines[2] and "objective.lr=0.003" in lines[3]
    assert "val/rank_trajectory/accuracy" in lines[0] and "train/loss" in lines[0]
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["dir"] for r in rows] == [str(p) for p in two_runs]
    assert all(r["global_step"] == "2" for r in rows)
    result = json.loads((out / "compare.json").read_text())
    assert [r["final"]["global_step"] for r in result["runs"]] == [2, 2]
    svg = (out / "curves" / "val_rank_trajectory_accuracy.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2  # one line per run
    assert "curves/train_loss.svg" in result["plots"]


def test_metrics_filter(two_runs, tmp_path):
    res = compare(*two_runs, "--out", tmp_path / "cmp", "--metrics", "val/")
    assert res.returncode == 0, res.stderr
    header = res.stdout.splitlines()[0]
    assert "val/rank_trajectory/accuracy" in header and "train/loss" not in header


def test_not_a_run_is_one_line_and_writes_nothing(two_runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "cmp"
    res = compare(two_runs[0], empty, "--out", out)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert str(empty) in res.stderr and "not a run folder" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json")
    res = compare(bad, "--out", out)
    assert res.returncode == 2 and "metrics.json" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
