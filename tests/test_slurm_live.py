"""A real one-node SLURM (Debian's slurm-wlm + munge, ``scripts/slurm/local_cluster.sh``) runs train.py jobs
through Hydra's submitit launcher (``hydra/launcher=submitit_slurm``): a 2-step job, and a job that gets SIGUSR1
mid-run, saves last.ckpt, exits 75, is requeued by ``wan2.slurm.SlurmLauncher`` and finishes from its checkpoint.

Slow (about 4 min: SLURM holds a requeued job for 2 min before it starts it again); skipped where slurmctld,
slurmd or munged are not installed. Run it with ``make test-slurm`` (installs the packages as root first).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, train_cmd

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(x) is None for x in ("slurmctld", "slurmd", "munged", "sbatch")),
        reason="needs Debian's slurmctld, slurmd, slurm-client and munge (make test-slurm installs them)",
    ),
]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    script = ROOT / "scripts" / "slurm" / "local_cluster.sh"
    r = subprocess.run(
        ["bash", str(script), "start", str(state)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    env = {
        **os.environ,
        "SLURM_CONF": str(state / "slurm.conf"),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }
    yield env
    subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], env=env, capture_output=True)
    subprocess.run(["bash", str(script), "stop", str(state)], capture_output=True, timeout=60)


def launch(tmp: Path, steps: int, env: dict) -> subprocess.Popen:
    """``python train.py -m hydra/launcher=submitit_slurm ...``: submits one job and waits for it."""
    args = train_cmd(
        "-m",
        "hydra/launcher=submitit_slurm",
        "experiment=pretrain_tiny",
        f"hydra.sweep.dir={tmp / 'sweep'}",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.tasks_per_node=1",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=15",
        "trainer=cpu",
        f"trainer.max_steps={steps}",
        "trainer.max_time=null",
        "trainer.limit_val_batches=0",
        "data.num_train=16",
        "data.batch_size=4",
        f"paths.output_dir={tmp / 'run'}",
        f"paths.data_dir={tmp / 'data'}",
        "logger=csv",
        "export.enabled=false",
        "callbacks.progress=null",
        "callbacks.checkpoint.every_n_train_steps=1",
        "threads=1",
        "ckpt_path=last",
    )
    log = open(tmp / "launcher.log", "w")
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def job_logs(tmp: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((tmp / "sweep" / ".submitit").rglob("*_log.*")))


def test_a_two_step_job_runs_through_the_submitit_launcher(slurm_env, tmp_path):
    proc = launch(tmp_path, 2, slurm_env)
    assert proc.wait(timeout=300) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    assert f"run folder: {tmp_path / 'run'}" in job_logs(tmp_path)  # train.py ran inside the SLURM job


def test_a_preempted_job_is_requeued_and_finishes_from_its_checkpoint(slurm_env, tmp_path):
    """SIGUSR1 (what SLURM sends before the time limit) mid-run: save, exit 75, ``scontrol requeue``, resume."""
    steps = 200
    proc = launch(tmp_path, steps, slurm_env)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    assert last.exists(), (tmp_path / "launcher.log").read_text()[-3000:]
    jobs = subprocess.run(
        ["squeue", "-h", "-o", "%A"], env=slurm_env, capture_output=True, text=True
    ).stdout.split()
    assert len(jobs) == 1, jobs
    subprocess.run(["scancel", "--signal=USR1", jobs[0]], env=slurm_env, check=True)
    assert proc.wait(timeout=480) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    logs = job_logs(tmp_path)
    assert "preempted at step" in logs and f"requeued SLURM job {jobs[0]}" in logs, logs[-3000:]
    assert "Restoring states from the checkpoint" in logs  # the requeued run resumed from last.ckpt
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == steps
