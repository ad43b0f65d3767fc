"""Load-aware generation (issue 18.3): ``scripts/generate.py --deadline`` picks each batch's profile from the
throughput measured on the run. The chooser and the planner are pure (a fake clock stands in for the load);
end to end, the tiny base and its 4-step student: a tight deadline picks a cheaper profile than a loose one."""

import json

import pytest

from tests.conftest import ROOT, load_script
from wan2.serve.profiles import Planner, Profile, Throughput, choose_profile, ladder

generate = load_script("scripts/generate.py", "generate_script")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _profile(name, frames, steps, guidance=1.0, model="base", side=32):
    return Profile(name, model, frames, side, side, steps, guidance)


# best first, as ladder() builds it: work per video 0.888, 0.087, 0.230, 0.046 units
PROFILES = [
    _profile("standard", 17, 25, 2.5),
    _profile("student", 17, 4, model="student"),
    _profile("fast", 9, 12, 2.5),
    _profile("student-fast", 9, 4, model="student"),
]


def test_units_count_pixels_and_transformer_passes():
    assert PROFILES[0].units == pytest.approx(
        17 * 32 * 32 * (25 * 2 + 1) / 1e6
    )  # guidance: two passes a step
    assert PROFILES[1].units == pytest.approx(17 * 32 * 32 * (4 + 1) / 1e6)  # guidance 1: one pass
    assert PROFILES[0].kwargs == {
        "num_frames": 17,
        "height": 32,
        "width": 32,
        "num_inference_steps": 25,
        "guidance_scale": 2.5,
    }


@pytest.mark.parametrize(
    ("seconds_per_unit", "videos", "seconds_left", "want"),
    [
        (None, 10, 1e9, "student-fast"),  # nothing measured yet: the cheapest
        (1.0, 10, 1e9, "standard"),
        (1.0, 10, 10 * 0.888, "standard"),  # exactly fits
        (1.0, 10, 10 * 0.888 - 0.01, "student"),
        (1.0, 10, 0.9, "student"),
        (1.0, 10, 0.8, "student-fast"),  # neither "student" nor "fast" fits
        (2.0, 10, 0.9, "student-fast"),  # the same queue and time at half the throughput
        (1.0, 10, 0.1, "student-fast"),  # nothing fits: the cheapest
        (1.0, 10, -5.0, "student-fast"),  # the deadline has passed
        (1.0, 1, 0.9, "standard"),  # one video left fits where ten did not
    ],
)
def test_choose_profile(seconds_per_unit, videos, seconds_left, want):
    assert choose_profile(PROFILES, seconds_per_unit, videos, seconds_left).name == want


def test_choose_profile_without_a_student():
    no_student = [PROFILES[0], PROFILES[2]]
    assert choose_profile(no_student, 1.0, 10, 9.0).name == "standard"
    assert choose_profile(no_student, 1.0, 10, 2.4).name == "fast"
    assert choose_profile(no_student, 1.0, 10, 1.0).name == "fast"  # nothing fits: the cheapest


def test_throughput_is_a_running_estimate():
    t = Throughput(weight=0.5)
    assert t.seconds_per_unit is None
    t.add(2.0, 1.0)
    assert (t.seconds_per_unit, t.overhead) == (2.0, 0.0)  # the first batch sets it
    t.add(8.0, 2.0)  # dearer per unit at more units a video: no overhead fits, the weighted mean rate
    assert (t.seconds_per_unit, t.overhead) == (pytest.approx((0.5 * 2.0 + 4.0) / 1.5), 0.0)
    t.add(1.0, 0.0)  # no work: no information
    assert t.batches == 2


