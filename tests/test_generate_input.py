"""scripts/generate.py input (issue 14.4): every bad events line is skipped with its line number while the good
lines still give their videos; bad files and folders are one line (exit 2); a second run into the same --out is
refused unless --overwrite, and the manifest stays whole."""

import fcntl
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, TINY_SAMPLING
from wan2.backbones.stack import build_backbone
from wan2.export import export_pipeline
from wan2.inference import NonFiniteVideoError, Wan2T2V

SAMPLING = TINY_SAMPLING
FAST = ["--profile", "fast", "--steps", "1"]  # 9 frames, one step: these tests check files, not motion
GOOD = {"event": "rank_up", "old_rank": 3, "new_rank": 2, "user_id": "u1"}


def _load_script():
    spec = importlib.util.spec_from_file_location("generate_script", ROOT / "scripts" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


generate = _load_script()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A random tiny Wan export (shared by the test files of one session through the base temp dir)."""
    path = tmp_path_factory.getbasetemp() / "wan_tiny_export"
    if not path.exists():
        torch.manual_seed(0)
        bb = build_backbone(OmegaConf.load("configs/model/wan_tiny.yaml")).eval()
        export_pipeline(bb, path, sampling=SAMPLING)
    return path


def _line(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


# bad line -> a word its one-line message must hold
BAD_LINES = {
    b'\xff\xfe{"event": "rank_up"}': "not UTF-8",
    b'{"event": "rank_up", "old_rank": 3, "new_rank": 2, "user": "caf\xe9"}': "not UTF-8",  # latin-1
    b"[" * 100_000: "nested too deep",
    b'{"a":' * 100_000: "nested too deep",
    b"[1, 2]": "expected a JSON object, got list",
    b'"rank_up"': "expected a JSON object, got str",
    b"42": "expected a JSON object, got int",
    b"null": "expected a JSON object, got NoneType",
    b'{"event": "rank_up"': "not JSON: Expecting ',' delimiter at column 20",
    b"\x00\x00\x00": "Expecting value",
    b'{"event": "' + b"x" * (2 << 20) + b'"}': "over the 1048576-byte limit",
    _line(old_rank=float("nan")): "old_rank: nan is not an integer rank",
    b'{"event": "rank_up", "old_rank": ' + b"1" * 5000 + b', "new_rank": 2}': "Exceeds the limit",
    _line(old_rank=True): "old_rank: True is not an integer rank",
    _line(user_id={"nested": [1]}): "user_id: expected a string or an integer, got dict",
    _line(user=["a"]): "user: expected a string or an integer, got list",
    _line(event="\x1b[31mred"): "event: ",
    _line(event=["rank_up"]): "event: ",
    _line(color="\ud800"): "color",
    _line(new_rank=2_000_000): "above 1,000,000",
}


def _events_bytes() -> tuple[bytes, dict[int, str], list[int]]:
    """Good lines (first with a BOM, one with CRLF, the last without a newline) around every bad line."""
    lines, bad, good = [b"\xef\xbb\xbf" + _line()], {}, [1]
    for raw, word in BAD_LINES.items():
        lines.append(raw)
        bad[len(lines)] = word
        if len(lines) % 7 == 0:
            lines.append(_line(old_rank=5, new_rank=1, user_id=f"u{len(lines)}") + b"\r")
            good.append(len(lines))
    lines.append(b"   ")  # blank: ignored, neither good nor bad
    lines.append(_line(event="hold", rank=2))
    good.append(len(lines))
    return b"\n".join(lines), bad, good


def test_read_items_skips_each_bad_line_with_its_number(tmp_path):
    data, bad, good = _events_bytes()
    (tmp_path / "events.jsonl").write_bytes(data)
    args = SimpleNamespace(
        prompt=None,
        ab=None,
        model=str(tmp_path),
        events=str(tmp_path / "events.jsonl"),
        tone=None,
        style=None,
        seed=0,
        rollout=0.1,
    )
    items, errors = generate.read_items(args)
    assert [it["line"] for it in items] == good
    assert [int(e.split(":")[0].removeprefix("line ")) for e in errors] == sorted(bad)
    for e in errors:
        n = int(e.split(":")[0].removeprefix("line "))
        assert e.startswith(f"line {n}: skipped: ") and bad[n].lower() in e.lower(), e
        assert "\n" not in e and "\x1b" not in e and len(e) < 400
        e.encode("utf-8")  # printable on any UTF-8 terminal (no lone surrogates)


def test_mixed_events_file_subprocess_good_lines_become_videos(tiny_export, tmp_path):
    """As a user runs it: one stderr line per bad line, no traceback, the good lines' mp4s and manifest rows."""
    data, bad, good = _events_bytes()
    events = tmp_path / "events.jsonl"
    events.write_bytes(data)
    out = tmp_path / "videos"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "scripts" / "generate.py"), "--model", str(tiny_export)]
    cmd += ["--events", str(events), "--out", str(out), "--batch", "8", *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    skipped = [ln for ln in proc.stderr.splitlines() if ": skipped: " in ln]
    assert [int(ln.split(":")[0].removeprefix("line ")) for ln in skipped] == sorted(bad)
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"{n:05d}.mp4" for n in good]
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == good
    assert all(Path(r["path"]).is_file() or (tmp_path / r["path"]).is_file() for r in rows)
    assert f"wrote {len(good)} videos to {out}, skipped {len(bad)}" in proc.stderr


