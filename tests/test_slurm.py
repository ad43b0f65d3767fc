"""SLURM: the submitit launcher config, ``scripts/slurm/train.sbatch`` and requeue after preemption (exit 75).

No SLURM here: ``srun`` / ``scontrol`` are small shell scripts on PATH that record their arguments.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONFIGS, ROOT, compose_cfg, load_script

SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
# as train.py: the launcher config holds every field of the plugin's schema, Hydra's schema check only warns
pytestmark = pytest.mark.filterwarnings("ignore:.*'hydra/launcher/submitit_slurm' is validated against")


def sbatch_flags() -> dict[str, str]:
    """``#SBATCH --key=value`` lines of train.sbatch (``--requeue`` -> "")."""
    flags = {}
    for line in SBATCH.read_text().splitlines():
        m = re.match(r"#SBATCH --([\w-]+)(?:=(\S+))?", line)
        if m:
            flags[m[1]] = m[2] or ""
    return flags


def sbatch_default(var: str) -> str:
    return re.search(rf"^{var}=\$\{{{var}:-(\S+)\}}$", SBATCH.read_text(), re.M)[1]


def launcher_cfg(*overrides: str):
    return compose_cfg(["hydra/launcher=submitit_slurm", *overrides], root_dir=None, return_hydra_config=True)


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    """Executables ``tmp_path/bin/<name>`` (``sh`` bodies); each records its arguments in ``tmp_path/<name>.args``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/{name}.args"\n{body}\n')
        exe.chmod(0o755)
    return bin_dir


def recorded(tmp_path: Path, name: str) -> list[str] | None:
    f = tmp_path / f"{name}.args"
    return f.read_text().splitlines() if f.exists() else None


# ----------------------------------------------------------------------------- the launcher config
def test_launcher_config_composes_and_matches_the_sbatch():
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    cfg = launcher_cfg("experiment=pretrain_tiny", "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4")
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "submitit_slurm"
    lc = cfg.hydra.launcher
    assert lc._target_ == "hydra_plugins.wan2_launcher.SlurmLauncher"  # Hydra loads launchers from there only
    # one task per GPU: tasks_per_node follows gpus_per_node
    assert (lc.nodes, lc.gpus_per_node, lc.tasks_per_node) == (2, 4, 4)
    assert lc.partition is None and lc.account is None
    # every field of the plugin's schema: the file works on its own, without Hydra's schema matching
    fields = {f.name for f in dataclasses.fields(SlurmQueueConf)}
    assert fields <= set(OmegaConf.load(CONFIGS / "hydra/launcher/submitit_slurm.yaml"))
    # the same signal, delay, requeue policy and task layout as scripts/slurm/train.sbatch
    flags = sbatch_flags()
    assert lc.additional_parameters.signal == flags["signal"] == f"USR1@{lc.signal_delay_s}" == "USR1@120"
    assert lc.additional_parameters.requeue is True and "requeue" in flags
    assert lc.max_num_timeout == int(sbatch_default("MAX_REQUEUES")) > 0
    assert flags["ntasks-per-node"] == flags["gpus-per-node"]
    assert cfg.reliability.preemption_signals == ["SIGUSR1"]  # what USR1@120 asks wan2 to handle


def test_launcher_writes_the_expected_sbatch_header(tmp_path, monkeypatch):
    """The launcher turns the config into an sbatch script (submitit's own code); nothing is submitted."""
    import submitit

    # submitit's SlurmExecutor looks for srun on PATH
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, srun='exit 0')}:{os.environ['PATH']}")
    cfg = launcher_cfg(
        "experiment=pretrain_tiny",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "hydra.launcher.nodes=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=60",
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    seen = {}

    def map_array(self, fn, *args):
        seen["fn"], seen["max_num_timeout"] = fn, self._executor.max_num_timeout
        seen["text"] = self._executor._make_submission_file_text("CMD", "uid")
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    assert launcher.launch([["experiment=pretrain_tiny"]], 0) == []
    lines = set(seen["text"].splitlines())
    for want in [
        "--nodes=2",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--cpus-per-task=8",
        "--time=60",
        "--partition=gpu",
        "--signal=USR1@120",
        "--requeue",
    ]:
        assert f"#SBATCH {want}" in lines, (want, seen["text"])
    assert not any("--account" in ln for ln in lines)  # null: not written
    assert seen["max_num_timeout"] == 20 and seen["fn"] is launcher


# ----------------------------------------------------------------------------- requeue from the submitit launcher
def test_requeue_if_preempted(tmp_path, monkeypatch):
    from wan2.slurm import requeue_if_preempted, slurm_job_id

    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, scontrol='exit 0')}:{os.environ['PATH']}")
    job = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "0"}
    assert slurm_job_id(job) == "4242"
    assert slurm_job_id({**job, "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"}) == "77_3"
    for code, env in [
        (0, job),
        (1, job),
        (2, job),
        (None, job),
        (75, {**job, "SLURM_PROCID": "1"}),
        (75, {**job, "SLURM_RESTART_COUNT": "3"}),
        (75, {}),
    ]:
        assert not requeue_if_preempted(code, 3, env), (code, env)
        assert recorded(tmp_path, "scontrol") is None
    assert requeue_if_preempted(75, 3, {**job, "SLURM_RESTART_COUNT": "2"})
    assert recorded(tmp_path, "scontrol") == ["requeue", "4242"]


