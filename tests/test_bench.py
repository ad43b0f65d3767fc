"""scripts/bench.py train and distill sections: keys and forward counts at tiny sizes (never timings)."""

import json

import pytest

from tests.conftest import load_script

bench = load_script("scripts/bench.py", "bench_script")


def test_sections_registered():
    assert {"data", "train", "distill"} <= set(bench.SECTIONS)


def test_train_section_keys():
    out = bench.bench_train(batch_size=1, steps=1, warmup=1, matmul_n=64)
    variants = set(out["s_per_step"])
    assert {"wan2_fp32", "naive_fp32"} <= variants
    assert ("wan2_bf16" in variants) == out["bf16_autocast_supported"]
    for key in ("samples_per_s", "model_gflops", "mfu"):
        assert set(out[key]) == variants and all(v > 0 for v in out[key].values())
    assert out["speedup"] > 0 and out["wan2_best"] in variants
    assert out["transformer_gflop_per_step"] > 0
    assert out["naive_gflop_per_step_all_modules"] > out["transformer_gflop_per_step"]  # VAE + UMT5 too
    assert out["matmul_peak"]["fp32_gflops"] > 0 and out["peak_rss_mb"] > 0
    assert out["trainer_precision_configured"]


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
