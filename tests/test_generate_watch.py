"""Exactly once behind a queue (issue 18.4): ``scripts/generate.py --watch SPOOL`` claims the JSONL files renamed
into the spool and makes one video per event id, however often it is killed (kill -9 at seeded random points)
or stopped (SIGTERM: the batch in flight is finished, exit 0). Generations are counted in the journal, not by
files; no half-written mp4 is ever visible."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_script, train_env
from wan2.data.video import decode_mp4
from wan2.serve.journal import JOURNAL, Journal, publish, recover

generate = load_script("scripts/generate.py", "generate_script")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

STUDENT = (
    ROOT / "pretrained" / "wan_tiny_4step"
)  # one step, 9 frames of 32x32: a fraction of a second a video
CHEAP = ["--profile", "fast", "--steps", "1"]
SHAPE = (9, 32, 32, 3)


def _event(i: int, **extra) -> str:
    kinds = [
        {"event": "rank_up", "old_rank": 3, "new_rank": 2},
        {"event": "hold"},
        {"event": "rank_down", "old_rank": 1, "new_rank": 4},
    ]
    return json.dumps({"id": f"ev{i:03d}", **kinds[i % 3], "user": f"User{i}", **extra})


def _drop(spool: Path, name: str, lines: list[str]) -> None:
    """Write elsewhere in the spool (a name starting with '.'), then rename in: what a producer does."""
    tmp = spool / f".{name}.tmp"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.rename(tmp, spool / name)


def _journal(out: Path) -> list[dict]:
    if not (out / JOURNAL).exists():
        return []
    return [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()]


def _made(out: Path) -> list[str]:
    """The id of every generation the journal records (one per published video)."""
    return [r["id"] for r in _journal(out) if r["op"] == "video"]


def _check_output(out: Path) -> None:
    """Every visible mp4 is whole and recorded once; temp files are hidden names."""
    made = _made(out)
    assert len(made) == len(set(made)), sorted(m for m in made if made.count(m) > 1)
    for p in out.iterdir():
        if p.name.startswith("."):
            continue
        if p.suffix == ".mp4":
            assert decode_mp4(p).shape == SHAPE, p
            assert p.stem in made, p
        else:
            assert p.name == JOURNAL, p


def _argv(spool: Path, out: Path, *extra: str) -> list[str]:
    return ["--watch", str(spool), "--model", str(STUDENT), "--out", str(out), *CHEAP, *extra]


# ------------------------------------------------------------------------------------------- in process
def test_watch_claims_files_makes_each_id_once_and_reports_bad_lines(tmp_path, capsys):
    spool, out = tmp_path / "spool", tmp_path / "videos"
    spool.mkdir()
    _drop(spool, "a.jsonl", [_event(0), "{not json", _event(1), json.dumps({"event": "hold"}), _event(0)])
    not_image = tmp_path / "board.png"
    not_image.write_text("a text file named .png")
    _drop(
        spool,
        "b.jsonl",
        [
            _event(1, event="hold"),
            _event(2),
            json.dumps({"id": "../x", "event": "hold"}),
            _event(9, board=str(not_image)),  # a board that is no image: that line fails, named
        ],
    )
    (spool / ".c.jsonl.tmp").write_text(_event(7) + "\n")  # a producer still writing: not claimed
    (spool / "notes.txt").write_text(_event(8) + "\n")  # not *.jsonl: not claimed
    assert generate.main(_argv(spool, out, "--max-idle", "0", "--batch", "2")) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.glob("*.mp4")) == ["ev000.mp4", "ev001.mp4", "ev002.mp4"]
    assert sorted(_made(out)) == ["ev000", "ev001", "ev002"]  # ev000 twice in a, ev001 in a and b: once each
    _check_output(out)
    rows = {r["id"]: r for r in _journal(out) if r["op"] == "video"}
    assert rows["ev000"]["profile"] == "fast" and rows["ev000"]["steps"] == 1 and "user" not in rows["ev000"]
    assert sorted(p.name for p in spool.iterdir()) == [
        ".c.jsonl.tmp",
        "claimed",
        "done",
        "failed",
        "notes.txt",
    ]
    done = sorted(p.name for p in (spool / "done").iterdir())
    assert [n.split(".", 1)[1] for n in done] == ["a.jsonl", "b.jsonl"]
    assert (spool / "done" / done[0]).read_text().count("\n") == 5  # the file as it was dropped
    failed = {n.split(".", 1)[1]: n for n in os.listdir(spool / "failed")}
    a_bad = [json.loads(x) for x in (spool / "failed" / failed["a.jsonl"]).read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in a_bad] == [(2, "not JSON"), (4, "id")]
    assert a_bad[0]["event"] == "{not json" and "missing" in a_bad[1]["reason"]
    b_bad = [json.loads(x) for x in (spool / "failed" / failed["b.jsonl"]).read_text().splitlines()]
    assert [r["line"] for r in b_bad] == [3, 4] and "is not 1-128 letters" in b_bad[0]["reason"]
    assert b_bad[1]["reason"] == f"board: {str(not_image)!r} is not an image"
    assert not list((spool / "claimed").rglob("*.jsonl"))

    # the same ids dropped again (a producer retrying) make nothing new; a new id does
    _drop(spool, "a.jsonl", [_event(0), _event(2), _event(3)])
    assert generate.main(_argv(spool, out, "--max-idle", "0")) == 0
    assert sorted(_made(out)) == ["ev000", "ev001", "ev002", "ev003"]
    assert len(os.listdir(spool / "done")) == 3


def test_recover_finishes_journaled_renames_and_drops_the_rest(tmp_path):
    out = tmp_path / "videos"
    out.mkdir()
    journal = Journal(out)
    publish(journal, "done1", b"mp4-bytes-1", {"profile": "fast"})
    journal.append({"op": "video", "id": "mid", "tmp": ".mid.tmp-00ff.mp4"})  # killed before its rename
    (out / ".mid.tmp-00ff.mp4").write_bytes(b"mp4-bytes-2")
    (out / ".half.tmp-abcd.mp4").write_bytes(b"half")  # killed while encoding: no journal line
    (out / "byhand.mp4").write_bytes(b"copied in")
    journal.close()
    with open(out / JOURNAL, "ab") as f:
        f.write(b'{"op": "video", "id": "torn", "tm')  # killed while appending
    journal = Journal(out)
    assert (out / JOURNAL).read_bytes().endswith(b"\n")  # the torn line is cut: the next append is whole
    assert recover(journal) == {"done1", "mid", "byhand"}
    assert sorted(os.listdir(out)) == ["byhand.mp4", "done1.mp4", JOURNAL, "mid.mp4"]
    assert (out / "mid.mp4").read_bytes() == b"mp4-bytes-2"
    journal.append({"op": "file"})
    assert [r["op"] for r in Journal(out).records] == ["video", "video", "file"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--watch", "SPOOL", "--ab", "A", "B", "--out", "O"], "--watch needs --model"),
        (["--watch", "SPOOL", "--model", "M", "--out", "O", "--overwrite"], "leave out --overwrite"),
        (["--watch", "SPOOL", "--model", "M", "--out", "O", "--max-idle", "-1"], "--max-idle must be >= 0"),
        (["--watch", "SPOOL", "--events", "E", "--model", "M", "--out", "O"], "not allowed with argument"),
    ],
)
def test_bad_watch_arguments_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        generate.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_missing_spool_or_a_bad_worker_id_is_one_line(tmp_path, capsys):
    out = tmp_path / "videos"
    assert generate.main(_argv(tmp_path / "nope", out)) == 2
    assert capsys.readouterr().err.strip().endswith("is not a folder")
    assert generate.main(_argv(tmp_path, out, "--worker-id", "a/b")) == 2
    assert "--worker-id: 'a/b'" in capsys.readouterr().err


def test_sigterm_finishes_the_batch_in_flight_and_exits_0(tmp_path, monkeypatch, capsys):
    """SIGTERM arrives during the second batch: that batch is published, the worker exits 0 and leaves the
    file claimed; the next start makes the rest (the signal is sent from inside the generate call)."""
    from wan2.inference import Wan2T2V

    spool, out = tmp_path / "spool", tmp_path / "videos"
    spool.mkdir()
    _drop(spool, "q.jsonl", [_event(i) for i in range(6)])
    real, calls = Wan2T2V.generate, []

    def signalled(self, prompt, **kwargs):
        calls.append(prompt)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, prompt, **kwargs)

    monkeypatch.setattr(Wan2T2V, "generate", signalled)
    handler = signal.getsignal(signal.SIGTERM)
    assert generate.main(_argv(spool, out, "--batch", "2")) == 0  # no --max-idle: only the signal stops it
    assert signal.getsignal(signal.SIGTERM) is handler  # the worker's handler is removed again
    assert "SIGTERM: stopped after the current batch" in capsys.readouterr().err
    assert sorted(_made(out)) == ["ev000", "ev001", "ev002", "ev003"] and len(calls) == 2
    assert len(list((spool / "claimed").rglob("*.jsonl"))) == 1
    _check_output(out)
    assert generate.main(_argv(spool, out, "--batch", "2", "--max-idle", "0")) == 0
    assert sorted(_made(out)) == [f"ev{i:03d}" for i in range(6)] and len(calls) == 3
    assert not list((spool / "claimed").rglob("*.jsonl"))


# ------------------------------------------------------------------------------------------- subprocesses
def _start(spool: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "scripts" / "generate.py"), *_argv(spool, out, "--batch", "1", *extra)]
    env = train_env(PYTHONPATH=str(ROOT))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Poll ``cond()`` while ``proc`` runs (imports take seconds on a loaded CPU)."""
    end = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _starts(out: Path) -> int:
    return sum(r["op"] == "start" for r in _journal(out))