def test_submitit_launcher_requeues_a_run_that_exits_75(tmp_path, monkeypatch):
    # the class wan2's launcher extends, as wan2.slurm imported it (Hydra's plugin scan may load the plugin
    # module again, so a fresh import could be another class object)
    from wan2.slurm import SlurmLauncher
    from wan2.slurm import _SubmititSlurmLauncher as PluginLauncher

    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, scontrol='exit 0')}:{os.environ['PATH']}")
    for k, v in {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "0", "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    exit_code = {}

    def job(self, *args, **kwargs):  # stands in for hydra's run_job -> wan2.tasks.run_cli
        raise SystemExit(exit_code["code"])

    monkeypatch.setattr(PluginLauncher, "__call__", job)
    launcher = SlurmLauncher(max_num_timeout=20)
    exit_code["code"] = 2  # a config error: not requeued
    with pytest.raises(SystemExit):
        launcher([], "hydra.sweep.dir", 0, "id", {})
    assert recorded(tmp_path, "scontrol") is None
    exit_code["code"] = 75
    with pytest.raises(SystemExit) as err:
        launcher([], "hydra.sweep.dir", 0, "id", {})
    assert err.value.code == 75 and recorded(tmp_path, "scontrol") == ["requeue", "77_0"]


# ----------------------------------------------------------------------------- scripts/slurm/train.sbatch
def test_sbatch_parses():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


def run_sbatch(tmp_path, srun_body: str, *args: str, env: dict | None = None, wait=True):
    """Run train.sbatch as SLURM would (job 4242, 2 nodes x 4 GPUs) with fake srun / scontrol."""
    bin_dir = fake_bin(tmp_path, srun=srun_body, scontrol="exit 0")
    full = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_SUBMIT_DIR": str(ROOT),
        **(env or {}),
    }
    proc = subprocess.Popen(
        ["bash", str(SBATCH), *args], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if wait:
        out, err = proc.communicate(timeout=30)
        return proc.returncode, err
    return proc


@pytest.mark.parametrize(
    "rc,restarts,requeued", [(75, 0, True), (75, 19, True), (75, 20, False), (0, 0, False), (1, 0, False)]
)
def test_sbatch_requeues_only_a_preempted_run(tmp_path, rc, restarts, requeued):
    code, err = run_sbatch(
        tmp_path,
        f"exit {rc}",
        "pretrain_tiny",
        "trainer.max_steps=50",
        env={"SLURM_RESTART_COUNT": str(restarts)},
    )
    assert code == rc, err
    assert recorded(tmp_path, "scontrol") == (["requeue", "4242"] if requeued else None), err
    assert recorded(tmp_path, "srun") == [
        "python",
        "train.py",
        "experiment=pretrain_tiny",
        "trainer=ddp",
        "trainer.accelerator=gpu",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "paths.output_dir=outputs/pretrain_tiny/slurm-4242",
        "ckpt_path=last",
        "trainer.max_steps=50",
    ]


def test_sbatch_waits_for_the_run_after_sigterm_then_requeues(tmp_path):
    """SLURM's SIGTERM to the batch shell (preemption) must not stop it before the run has saved and exited 75."""
    proc = run_sbatch(tmp_path, f'touch "{tmp_path}/started"; sleep 1; exit 75', "pretrain_tiny", wait=False)
    deadline = time.time() + 20
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert "SIGTERM; waiting" in err
    assert recorded(tmp_path, "scontrol") == ["requeue", "4242"]


def test_sbatch_command_line_is_a_valid_train_command(tmp_path):
    """The overrides srun passes compose with configs/ and give a DDP trainer over all nodes and GPUs."""
    run_sbatch(tmp_path, "exit 0", "pretrain_tiny")
    args = recorded(tmp_path, "srun")[2:]  # after "python train.py"
    train_cli = load_script("train.py", "train_cli")
    if not (CONFIGS / "trainer" / "ddp.yaml").is_file():
        pytest.skip("configs/trainer/ddp.yaml does not exist yet (train.sbatch asks for trainer=ddp)")
    assert train_cli.check_group_overrides(args) is None
    cfg = compose_cfg(args, root_dir=None)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.num_nodes) == ("gpu", 4, 2)
    assert cfg.paths.output_dir == "outputs/pretrain_tiny/slurm-4242" and cfg.ckpt_path == "last"


# ----------------------------------------------------------------------------- SIGUSR1 inside a SLURM job
def test_sigusr1_under_slurm_saves_last_ckpt_and_lightning_does_not_requeue(tmp_path, monkeypatch):
    """Under srun Lightning installs its own SIGUSR1 handler (hpc_ckpt_N.ckpt + scontrol requeue) unless one is
    set: wan2's Preemption sets its handler in ``setup``, before Lightning's, so SIGUSR1 saves last.ckpt and
    stops with SIGTERMException (run_cli: exit 75), and only the sbatch / launcher requeue."""
    import lightning as L
    import torch
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from torch.utils.data import DataLoader

    from wan2.lightning.reliability import Preemption

    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, scontrol='exit 0')}:{os.environ['PATH']}")
    slurm = {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NAME": "wan2",
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            if self.global_step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)
            return self.lin(batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return DataLoader(torch.randn(32, 2), batch_size=2)

    preemption = Preemption(tmp_path / "checkpoints")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=10,
        callbacks=[preemption],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    assert isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)
    before = signal.getsignal(signal.SIGUSR1)
    try:
        with pytest.raises(SIGTERMException):
            trainer.fit(Tiny())
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert preemption.saved_step == 3 and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert not list(tmp_path.glob("hpc_ckpt_*.ckpt"))  # Lightning's SLURM handler did not run
    assert recorded(tmp_path, "scontrol") is None
