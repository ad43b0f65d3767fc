"""Hydra loads launchers only from the ``hydra_plugins`` namespace package: ``hydra/launcher=submitit_slurm``
names this class, which is ``wan2.slurm.SlurmLauncher`` (submitit's SLURM launcher + requeue on exit 75)."""

from wan2.slurm import SlurmLauncher as _WanSlurmLauncher


class SlurmLauncher(_WanSlurmLauncher):
    """``wan2.slurm.SlurmLauncher`` under the name Hydra accepts (``hydra_plugins.wan2_launcher.SlurmLauncher``)."""