def _spool_with_events(tmp_path: Path, n: int) -> tuple[Path, Path, list[str]]:
    spool, out = tmp_path / "spool", tmp_path / "videos"
    spool.mkdir()
    half = n // 2
    _drop(spool, "first.jsonl", [_event(i) for i in range(half)] + ["{bad"])
    _drop(spool, "second.jsonl", [_event(i) for i in range(half, n)] + [_event(0)])  # ev000 again
    return spool, out, [f"ev{i:03d}" for i in range(n)]


def _kill_at_random_points(spool, out, ids: list[str], kills: int, seed: int) -> None:
    """Start a worker, kill -9 it a seeded random time (up to a few videos) after its first batch starts;
    ``kills`` times. Each kill must land while the queue still holds work."""
    rng = random.Random(seed)
    for _ in range(kills):
        before = _starts(out)
        proc = _start(spool, out)
        _wait_for(lambda n=before: _starts(out) > n, proc)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()
        proc.wait()
        _check_output(out)
        assert len(_made(out)) < len(ids), "the queue was done before the kill: give the worker more work"


def _check_complete(spool: Path, out: Path, ids: list[str]) -> None:
    _check_output(out)
    assert sorted(_made(out)) == ids  # every id made, each exactly once (counted in the journal)
    assert sorted(p.stem for p in out.glob("*.mp4")) == ids
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert sorted(p.name for p in spool.iterdir()) == ["claimed", "done", "failed"]
    assert not list((spool / "claimed").rglob("*.jsonl"))
    assert sorted(n.split(".", 1)[1] for n in os.listdir(spool / "done")) == ["first.jsonl", "second.jsonl"]
    (failed,) = os.listdir(spool / "failed")
    assert failed.endswith("first.jsonl") and '"reason": "not JSON' in (spool / "failed" / failed).read_text()


