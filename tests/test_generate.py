import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_script
from wan2.data.video import decode_mp4
from wan2.inference import Wan2T2V
from wan2.rollout import assign_variant

FAST = ["--profile", "fast", "--steps", "1"]  # 9 frames, one step: these tests check files, not motion


generate = load_script("scripts/generate.py", "generate_script")


def _events(n: int) -> list[dict]:
    kinds = [
        {"event": "rank_up", "old_rank": 3, "new_rank": 2},
        {"event": "hold"},
        {"event": "first_entry", "new_rank": 4, "color": "#4CAF50"},
        {"event": "rank_down", "old_rank": 1, "new_rank": 5, "colour": "purple"},
    ]
    return [{**kinds[i % 4], "user": f"Alice{i}", "user_id": f"u{i}"} for i in range(n)]


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_jsonl_events_to_mp4s_skipping_bad_lines(tiny_export, tmp_path, capsys):
    lines = [json.dumps(e) for e in _events(20)]
    lines.insert(7, "{not json")  # line 8
    lines.insert(14, json.dumps({"event": "rank_up", "user": "Bob", "old_rank": 2, "new_rank": 4}))  # line 15
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    out = tmp_path / "videos"
    rc = generate.main(
        ["--model", str(tiny_export), "--events", str(events), "--out", str(out), "--batch", "8", *FAST]
    )
    captured = capsys.readouterr()
    assert rc == 1  # some lines were skipped
    assert "line 8: skipped" in captured.err
    assert "line 15: skipped: new_rank:" in captured.err
    files = sorted(out.glob("*.mp4"))
    assert len(files) == 20
    assert {"00008.mp4", "00015.mp4"}.isdisjoint(f.name for f in files)
    for f in files:
        assert decode_mp4(f).shape == (9, 32, 32, 3)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert sum(".mp4" in line and "1 steps" in line for line in captured.out.splitlines()) == 20
    rows = _manifest(out)
    assert [Path(r["path"]).name for r in rows] == [f.name for f in files]
    assert all(r["steps"] == 1 and r["variant"] is None and r["seconds"] > 0 for r in rows)
    assert rows[0]["prompt"] == "the green row climbs from #3 to #2"
    assert rows[0]["seed"] == 0 and rows[-1]["seed"] == 21
    assert "Alice" not in (out / "manifest.jsonl").read_text()


def test_ab_routes_by_user_and_records_the_variant(tiny_export, tmp_path):
    events = _events(6)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    a_dir = tmp_path / "model_a"
    os.symlink(tiny_export, a_dir)
    out = tmp_path / "videos"
    rc = generate.main(
        [
            "--ab",
            str(a_dir),
            str(tiny_export),
            "--rollout",
            "0.5",
            "--events",
            str(path),
            "--out",
            str(out),
            "--include-user",
            "--batch",
            "6",
            *FAST,
        ]
    )
    assert rc == 0
    rows = _manifest(out)
    assert len(rows) == 6
    want = [assign_variant(e["user_id"], 0.5) for e in events]
    assert {"A", "B"} <= set(want)
    assert [r["variant"] for r in rows] == want
    assert [r["model"] for r in rows] == [str(a_dir if v == "A" else tiny_export) for v in want]
    assert [r["user"] for r in rows] == [e["user"] for e in events]


def test_prompts_and_a_failing_batch_keep_the_other_videos(tiny_export, tmp_path, monkeypatch, capsys):
    real = Wan2T2V.generate
    calls = []

    def flaky(self, prompt, **kwargs):
        calls.append(prompt)
        if len(calls) == 2:
            raise RuntimeError("simulated failure")
        return real(self, prompt, **kwargs)

    monkeypatch.setattr(Wan2T2V, "generate", flaky)
    out = tmp_path / "videos"
    args = ["--model", str(tiny_export), "--out", str(out), "--batch", "1", *FAST]
    for p in (
        "the red row drops from #1 to #4",
        "the blue row holds #1 with a pulse",
        "a new gold row enters",
    ):
        args += ["--prompt", p]
    rc = generate.main(args)
    assert rc == 1
    assert "line 2: failed: simulated failure" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.mp4")) == ["00001.mp4", "00003.mp4"]
    assert [r["prompt"] for r in _manifest(out)] == [
        "the red row drops from #1 to #4",
        "a new gold row enters",
    ]


def test_assign_variant_split_and_stability():
    ids = [f"user-{i}" for i in range(100_000)]
    for rollout in (0.1, 0.5):
        share = sum(assign_variant(u, rollout) == "B" for u in ids) / len(ids)
        assert abs(share - rollout) < 0.01, (rollout, share)
    assert assign_variant("x", 0.0) == "A" and assign_variant("x", 1.0) == "B"
    assert [assign_variant(u, 0.5, salt="a") for u in ids[:100]] != [
        assign_variant(u, 0.5) for u in ids[:100]
    ]
    with pytest.raises(ValueError, match="^rollout:"):
        assign_variant("x", 1.5)
    # the same ids get the same variants in another process (whatever its hash seed)
    code = (
        "import sys; from wan2.rollout import assign_variant; "
        "print(''.join(assign_variant(f'user-{i}', 0.1) for i in range(2000)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=ROOT
    ).stdout.strip()
    assert other == "".join(assign_variant(u, 0.1) for u in ids[:2000])