def test_throughput_separates_the_overhead_of_a_video_from_its_work():
    t = Throughput(weight=0.5)  # a video costs 0.5 s plus 2 s a unit
    t.add(0.5 + 2.0 * 0.1, 0.1, videos=1)
    assert t.overhead == 0.0 and t.seconds_per_unit == pytest.approx(7.0)  # one kind of batch: all is work
    t.add(4 * 0.5 + 2.0 * 4.0, 4.0, videos=4)
    assert (t.overhead, t.seconds_per_unit) == (pytest.approx(0.5), pytest.approx(2.0))
    t.add(2 * 0.5 + 2.0 * 1.0, 1.0, videos=2)
    assert (t.overhead, t.seconds_per_unit) == (pytest.approx(0.5), pytest.approx(2.0))
    # with the overhead, the dear profile is predicted right; from the cheap one's rate alone, 3.5x too high
    assert (
        choose_profile(PROFILES, t.seconds_per_unit, 10, 10 * (0.5 + 0.888 * 2.0), t.overhead).name
        == "standard"
    )
    assert choose_profile(PROFILES, 7.0, 10, 10 * (0.5 + 0.888 * 2.0)).name == "student"


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_planner_measures_the_first_video_then_degrades_and_recovers_with_the_load():
    clock = FakeClock()
    models = {"base": ("BASE", "base-model"), "student": ("STUDENT", "student-model")}
    plan = Planner(PROFILES, models, batch=4, deadline=clock.now + 60.0, clock=clock)
    first = plan.next(20)
    assert (first.name, first.batch, first.model, first.model_dir) == (
        "student-fast",
        1,
        "student-model",
        "STUDENT",
    )
    assert "measuring" in first.note
    std, student, _, student_fast = (p.units for p in PROFILES)
    clock.now += student_fast * 1.0  # 1 s per unit: 19 standard videos need 16.9 s of the 59.95 left
    pick = plan.next(19)
    assert (pick.name, pick.batch, pick.model_dir) == ("standard", 4, "BASE")
    assert plan.throughput.seconds_per_unit == pytest.approx(1.0)
    clock.now += 4 * std * 9.0  # the load arrives: that batch ran at 9 s per unit (estimate 19/3 s a unit)
    pick = plan.next(15)
    assert pick.name == "student" and plan.throughput.seconds_per_unit == pytest.approx(19 / 3)
    assert "15 left need" in pick.note
    clock.now += 4 * student * 1.0  # the load is gone: 3.3 s a unit, 11 standard videos need 32 s of 27.6
    pick = plan.next(11)
    assert pick.name == "student"
    clock.now += 4 * student * 1.0  # 2.1 s a unit: 7 standard videos need 12.9 s
    pick = plan.next(7)
    assert pick.name == "standard" and pick.batch == 4
    assert plan.next(3).batch == 3  # never more than the queue holds


def test_planner_with_a_fixed_profile_ignores_the_clock():
    clock = FakeClock()
    plan = Planner(PROFILES, {"base": ("B", 1), "student": ("S", 2)}, batch=3, profile="fast", clock=clock)
    for left in (7, 4, 1):
        pick = plan.next(left)
        clock.now += 1e6
        assert (pick.name, pick.batch, pick.note) == ("fast", min(3, left), "")