def _one_error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_events_files_and_out_folders_are_one_line(tiny_export, tmp_path, capsys):
    out = tmp_path / "videos"
    m = ["--model", str(tiny_export)]
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_bytes(b"\n  \n\r\n")
    (tmp_path / "folder.jsonl").mkdir()
    cases = {
        str(tmp_path / "missing.jsonl"): "No such file",
        str(tmp_path / "folder.jsonl"): "is a folder",
        "/dev/zero": "not a regular file",
        str(tmp_path / "empty.jsonl"): "holds no events",
        str(tmp_path / "blank.jsonl"): "holds no events",
    }
    for path, word in cases.items():
        assert generate.main([*m, "--events", path, "--out", str(out), *FAST]) == 2
        line = _one_error(capsys)
        assert line.startswith("error: --events:") and word in line, line
    (tmp_path / "events.jsonl").write_text(json.dumps(GOOD) + "\n")
    ev = ["--events", str(tmp_path / "events.jsonl")]
    afile = tmp_path / "a_file"
    afile.write_text("x")
    for bad_out, word in ((afile / "videos", "cannot write there"), (afile, "is not a folder")):
        assert generate.main([*m, *ev, "--out", str(bad_out), *FAST]) == 2
        line = _one_error(capsys)
        assert line.startswith("error: --out:") and word in line, line
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "wan2.json").write_text("[" * 100_000)
    assert generate.main(["--model", str(broken), *ev, "--out", str(out), *FAST]) == 2
    assert _one_error(capsys).startswith("error: --model:")
    with pytest.raises(SystemExit) as exit_:  # argparse: usage line + one error line
        generate.main([*m, *ev, "--out", str(out), "--lora-scale", "nan", *FAST])
    assert exit_.value.code == 2 and "--lora-scale must be a finite number" in capsys.readouterr().err
    assert not list(out.glob("*.mp4"))
    with open(out / ".generate.lock", "w") as held:  # another run is writing into the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert generate.main([*m, *ev, "--out", str(out), *FAST]) == 2
        assert "another generate.py run" in _one_error(capsys)


def _manifest(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def test_second_run_is_refused_and_overwrite_replaces_keeping_the_manifest_whole(
    tiny_export, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "videos"
    events = tmp_path / "events.jsonl"
    two = [GOOD, {"event": "hold", "rank": 2}]
    events.write_text("".join(json.dumps(e) + "\n" for e in two))
    args = ["--model", str(tiny_export), "--events", str(events), "--out", str(out), "--batch", "1", *FAST]
    assert generate.main(args) == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.mp4")}
    assert sorted(first) == ["00001.mp4", "00002.mp4"] and len(_manifest(out)) == 2
    capsys.readouterr()
    # a second run is refused in one line; nothing changes
    assert generate.main(args) == 2
    assert "already holds 2 videos and a manifest.jsonl" in _one_error(capsys)
    assert {p.name: p.read_bytes() for p in out.glob("*.mp4")} == first
    # --overwrite where every line is bad: nothing generated, the earlier videos stay
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    bad_args = [*args, "--overwrite"]
    bad_args[bad_args.index(str(events))] = str(tmp_path / "bad.jsonl")
    assert generate.main(bad_args) == 1
    assert {p.name: p.read_bytes() for p in out.glob("*.mp4")} == first and len(_manifest(out)) == 2
    # --overwrite killed after its first video: the manifest holds the new row 1 and the old row 2, whole
    (out / ".00007.tmp-leftover.mp4").write_bytes(b"half")  # a killed run's temp file, removed on start
    real, calls = Wan2T2V.generate, []

    def killed(self, prompt, **kw):
        calls.append(prompt)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, prompt, seed=[5], **{k: v for k, v in kw.items() if k != "seed"})

    monkeypatch.setattr(Wan2T2V, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        generate.main([*args, "--overwrite"])
    monkeypatch.setattr(Wan2T2V, "generate", real)
    rows = _manifest(out)
    assert sorted(r["line"] for r in rows) == [1, 2] and [r["seed"] for r in rows if r["line"] == 1] == [5]
    assert all((out / Path(r["path"]).name).is_file() for r in rows)
    assert not (out / ".00007.tmp-leftover.mp4").exists()
    # --overwrite with one event: only its video and row remain
    events.write_text(json.dumps(two[1]) + "\n")
    assert generate.main([*args, "--overwrite"]) == 0
    assert [p.name for p in out.glob("*.mp4")] == ["00001.mp4"]
    assert [r["line"] for r in _manifest(out)] == [1] and _manifest(out)[0]["prompt"].startswith(
        "the green row"
    )


def test_non_finite_video_in_a_batch_keeps_the_finite_ones(tiny_export, tmp_path, capsys, monkeypatch):
    real = Wan2T2V.generate

    def one_diverges(self, prompt, **kw):
        videos = real(self, prompt, **kw)
        videos[1] = None
        raise NonFiniteVideoError("frames: video 1 of 3 holds NaN / Inf values", videos, [1])

    monkeypatch.setattr(Wan2T2V, "generate", one_diverges)
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(GOOD) + "\n" for _ in range(3)))
    out = tmp_path / "videos"
    rc = generate.main(
        ["--model", str(tiny_export), "--events", str(events), "--out", str(out), "--batch", "3", *FAST]
    )
    assert rc == 1
    assert "line 2: failed: frames: NaN / Inf" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.mp4")) == ["00001.mp4", "00003.mp4"]
    assert [r["line"] for r in _manifest(out)] == [1, 3]
