"""SLURM: requeue a run that stopped for preemption, from the sbatch script or from Hydra's submitit launcher.

A run that gets SIGUSR1 (SLURM sends it ``signal_delay_s`` before the time limit) or SIGTERM finishes its batch,
saves ``checkpoints/last.ckpt`` and exits with code 75 (``wan2.lightning.reliability.Preemption``). Rank 0 then
asks SLURM to requeue the job (``scontrol requeue JOBID``), at most ``max_requeues`` times (SLURM counts them in
``SLURM_RESTART_COUNT``). The requeued job keeps its id and runs the same command, so with a fixed
``paths.output_dir`` and ``ckpt_path=last`` it continues where it stopped.

``scripts/slurm/train.sbatch`` does this in shell; ``SlurmLauncher`` does it for
``python train.py -m hydra/launcher=submitit_slurm ...`` (``configs/hydra/launcher/submitit_slurm.yaml``).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as _SubmititSlurmLauncher,
    )
except ImportError as err:  # pragma: no cover
    raise ImportError(
        "hydra/launcher=submitit_slurm needs the cluster extra: pip install -e '.[cluster]'"
    ) from err

log = logging.getLogger("wan2")

# = wan2.lightning.reliability.PREEMPTED_EXIT_CODE (not imported: this module needs no torch)
PREEMPTED_EXIT_CODE = 75


def slurm_job_id(env: Mapping[str, str] | None = None) -> str | None:
    """The id ``scontrol requeue`` takes: ``ARRAYJOB_TASK`` inside a job array (submitit submits arrays)."""
    env = os.environ if env is None else env
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return env.get("SLURM_JOB_ID") or None


def requeue_if_preempted(exit_code, max_requeues: int, env: Mapping[str, str] | None = None) -> bool:
    """On rank 0 of a SLURM job whose run exited with code 75, ``scontrol requeue`` it; True when requeued."""
    env = os.environ if env is None else env
    if exit_code != PREEMPTED_EXIT_CODE or int(env.get("SLURM_PROCID", "0")) != 0:
        return False
    job = slurm_job_id(env)
    if job is None:
        log.warning("preempted outside a SLURM job (no SLURM_JOB_ID): not requeued")
        return False
    restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
    if restarts >= max_requeues:
        log.warning("job %s preempted after %d requeues (max %d): not requeued", job, restarts, max_requeues)
        return False
    code = subprocess.call(["scontrol", "requeue", job])
    if code != 0:
        log.warning("scontrol requeue %s failed with exit code %d", job, code)
        return False
    log.info("requeued SLURM job %s (requeue %d of at most %d)", job, restarts + 1, max_requeues)
    return True


class SlurmLauncher(_SubmititSlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher that also requeues a job whose run exited with code 75.

    submitit's own requeue answers its signal (USR2) by requeueing at once, without saving; here SLURM sends
    SIGUSR1 instead (``additional_parameters.signal``), wan2 saves ``last.ckpt`` and exits 75, and this
    launcher requeues, at most ``max_num_timeout`` times.
    """

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as err:  # wan2.tasks.run_cli exits 75 after a preemption
            requeue_if_preempted(err.code, int(self.params.get("max_num_timeout") or 0))
            raise