class FakeModel:
    def __init__(self, steps, guidance):
        self.defaults = {"num_frames": 17, "height": 32, "width": 32}
        self.steps, self.guidance = steps, guidance

    def profile(self, name):
        frames, steps = (17, self.steps) if name == "standard" else (9, max(2, self.steps // 2))
        return {
            "num_frames": frames,
            "height": 32,
            "width": 32,
            "num_inference_steps": steps,
            "guidance_scale": self.guidance,
        }


def test_ladder_keeps_the_students_own_steps_and_guidance():
    base, student = FakeModel(25, 2.5), FakeModel(4, 1.0)
    assert [p.name for p in ladder(base)] == ["standard", "fast"]
    rungs = {p.name: p for p in ladder(base, student)}
    assert list(rungs) == ["standard", "student", "fast", "student-fast"]
    assert (rungs["student-fast"].num_frames, rungs["student-fast"].steps) == (9, 4)
    assert rungs["student-fast"].guidance_scale == 1.0 and rungs["student-fast"].model == "student"
    assert (rungs["fast"].steps, rungs["fast"].guidance_scale) == (12, 2.5)
    assert {p.steps for p in ladder(base, student, steps=1)} == {1}


# ------------------------------------------------------------------------------------------- end to end
BASE = (
    ROOT / "pretrained" / "wan_tiny_base"
)  # 25 steps with guidance 2.5: about 2 s a video on one CPU thread
STUDENT = ROOT / "pretrained" / "wan_tiny_4step"  # its 4-step student, no guidance


def _run(tmp_path, name, deadline):
    events = tmp_path / "events.jsonl"
    events.write_text(
        "".join(json.dumps({"event": "rank_up", "old_rank": 3, "new_rank": 2}) + "\n" for _ in range(3))
    )
    out = tmp_path / name
    argv = ["--model", str(BASE), "--student", str(STUDENT), "--events", str(events), "--out", str(out)]
    rc = generate.main([*argv, "--batch", "2", "--deadline", str(deadline)])
    assert rc == 0
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_a_tight_deadline_picks_a_cheaper_profile_than_a_loose_one(tmp_path, capsys):
    loose = _run(tmp_path, "loose", 1e6)
    tight = _run(tmp_path, "tight", 1e-3)
    err = capsys.readouterr().err
    assert "deadline: measuring with one student-fast video" in err and "(over: the cheapest profile)" in err
    # the first video measures the throughput with the cheapest profile, then a loose deadline takes the best
    assert [r["profile"] for r in loose] == ["student-fast", "standard", "standard"]
    assert [r["profile"] for r in tight] == ["student-fast"] * 3
    assert {(r["model"], r["steps"], r["num_frames"]) for r in loose[1:]} == {(str(BASE), 25, 17)}
    assert {(r["model"], r["steps"], r["num_frames"]) for r in tight} == {(str(STUDENT), 4, 9)}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--deadline", "0"], "--deadline must be a positive number"),
        (["--deadline", "nan"], "--deadline must be a positive number"),
        (["--deadline", "5", "--profile", "fast"], "leave out --profile"),
        (["--deadline", "5", "--steps", "2"], "leave out --steps"),
        (["--profile", "student"], "--profile student needs --student DIR"),
        (["--student", "S", "--lora", "L"], "--student with --lora"),
        (["--max-idle", "3"], "--max-idle and --worker-id are --watch options"),
    ],
)
def test_bad_serving_arguments_are_one_line(tmp_path, capsys, extra, message):
    argv = ["--model", "M", "--prompt", "p", "--out", str(tmp_path / "o"), *extra]
    with pytest.raises(SystemExit) as exc:
        generate.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_deadline_needs_model_not_ab(tmp_path, capsys):
    argv = ["--ab", "A", "B", "--events", "e", "--out", str(tmp_path / "o"), "--deadline", "5"]
    with pytest.raises(SystemExit):
        generate.main(argv)
    assert "--deadline needs --model (not --ab)" in capsys.readouterr().err


def test_a_missing_student_is_one_line_before_any_model_loads(tmp_path, capsys):
    argv = [
        "--model",
        "M",
        "--prompt",
        "p",
        "--out",
        str(tmp_path / "o"),
        "--student",
        str(tmp_path / "nope"),
    ]
    assert generate.main([*argv, "--deadline", "5"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("nope' is not a folder") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_a_fixed_student_profile_uses_the_student_and_records_it(tmp_path):
    out = tmp_path / "videos"
    argv = ["--model", str(BASE), "--student", str(STUDENT), "--prompt", "a new gold row enters"]
    assert generate.main([*argv, "--out", str(out), "--profile", "student-fast"]) == 0
    (row,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert (row["profile"], row["model"], row["steps"], row["num_frames"]) == (
        "student-fast",
        str(STUDENT),
        4,
        9,
    )
    assert (row["height"], row["width"]) == (32, 32)
