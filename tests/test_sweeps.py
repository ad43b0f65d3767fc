"""Sweeps researchers can trust (issue 17, items 1 and 2): one run folder per multirun job, no fixed folder shared
by a sweep, no resume across training configs, the sweeper's objective, an Optuna search, alpha following rank."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.conftest import compose_cfg, run_train

# a 2-step LoRA job on the shipped tiny base (about 20 s)
TINY = [
    "experiment=lora_rankup",
    "trainer.max_steps=2",
    "trainer.limit_val_batches=0",
    "data.num_train=4",
    "data.batch_size=2",
    "callbacks.progress=null",
    "callbacks.text_progress.every_n_steps=1",
    "logger=csv",
    "threads=1",
    "trainer.precision=32-true",
    "objective.compile=false",  # 2 steps: compiling would take longer than the run
]


def job_dirs(outputs: Path) -> list[Path]:
    sweeps = sorted(p for p in (outputs / "multirun" / "lora_rankup").iterdir() if p.is_dir())
    assert len(sweeps) == 1, sweeps
    return sorted(p for p in sweeps[0].iterdir() if p.is_dir() and not p.is_symlink())


@pytest.fixture(scope="module")
def rank_sweep(tmp_path_factory):
    """``train.py -m ... lora.rank=2,4``: (completed process, outputs dir)."""
    tmp = tmp_path_factory.mktemp("sweep")
    proc = run_train(
        ["-m", *TINY, "lora.rank=2,4", f"paths.outputs_dir={tmp}/outputs", f"paths.data_dir={tmp}/data"],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, tmp / "outputs"


def test_each_multirun_job_has_its_own_run_folder(rank_sweep):
    _, outputs = rank_sweep
    jobs = job_dirs(outputs)
    assert [j.name for j in jobs] == ["0", "1"]
    for job, rank in zip(jobs, (2, 4), strict=True):
        assert (job / "metrics.json").is_file() and (job / "csv").is_dir()
        assert json.loads((job / "train_config.json").read_text())["lora.rank"] == rank
        adapter = json.loads((job / "export" / "lora" / "adapter_config.json").read_text())
        assert adapter["r"] == rank and adapter["lora_alpha"] == rank  # alpha follows the rank: scale 1
    assert not (outputs / "lora_rankup").exists()  # nothing in the single-run folder both jobs used to share


def test_progress_line_without_a_terminal(rank_sweep):
    proc, _ = rank_sweep
    lines = re.findall(r"^step 2/2 loss \d+\.\d+ \d+\.\d+ it/s ETA \d+:\d\d:\d\d$", proc.stdout, re.M)
    assert len(lines) == 2, proc.stdout[-3000:]  # one per job


def test_resume_with_another_config_is_refused(rank_sweep):
    _, outputs = rank_sweep
    job = job_dirs(outputs)[0]  # lora.rank=2
    before = (job / "metrics.json").read_text()
    proc = run_train(
        [*TINY, "lora.rank=4", "seed=3", f"paths.output_dir={job}", "ckpt_path=last", "trainer.max_steps=4"],
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ckpt_path: "), proc.stderr[-3000:]
    assert (
        "lora.rank: 2 -> 4" in lines[0]
        and "seed: 0 -> 3" in lines[0]
        and "max_steps" not in lines[0].split("; on resume")[0]
    )
    assert (job / "metrics.json").read_text() == before  # nothing written over


def test_fixed_output_dir_shared_by_a_sweep_is_refused(tmp_path):
    out = tmp_path / "run"
    proc = run_train(["-m", *TINY, "lora.rank=2,4", f"paths.output_dir={out}", "ckpt_path=last"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: paths.output_dir: "), proc.stderr
    assert "hydra:job.num" in lines[0] and not out.exists()


def test_resume_check_lets_the_budget_grow(tmp_path):
    """max_steps / max_time and plumbing may change; a training setting may not (explicit ckpt_path too)."""
    from wan2.config_check import ConfigError
    from wan2.run_config import check_resume_config, record_training_config

    run = tmp_path / "run"
    run.mkdir()
    record_training_config(compose_cfg(["experiment=lora_rankup"]), run)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    grown = ["experiment=lora_rankup", "trainer.max_steps=5000", "trainer.max_time=00:01:00:00", "logger=csv"]
    check_resume_config(
        compose_cfg([*grown, "callbacks.progress=null", "paths.outputs_dir=/elsewhere"]), ckpt
    )
    with pytest.raises(ConfigError, match=r"objective.lr: 0.002 -> 0.001"):
        check_resume_config(compose_cfg([*grown, "objective.lr=1e-3"]), ckpt)
    # the same global batch on 2 DDP ranks resumes; half of it does not
    record_training_config(compose_cfg(["experiment=lora_rankup", "data.batch_size=4"]), run)
    ddp = ["experiment=lora_rankup", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    check_resume_config(compose_cfg([*ddp, "data.batch_size=2"]), ckpt)
    with pytest.raises(ConfigError, match=r"global batch .*: 4 -> 2"):
        check_resume_config(compose_cfg([*ddp, "data.batch_size=1"]), ckpt)


def test_objective_value():
    from wan2.run_config import objective_value

    cfg = compose_cfg(["optimized_metric=val/loss"])
    assert objective_value(cfg, {"val/loss": 0.25, "global_step": 2}) == 0.25
    assert math.isnan(objective_value(cfg, {"global_step": 2}))  # not logged: the sweeper fails the trial
    assert objective_value(compose_cfg([]), {"val/loss": 0.25}) is None


def test_alpha_follows_rank_and_shipped_scale_is_kept():
    """alpha null means alpha = rank; the shipped runs were rank 4 with alpha 4 (scale 1): unchanged."""
    from wan2.lora.config import LoRAConfig

    cfg = compose_cfg(["experiment=lora_rankup"])
    assert cfg.lora.alpha is None and cfg.lora.rank == 4
    assert LoRAConfig().alpha is None
    shipped = json.loads(
        (Path(__file__).parents[1] / "pretrained/lora_rankup/adapter_config.json").read_text()
    )
    assert shipped["lora_alpha"] / shipped["r"] == 1.0


def test_optuna_search_two_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e .[sweep] (or .[dev])")
    proc = run_train(
        [
            "-m",
            *TINY,
            "hparams_search=lora_optuna",
            "optimized_metric=train/loss",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.direction=minimize",
            f"paths.outputs_dir={tmp_path}/outputs",
            f"paths.data_dir={tmp_path}/data",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(tmp_path / "outputs")
    assert [j.name for j in jobs] == ["0", "1"]
    losses = [json.loads((j / "metrics.json").read_text())["train/loss"] for j in jobs]
    from omegaconf import OmegaConf

    result = OmegaConf.load(jobs[0].parent / "optimization_results.yaml")
    assert result.best_value == pytest.approx(min(losses))  # the sweeper got train.py's return values
