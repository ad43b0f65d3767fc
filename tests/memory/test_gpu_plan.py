"""Issue 16 item 7 on a GPU: one LoRA step at the real widths (reduced depth, full clips, bf16 frozen base)
measured with ``torch.cuda.max_memory_allocated`` against the plan, block swap included. ``make test-gpu`` runs
it with the other GPU-marked tests (a few minutes on one GPU); the CPU counts the same steps in
``tests/test_memory.py``."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import load_script


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_step_memory_matches_the_plan(tmp_path):
    bench = load_script("scripts/bench.py", "bench_script")
    out = tmp_path / "memory.json"
    assert bench.main(["--only", "memory", "--device", "cuda", "--out", str(out)]) == 0
    cases = json.loads(out.read_text())["memory"]["cases"]
    assert {c["width"] for c in cases} == {3072, 5120} and all(c["device"] == "cuda" for c in cases)
    swapped = [c for c in cases if c["block_swap"]]
    assert swapped and {c["fp8"] for c in cases} == {False, True}
    for c in cases:
        print(c["name"], c["planned_gib"], c["measured_gib"])
        assert 0.85 <= c["planned_gib"] / c["measured_gib"] <= 1.15, c
