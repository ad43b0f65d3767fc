"""Every ``configs/experiment/*.yaml`` composes and trains for 2 steps into a complete run folder.

New experiments are picked up from the glob; one that names another (``lora_rankup`` reads
``pretrain_tiny``'s export) runs after it, in the same temporary outputs folder.
"""

import json
import re
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from tests.conftest import CONFIGS, EXPERIMENTS, compose_cfg
from wan2.lightning.flow_module import FlowMatchingModule
from wan2.tasks import train

WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5", ".gguf"}
SHRINK = {  # applied where the key exists in the composed config
    "data.num_train": 4,
    "data.num_val": 2,
    "data.batch_size": 2,
    "data.val_batch_size": 2,
    "data.num_workers": 0,
    "trainer.max_steps": 2,
    "trainer.val_check_interval": 2,
    "trainer.limit_val_batches": 1,
    "trainer.log_every_n_steps": 1,
    "objective.sample.num_inference_steps": 2,
    "model.vae_pretrained": None,  # no trained VAE needed
    "callbacks.progress": None,
}


def depends_on(name: str) -> list[str]:
    """Other experiments this one names outside comments (it reads their outputs)."""
    text = (CONFIGS / "experiment" / f"{name}.yaml").read_text()
    body = "\n".join(line.split("#")[0] for line in text.splitlines())
    return [other for other in EXPERIMENTS if other != name and re.search(rf"\b{other}\b", body)]


def compose_experiment(name: str, root: Path):
    """``experiment=NAME`` shrunk by ``SHRINK`` (the keys it has), writing everything under ``root``."""
    paths = [
        f"experiment={name}",
        "logger=csv",
        f"paths.outputs_dir={root}/outputs",
        f"paths.output_dir={root}/outputs/{name}/run",
    ]
    cfg = compose_cfg(paths, root_dir=root)
    extra = [f"data.cache_dir={root}/cache"] if OmegaConf.select(cfg, "data.cache_dir") is not None else []
    for key, value in SHRINK.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if node is not None and leaf in node:
            extra.append(f"{key}={'null' if value is None else value}")
    return compose_cfg(paths + extra, root_dir=root)


class Runner:
    """Runs each experiment once (its dependencies first) into ``root/outputs``."""

    def __init__(self, root: Path):
        self.root, self.done = root, {}

    def run(self, name: str, _stack: tuple = ()):
        if name not in self.done:
            assert name not in _stack, f"experiment dependency cycle: {_stack + (name,)}"
            for dep in depends_on(name):
                self.run(dep, _stack + (name,))
            cfg = compose_experiment(name, self.root)
            metrics = train(cfg)
            self.done[name] = (cfg, Path(cfg.paths.output_dir), metrics)
        return self.done[name]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return Runner(tmp_path_factory.mktemp("experiments"))


def test_experiments_found():
    assert {"vae_tiny", "pretrain_tiny"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_run_folder(runner, name):
    cfg, out, metrics = runner.run(name)
    assert out.is_relative_to(runner.root)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["global_step"] == metrics["global_step"] == 2

    export = out / "export"
    weights = [p for p in export.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    assert weights, f"no weights under {export}"
    assert all(p.suffix == ".safetensors" for p in weights), weights
    objective = get_class(cfg.objective._target_)
    if objective is FlowMatchingModule:  # pretraining exports a whole stock WanPipeline
        assert (export / "model_index.json").is_file()
        for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
            assert (export / sub).is_dir(), sub

    if name in (
        "vae_tiny",
        "pretrain_tiny",
    ):  # validation scored by the one judge (wan2.eval.judge), val/ prefix
        assert 0.0 <= saved["val/rank_trajectory/accuracy"] <= 1.0 and "val/colour/accuracy" in saved

    sheets = list((out / "samples").glob("step_*/contact_sheet.png"))
    assert sheets, f"no samples/step_*/contact_sheet.png in {out}"

    latest = runner.root / "outputs" / cfg.name / "latest"
    assert latest.is_symlink() and latest.resolve() == out.resolve()
