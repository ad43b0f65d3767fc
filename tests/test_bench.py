"""scripts/bench.py train and distill sections: keys and forward counts at tiny sizes (never timings)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, load_script

bench = load_script("scripts/bench.py", "bench_script")


def test_sections_registered():
    assert {"data", "train", "distill"} <= set(bench.SECTIONS)


def bench_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``python scripts/bench.py ARGS`` as a user runs it: a fresh process (nothing imported before)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_train_cli_writes_the_train_keys(tmp_path):
    """``bench.py --only train --tiny`` in a fresh process (it crashed on the ${wan2.auto_precision} resolver
    when nothing had registered it): exit 0, the JSON on stdout and in --out, every key of the train section."""
    out_file = tmp_path / "bench.json"
    r = bench_cli("--only", "train", "--tiny", "--threads", "1", "--out", str(out_file), WAN2_PRECISION="")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out_file.read_text())
    assert json.loads(r.stdout) == result and set(result) == {"train", "env"}
    assert result["env"]["tiny"] and result["env"]["threads"] == 1
    out = result["train"]
    assert out["experiment"] == "lora_rankup" and out["batch_size"] == 1 and not out["compiled"]
    variants = set(out["s_per_step"])
    assert {"wan2", "naive"} <= variants
    assert (len(variants) == 3) == out["bf16_autocast_supported"]  # + the other precision, eager
    for key in ("samples_per_s", "model_gflops", "mfu"):
        assert set(out[key]) == variants and all(v > 0 for v in out[key].values())
    assert out["speedup"] == out["speedup_vs_naive"]["wan2"] > 0
    paired = out["speedup_per_round"]
    assert 0 < paired["min"] <= paired["median"] <= paired["max"]
    assert {len(ts) for ts in out["s_per_round"].values()} == {out["steps_timed"]}
    assert out["trainer_precision"] == "32-true"  # the CPU default
    assert 0 < out["trainable_params"] < 1e5  # LoRA adapters only
    assert out["transformer_gflop_per_step"] > 0
    assert out["naive_gflop_per_step_all_modules"] > out["transformer_gflop_per_step"]  # VAE + UMT5 too
    assert out["matmul_peak_gflops"]["median"] > 0 and len(out["matmul_peak_gflops"]["probes"]) == 1
    prof = out["profile"]  # where the step's time goes: the shares add up to the step
    assert abs(sum(prof["share"].values()) - 1) < 1e-6 and prof["ms_per_step"]["matmul"] > 0
    assert any(k.startswith("aten::") for k in prof["top_ops_ms_per_step"])
    assert out["mfu_ceiling_matmul_only"] >= out["mfu"]["wan2"]
    assert {"default_ms", "foreach_ms", "fused_ms"} < set(out["adamw_step"])
    assert all(v > 0 for v in out["adamw_step"].values()) and out["peak_rss_mb"] > 0


def test_bad_forced_precision_is_one_line_before_any_work(tmp_path):
    out_file = tmp_path / "bench.json"
    r = bench_cli("--only", "train", "--tiny", "--out", str(out_file), WAN2_PRECISION="fp17")
    assert r.returncode == 2 and not out_file.exists() and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "error: WAN2_PRECISION='fp17' is not one of ['32-true', 'bf16-mixed']"
    ]


def test_trainer_precision_follows_the_env(monkeypatch):
    """The precision bench_train reports is the composed trainer config's, which $WAN2_PRECISION forces."""
    from wan2.config_resolvers import compose

    monkeypatch.setenv("WAN2_PRECISION", "bf16-mixed")
    assert compose(["trainer=cpu"]).trainer.precision == "bf16-mixed"
    monkeypatch.delenv("WAN2_PRECISION")
    assert compose(["trainer=cpu"]).trainer.precision == "32-true"


def test_distill_counts_100_vs_4_forwards():
    backbone = bench.large_backbone(bench.QUICK_TRANSFORMER)
    out = bench.bench_sampling(backbone, num_frames=5, height=16, width=16, teacher_runs=1, student_runs=1)
    assert out["teacher"]["nfe"] == 100 and out["student"]["nfe"] == 4 and out["nfe_ratio"] == 25
    assert out["teacher"]["steps"] == 50 and out["student"]["guidance_scale"] == 1.0
    for name in ("teacher", "student"):
        assert 0 < out[name]["s_loop"] <= out[name]["s_end_to_end"]
    assert out["speedup_loop"] > 0 and out["speedup_end_to_end"] > 0
    import wan2.sampling

    assert wan2.sampling.euler_sample.__name__ == "euler_sample"  # the timing patch is undone


@pytest.mark.slow
def test_quick_cli_writes_one_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--only", "train,distill", "--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert set(result) == {"train", "distill", "env"}
    for size in ("demo", "large"):
        assert result["distill"][size]["teacher"]["nfe"] == 100
        assert result["distill"][size]["student"]["nfe"] == 4
