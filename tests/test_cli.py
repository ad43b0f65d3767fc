"""The command lines a new user tries first (issue 17, item 7): ``--cfg``, ``--help``, a bare ``train.py``, the
debug group, and the README's stock-diffusers snippet run as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import EXPERIMENTS, ROOT, compose_cfg, run_train, train_env


def _run(args: list[str], cwd=ROOT, env=None, timeout=120) -> subprocess.CompletedProcess:
    env = train_env() if env is None else env
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("extra", [[], ["experiment=lora_rankup"]], ids=["default", "lora_rankup"])
def test_cfg_job_resolve_prints_the_resolved_config(extra):
    proc = run_train(["--cfg", "job", "--resolve", *extra], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "latents_mean:" in proc.stdout and "${" not in proc.stdout  # every interpolation resolved


def test_evaluate_help_lists_its_own_settings():
    proc = _run([sys.executable, str(ROOT / "evaluate.py"), "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "configs/eval.yaml" in out and "num_videos:" in out and "compare:" in out
    assert "experiment:" not in out and "objective:" not in out  # train.py's groups are not evaluate's


def test_plan_help_prints_usage():
    proc = _run([sys.executable, str(ROOT / "scripts" / "plan.py"), "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gpu_memory_gb" in proc.stdout and "error" not in proc.stderr


def test_bare_train_is_refused_with_the_experiments(tmp_path):
    env = train_env(WAN2_ROOT=str(tmp_path))
    proc = run_train([], env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no experiment given"), proc.stderr
    assert all(name in lines[0] for name in EXPERIMENTS)
    made = {p.name for p in (tmp_path / "outputs").rglob("*")} if (tmp_path / "outputs").exists() else set()
    assert not made & {"export", "checkpoints", "metrics.json"}, made


@pytest.mark.parametrize("option", ["default", "fast_dev_run", "overfit", "profiler"])
def test_debug_group_composes_and_builds_a_trainer(option, tmp_path):
    import hydra

    from wan2.config_check import check_train_config

    cfg = compose_cfg(["experiment=pretrain_tiny", f"debug={option}", f"paths.outputs_dir={tmp_path}"])
    check_train_config(cfg)
    assert cfg.export.enabled is False and cfg.paths.output_dir.startswith(f"{tmp_path}/debug/pretrain_tiny/")
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    expected = {
        "default": lambda t: t.max_steps == 20,
        "fast_dev_run": lambda t: t.fast_dev_run is True,
        "overfit": lambda t: t.overfit_batches == 1 and t.max_steps == 200,
        "profiler": lambda t: type(t.profiler).__name__ == "SimpleProfiler",
    }
    assert expected[option](trainer), option


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use an export with stock diffusers", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_readme_stock_diffusers_snippet_runs_as_written(tmp_path):
    pytest.importorskip(
        "imageio_ffmpeg", reason="export_to_video needs imageio-ffmpeg: pip install -e .[dev]"
    )
    code = readme_snippet()
    wan2_json = json.loads((ROOT / "pretrained" / "wan_tiny_base" / "wan2.json").read_text())
    assert f"guidance_scale={wan2_json['guidance_scale']}," in code  # at the exported guidance
    assert f"fps={wan2_json['fps']})" in code and "export_to_video" in code
    (tmp_path / "pretrained").symlink_to(ROOT / "pretrained")  # the snippet's relative path, outputs in tmp
    env = {**train_env(), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = _run([sys.executable, "-c", code], cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import av

    with av.open(str(tmp_path / "rank_drop.mp4")) as f:
        frames = [fr for fr in f.decode(video=0)]
    assert len(frames) == wan2_json["num_frames"] and frames[0].width == wan2_json["width"]


def test_debug_fast_dev_run_trains_one_batch(tmp_path):
    args = ["experiment=lora_rankup", "debug=fast_dev_run", "data.num_train=4", "data.batch_size=2"]
    args += ["objective.compile=false"]  # one batch: compiling would take longer than the run
    args += [
        "callbacks.progress=null",
        f"paths.outputs_dir={tmp_path}/outputs",
        f"paths.data_dir={tmp_path}/data",
    ]
    proc = run_train([*args, "trainer.precision=32-true"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p for p in (tmp_path / "outputs" / "debug" / "lora_rankup").iterdir() if not p.is_symlink()]
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 1
    assert not (run / "export").exists()  # debug runs export nothing
