"""Helpers and fixtures shared by the test files.

Fixtures (``tiny_export``, ``one_torch_thread``) need no import; plain helpers are imported by name:
``from tests.conftest import ROOT, compose_cfg``. Heavy modules (torch, wan2) are imported inside the helpers,
so collecting a test file that needs none of them stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

# pytest-xdist runs one worker per core (`make test`: -n 2 on 2 cores): one intra-op thread each, set before any
# test imports torch; two threads per worker oversubscribe the cores, and OpenMP spin-waits make that many times
# slower. A plain `pytest` keeps torch's default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))  # picked up from the glob

# the sampling settings recorded in the ``tiny_export`` fixture's wan2.json
TINY_SAMPLING = {
    "num_frames": 17,
    "height": 32,
    "width": 32,
    "fps": 8,
    "num_inference_steps": 4,
    "guidance_scale": 5.0,
    "rows": 5,
}


# ----------------------------------------------------------------------------------------------- configs
def compose_cfg(
    overrides: Sequence[str] = (),
    *,
    config_name: str = "train",
    root_dir: Path | str | None = ROOT,
    return_hydra_config: bool = False,
):
    """The config ``train.py`` (or ``evaluate.py`` with ``config_name="eval"``) composes from ``configs/``.

    ``paths.root_dir`` is this checkout unless ``root_dir`` says otherwise (None: the config's own default), so
    pretrained bases resolve to the shipped ones under ``pretrained/`` wherever pytest runs.
    """
    from hydra import compose, initialize_config_dir

    import wan2.config_resolvers  # noqa: F401  (the resolvers and the settings dataclasses the YAMLs extend)

    root = [] if root_dir is None else [f"paths.root_dir={root_dir}"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name, overrides=[*root, *overrides], return_hydra_config=return_hydra_config)


def model_cfg(name: str = "wan_tiny"):
    """``model=<name>`` as Hydra composes it (``configs/model/<name>.yaml`` over ``ModelConfig``'s defaults, the
    ``base_model`` node): every model setting, as a fresh DictConfig to edit (not struct, no train.yaml around)."""
    from omegaconf import OmegaConf

    return OmegaConf.create(OmegaConf.to_container(compose_cfg([f"model={name}"]).model))


# ----------------------------------------------------------------------------------------------- scripts
def load_script(path: Path | str, name: str) -> ModuleType:
    """Import a script that is not a module of the package (``scripts/*.py``, ``evaluate.py``) by its path."""
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train_cmd(*args: str) -> list[str]:
    """``python train.py ARGS`` as an argv list (absolute paths: any cwd works)."""
    return [sys.executable, str(ROOT / "train.py"), *args]


def train_env(**extra: str) -> dict:
    """The environment of a ``train.py`` subprocess: offline W&B, one OpenMP thread, unbuffered output."""
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def run_train(
    args: Sequence[str], *, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python train.py ARGS`` from the checkout root and capture its text output."""
    return subprocess.run(
        train_cmd(*args),
        env=train_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): on a
    small shared CPU, OpenMP spin-waits make 2 threads many times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_rank_env(monkeypatch):
    """No rank / worker variables from the environment the tests run in (a data pipeline reads them)."""
    for k in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A random tiny Wan export with ``TINY_SAMPLING`` (built once per session, in the session's base temp dir)."""
    import torch

    from wan2.backbones.stack import build_backbone
    from wan2.export import export_pipeline

    path = tmp_path_factory.getbasetemp() / "wan_tiny_export"
    if not path.exists():
        torch.manual_seed(0)
        bb = build_backbone(model_cfg("wan_tiny")).eval()
        export_pipeline(bb, path, sampling=TINY_SAMPLING)
    return path