def _sigterm_mid_queue(spool: Path, out: Path, ids: list[str]) -> None:
    """A real SIGTERM once a video is out: exit 0 after the batch in flight, the rest left for a restart."""
    proc = _start(spool, out)
    _wait_for(lambda: len(_made(out)) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: stopped after the current batch" in err
    _check_output(out)
    last = [r for r in _journal(out) if r["op"] == "start"][-1]
    assert set(last["ids"]) <= set(_made(out))  # the batch in flight was finished and published
    assert len(_made(out)) < len(ids) and list((spool / "claimed").rglob("*.jsonl"))  # work was left


def test_kill_9_at_a_random_point_loses_and_repeats_nothing(tmp_path):
    """A worker process killed -9 at a seeded random point; a restart (here in this process, which has torch
    imported already) finishes the queue: each id one video, made once."""
    spool, out, ids = _spool_with_events(tmp_path, 16)
    _kill_at_random_points(spool, out, ids, kills=1, seed=0)
    assert list((spool / "claimed").rglob("*.jsonl"))  # the killed worker left its claim
    assert generate.main(_argv(spool, out, "--max-idle", "0")) == 0
    _check_complete(spool, out, ids)


@pytest.mark.slow
def test_sigterm_and_many_kills_at_random_points_lose_and_repeat_nothing(tmp_path):
    """All in worker processes: SIGTERM mid-queue (exit 0), five kill -9 at seeded random points, a restart
    that waits for work (no --max-idle) until the queue is done, SIGTERM while idle (exit 0)."""
    spool, out, ids = _spool_with_events(tmp_path, 24)
    _sigterm_mid_queue(spool, out, ids)
    _kill_at_random_points(spool, out, ids, kills=5, seed=1234)
    proc = _start(spool, out)
    _wait_for(lambda: len(os.listdir(spool / "done")) == 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    _check_complete(spool, out, ids)
    assert _starts(out) >= len(_made(out))  # batches started (some more than once) vs videos made


def test_watch_with_a_deadline_records_each_videos_profile(tmp_path):
    """--deadline in --watch counts from each file's claim; the journal records every video's profile."""
    spool, out = tmp_path / "spool", tmp_path / "videos"
    spool.mkdir()
    _drop(spool, "q.jsonl", [_event(i) for i in range(3)])
    argv = ["--watch", str(spool), "--model", str(STUDENT), "--student", str(STUDENT), "--out", str(out)]
    assert generate.main([*argv, "--deadline", "0.001", "--max-idle", "0"]) == 0
    rows = [r for r in _journal(out) if r["op"] == "video"]
    # nothing fits: the cheapest, the 4-step model's fast profile (9 frames, 2 steps; the student keeps its 4)
    assert [r["profile"] for r in rows] == ["fast"] * 3
    assert {(r["num_frames"], r["steps"], r["model"]) for r in rows} == {(9, 2, str(STUDENT))}


class Crash(BaseException):
    """Stands in for a kill at one exact point (nothing on the way catches a BaseException)."""


@pytest.mark.parametrize("point", ["encoding", "journal", "rename"])
def test_a_crash_at_each_point_of_a_publish_is_repaired_on_restart(tmp_path, monkeypatch, point):
    """Kills rarely land inside a publish's few microseconds, so each window gets an exact crash: half an mp4
    in its temp file, half a journal line, a journal line whose rename did not happen."""
    import wan2.serve.journal as journal_mod

    spool, out = tmp_path / "spool", tmp_path / "videos"
    spool.mkdir()
    ids = [f"ev{i:03d}" for i in range(4)]
    _drop(spool, "q.jsonl", [_event(i) for i in range(4)])
    real_write, real_replace, seen = journal_mod._write_all, os.replace, []

    def write(fd, data):
        kind = (
            "journal" if data.startswith(b'{"op": "video"') else "encoding" if b"ftyp" in data[:16] else None
        )
        seen.append(kind)
        if kind == point and seen.count(kind) == 3:  # the third video
            real_write(fd, data[: len(data) // 2])
            raise Crash
        real_write(fd, data)

    def replace(src, dst):
        if point == "rename" and str(dst).endswith("ev002.mp4"):
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(journal_mod, "_write_all", write)
    monkeypatch.setattr(journal_mod.os, "replace", replace)
    with pytest.raises(Crash):
        generate.main(_argv(spool, out, "--batch", "1", "--max-idle", "0"))
    monkeypatch.undo()
    temps = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert temps and all(p.startswith(".ev002.tmp-") for p in temps)  # hidden: never a visible half mp4
    assert not (out / "ev002.mp4").exists()
    assert (out / JOURNAL).read_bytes().endswith(b"\n") == (point != "journal")
    assert generate.main(_argv(spool, out, "--max-idle", "0")) == 0  # the restart
    _check_output(out)
    assert sorted(_made(out)) == ids and sorted(p.stem for p in out.glob("*.mp4")) == ids
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    starts = [i for r in _journal(out) if r["op"] == "start" for i in r["ids"]]
    # made again only where the crash came before the journal line (the rename is finished, not redone)
    assert starts.count("ev002") == (1 if point == "rename" else 2)


def test_serve_modules_import_without_torch():
    """Bad arguments and spool files are reported before torch loads (docs/architecture.md: wan2/serve)."""
    code = (
        "import sys, wan2.serve.events, wan2.serve.profiles, wan2.serve.journal, wan2.serve.watch, "
        "wan2.serve.engine; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


CLAIM_ALL = """
import sys, time
from pathlib import Path
from wan2.serve.watch import Spool

spool = Spool(Path(sys.argv[1]), sys.argv[2])
while not Path(sys.argv[3]).exists():  # start together
    time.sleep(0.001)
while (path := spool.claim()) is not None:
    print(path.name.split(".", 1)[1], flush=True)
"""


def test_of_several_workers_racing_on_one_spool_exactly_one_claims_each_file(tmp_path):
    """Four processes claim from one spool at once (torch-free: the claim alone); every file is claimed by
    exactly one of them."""
    spool, go = tmp_path / "spool", tmp_path / "go"
    spool.mkdir()
    names = [f"f{i:03d}.jsonl" for i in range(200)]
    for name in names:
        _drop(spool, name, [_event(0)])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM_ALL, str(spool), f"w{k}", str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    time.sleep(0.5)
    go.touch()
    claims = [proc.communicate(timeout=120)[0].split() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert sorted(n for c in claims for n in c) == names  # each once, none lost
    assert sorted(p.name for p in spool.iterdir()) == ["claimed", "done", "failed"]
    for k, c in enumerate(claims):
        assert sorted(p.name.split(".", 1)[1] for p in (spool / "claimed" / f"w{k}").iterdir()) == sorted(c)


def test_sigterm_while_the_models_load_exits_0_without_claiming(tmp_path, monkeypatch, capsys):
    import wan2.serve.engine as engine

    spool, out = tmp_path / "spool", tmp_path / "videos"
    spool.mkdir()
    _drop(spool, "q.jsonl", [_event(0)])
    real = engine.load_models

    def load_then_signal(args):
        models = real(args)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives before the worker exists
        return models

    monkeypatch.setattr(engine, "load_models", load_then_signal)
    assert generate.main(_argv(spool, out)) == 0  # no --max-idle: only the signal ends it
    assert "SIGTERM: stopped" in capsys.readouterr().err
    assert (spool / "q.jsonl").exists() and not _made(out)
