"""Resolvers the configs use: newest export with a fallback, and the automatic training precision."""

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONFIGS, compose_cfg
from wan2.config_check import ConfigError, check_train_config
from wan2.config_resolvers import PRECISION_ENV, auto_precision, latest_export


@pytest.fixture
def bf16_gpu(monkeypatch):
    """Pretend a CUDA GPU with bf16 is present."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_fp32_on_every_cpu_bf16_on_a_bf16_gpu(monkeypatch, bf16_gpu):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    assert auto_precision("cpu") == "32-true"  # whatever the CPU's flags (AMX was measured slower in bf16)
    assert auto_precision("gpu") == auto_precision("cuda") == auto_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_precision("gpu") == auto_precision("auto") == "32-true"


@pytest.mark.parametrize("forced", ["32-true", "bf16-mixed"])
def test_env_forces_the_precision_everywhere(monkeypatch, bf16_gpu, forced):
    monkeypatch.setenv(PRECISION_ENV, forced)
    assert auto_precision("cpu") == auto_precision("gpu") == forced
    assert OmegaConf.load(CONFIGS / "trainer" / "cpu.yaml").precision == forced
    assert compose_cfg(["trainer=ddp", "trainer.accelerator=cpu"]).trainer.precision == forced
    # a precision written in the config (or on the command line) wins over the environment
    assert compose_cfg(["trainer=gpu"]).trainer.precision == "bf16-mixed"
    assert compose_cfg(["trainer.precision=32-true"]).trainer.precision == "32-true"


def test_trainer_configs_resolve_fp32_on_the_cpu(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    assert OmegaConf.load(CONFIGS / "trainer" / "cpu.yaml").precision == "32-true"
    assert compose_cfg([]).trainer.precision == "32-true"


def test_a_bad_env_precision_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "fp17")
    with pytest.raises(ValueError, match=f"{PRECISION_ENV}='fp17' is not one of"):
        auto_precision("cpu")
    with pytest.raises(ConfigError, match=f"^trainer.precision: {PRECISION_ENV}='fp17'"):
        check_train_config(compose_cfg(["experiment=pretrain_tiny"]))


def test_latest_export_prefers_the_newest_run_then_the_fallback(tmp_path):
    fallback = tmp_path / "shipped"
    fallback.mkdir()
    assert latest_export("pretrain_tiny", str(tmp_path / "outputs"), str(fallback)) == str(fallback)
    newest = tmp_path / "outputs" / "pretrain_tiny" / "latest" / "export"
    newest.mkdir(parents=True)
    assert latest_export("pretrain_tiny", str(tmp_path / "outputs"), str(fallback)) == str(newest)
