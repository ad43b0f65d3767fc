"""A new objective is one module + one YAML, nothing else: a toy objective written into a temporary folder
(``wan2_objectives/toy.py`` on PYTHONPATH, ``configs/objective/toy.yaml`` on Hydra's search path) validates its
own settings in one line and trains 2 steps through ``train.py`` to an export, without touching the repo."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT

TOY_MODULE = '''
"""A toy objective: one learnable gain fitted to the clips' mean brightness (settings + module in one file)."""
import dataclasses
import json
from typing import ClassVar

import lightning as L
import torch

from wan2.objectives import ObjectiveSettings, register
from wan2.settings import check_num


@register("toy")
@dataclasses.dataclass
class ToyConfig(ObjectiveSettings):
    TARGET: ClassVar[str] = "wan2_objectives.toy.ToyModule"
    CLIP: ClassVar[str] = "any"

    lr: float = 0.1
    target: float = 0.5  # the brightness the gain should reach

    def check(self, at):
        super().check(at)
        check_num(f"{at}.target", self.target, 0, 1)


class ToyModule(L.LightningModule):
    Config = ToyConfig

    def __init__(self, backbone=None, cfg=None, **settings):
        super().__init__()
        self.cfg = self.Config.build(cfg, settings)
        self.save_hyperparameters(self.cfg.to_dict())
        self.gain = torch.nn.Parameter(torch.ones(()))

    def training_step(self, batch, batch_idx):
        brightness = batch["video"].float().mean()
        loss = (self.gain * brightness - self.cfg.target) ** 2
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.cfg.lr)

    def export(self, out_dir, datamodule=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "toy.json").write_text(json.dumps({"gain": float(self.gain), "target": self.cfg.target}))
        return {"toy/gain": float(self.gain)}
'''

TOY_YAML = """
# The toy objective: every setting and its default are in wan2_objectives/toy.py (ToyConfig)
defaults:
  - base_toy
  - _self_
target: 0.25
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    return subprocess.run(
        [
            sys.executable,
            "train.py",
            "objective=toy",
            f"hydra.searchpath=[file://{tmp_path / 'configs'}]",
            f"paths.output_dir={tmp_path / 'run'}",
            f"paths.outputs_dir={tmp_path / 'outputs'}",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _write_toy(tmp_path: Path) -> None:
    (tmp_path / "wan2_objectives").mkdir()  # a namespace package: no __init__.py
    (tmp_path / "wan2_objectives" / "toy.py").write_text(textwrap.dedent(TOY_MODULE))
    (tmp_path / "configs" / "objective").mkdir(parents=True)
    (tmp_path / "configs" / "objective" / "toy.yaml").write_text(TOY_YAML)


def test_toy_objective_is_one_module_and_one_yaml(tmp_path):
    _write_toy(tmp_path)
    bad = _run(tmp_path, "objective.target=2")  # its own check, before anything is built
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert bad.stderr.strip().splitlines() == ["error: objective.target: 2 must be a number in [0, 1]"], (
        bad.stderr
    )
    assert not (tmp_path / "run" / "export").exists()

    proc = _run(
        tmp_path,
        "data.num_train=4",
        "data.num_val=2",
        "data.batch_size=2",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=0",
        "trainer.precision=32-true",
        "callbacks.progress=null",
        "logger=csv",
        "threads=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    exported = json.loads((tmp_path / "run" / "export" / "toy.json").read_text())
    assert exported["target"] == 0.25  # the YAML's override of the dataclass default 0.5
    assert exported["gain"] != 1.0  # it trained


def test_toy_objective_is_registered_for_the_planner_and_checks(tmp_path, monkeypatch):
    """Discovered from PYTHONPATH: the registry the planner and config checks consult knows it."""
    _write_toy(tmp_path)
    code = (
        "from wan2.objectives import by_target, discover\n"
        "reg = discover()\n"
        "cls = by_target('wan2_objectives.toy.ToyModule')\n"
        "print(sorted(reg), cls.NAME, cls.CLIP, cls().target)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "['distill',",
        "'encoder',",
        "'flow_matching',",
        "'lora',",
        "'toy',",
        "'vae']",
        "toy",
        "any",
        "0.5",
    ]
