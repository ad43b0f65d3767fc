"""Resolvers the configs use: newest export with a fallback, and the automatic training precision."""

from omegaconf import OmegaConf

from wan2.config_resolvers import auto_precision, cpu_has_fast_bf16, latest_export


def test_bf16_only_where_the_cpu_has_amx():
    assert cpu_has_fast_bf16("flags : fpu avx512f avx512_bf16 amx_bf16 amx_tile")
    assert not cpu_has_fast_bf16("flags : fpu avx512f avx512_bf16")
    assert auto_precision("cpu") == ("bf16-mixed" if cpu_has_fast_bf16() else "32-true")


def test_trainer_config_resolves_a_lightning_precision():
    cfg = OmegaConf.load("configs/trainer/cpu.yaml")
    assert cfg.precision in ("bf16-mixed", "32-true")


def test_latest_export_prefers_the_newest_run_then_the_fallback(tmp_path):
    fallback = tmp_path / "shipped"
    fallback.mkdir()
    assert latest_export("pretrain_tiny", str(tmp_path / "outputs"), str(fallback)) == str(fallback)
    newest = tmp_path / "outputs" / "pretrain_tiny" / "latest" / "export"
    newest.mkdir(parents=True)
    assert latest_export("pretrain_tiny", str(tmp_path / "outputs"), str(fallback)) == str(newest)
