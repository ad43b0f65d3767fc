"""scripts/demo.py (``make demo``): every stage timed, skipped ones too, with the stages stubbed (no training)."""

import json
import subprocess

import pytest

from tests.conftest import load_script

demo = load_script("scripts/demo.py", "demo_script")

STAGE_SECONDS = 60.0  # what each stubbed stage "takes" on the fake clock


class FakeClock:
    """``time.perf_counter`` that only moves when a stubbed stage runs (no wall-clock assertions)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def stubbed(monkeypatch):
    """``demo.run`` replaced: records each command and advances the fake clock; ``fail_on`` makes the stage
    whose command contains that text exit 3."""
    clock, calls = FakeClock(), []
    state = {"fail_on": None}

    def run(cmd):
        calls.append(cmd)
        clock.now += STAGE_SECONDS
        if state["fail_on"] and any(state["fail_on"] in c for c in cmd):
            raise subprocess.CalledProcessError(3, cmd)

    monkeypatch.setattr(demo, "time", clock)
    monkeypatch.setattr(demo, "run", run)
    return calls, state


def test_every_stage_is_timed_and_skipped_ones_say_so(tmp_path, stubbed, capsys):
    calls, _ = stubbed
    done = tmp_path / "demo" / "base_samples" / "scores.json"  # stage 3's output exists: skipped
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    assert demo.main(["--outputs", str(tmp_path)]) == 0
    timings = json.loads((tmp_path / "demo" / "timings.json").read_text())
    rows = {r["stage"].split(" ")[0]: r for r in timings["stages"]}
    assert list(rows) == ["1.", "1b.", "2.", "3.", "4.", "5.", "6.", "7."]
    for key in ("1.", "1b.", "2."):
        assert rows[key]["status"] == "skipped" and "pretrained/" in rows[key]["note"]
    assert rows["3."]["status"] == "skipped" and rows["3."]["seconds"] == 0.0
    assert "scores.json exists" in rows["3."]["note"]
    for key in ("4.", "5.", "6.", "7."):
        assert rows[key]["status"] == "ran" and rows[key]["seconds"] == STAGE_SECONDS
    assert timings["total_s"] == 4 * STAGE_SECONDS
    assert [c[2] for c in calls[:2]] == ["experiment=lora_rankup", "experiment=distill_4step"]
    assert len(calls) == 4 and all(c[1] == "evaluate.py" for c in calls[2:])
    out = capsys.readouterr().out
    table = out[out.index("[demo] timings") :]
    for r in timings["stages"]:
        assert r["stage"] in table
    assert "4. rank-up LoRA" in table and "1:00" in table and "total (wall)" in table and "4:00" in table


def test_a_failed_stage_stops_the_chain_and_its_time_is_kept(tmp_path, stubbed, capsys):
    calls, state = stubbed
    state["fail_on"] = "experiment=distill_4step"
    assert demo.main(["--outputs", str(tmp_path)]) == 1
    rows = json.loads((tmp_path / "demo" / "timings.json").read_text())["stages"]
    assert [r["status"] for r in rows] == ["skipped"] * 3 + ["ran", "ran", "failed"]  # 6 and 7 never started
    assert rows[-1]["stage"].startswith("5. 4-step student") and rows[-1]["seconds"] == STAGE_SECONDS
    assert not any(c[1] == "evaluate.py" for c in calls)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: 5. 4-step student (experiment=distill_4step) failed (exit 3); see its output above"
    ]


def test_from_scratch_times_the_vae_and_base_stages(tmp_path, stubbed):
    calls, _ = stubbed
    assert demo.main(["--from-scratch", "--outputs", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "demo" / "timings.json").read_text())["stages"]
    assert [r["status"] for r in rows] == ["ran"] * 8
    assert [c[2] for c in calls[:3]] == [
        "experiment=vae_tiny",
        "experiment=vae_tiny_decoder",
        "experiment=pretrain_tiny",
    ]


@pytest.mark.parametrize(
    "problem", [None, "torch.compile on a CPU needs a C++ compiler; 'g++' is not installed"]
)
def test_the_lora_compiles_its_step_where_a_compiler_exists(tmp_path, stubbed, capsys, monkeypatch, problem):
    import wan2.lightning.compile as compile_

    monkeypatch.setattr(compile_, "compile_problem", lambda device: problem)
    calls, _ = stubbed
    assert demo.main(["--outputs", str(tmp_path)]) == 0
    (lora,) = [c for c in calls if "experiment=lora_rankup" in c]
    assert "trainer.max_steps=500" in lora and "objective.lr=3e-3" in lora
    assert ("objective.compile=false" in lora) == (problem is not None)  # else the experiment's compile: true
    note = "the LoRA trains without torch.compile"
    assert (note in capsys.readouterr().out) == (problem is not None)
