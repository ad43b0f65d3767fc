"""Exactly one video per event id in an output folder, however often the writer is killed (``--watch``).

Publishing a video: (1) encode the mp4 to a hidden temp name ``.ID.tmp-XXXX.mp4`` and fsync it; (2) append a
``{"op": "video", "id": ID, "tmp": ...}`` line to ``journal.jsonl`` and fsync it: from here on the video counts
as made; (3) rename the temp file to ``ID.mp4``. A kill before (2) leaves an unreferenced temp file (deleted on
restart, the video is made again); a kill after (2) leaves a journal line whose rename ``recover`` finishes. A
kill inside (2) leaves a torn last line, cut off on restart. So every ``ID.mp4`` is whole, and each id has
exactly one "video" line: the journal counts generations, not files.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
from pathlib import Path

from wan2.serve.events import InputError, one_line

JOURNAL = "journal.jsonl"
LOCK = ".generate.lock"  # the lock file of scripts/generate.py runs: a watch and a run never share a folder
TEMP = re.compile(r"^\.(.+)\.tmp-[0-9a-f]+\.mp4$")


def lock_folder(out: Path):
    """Create ``out`` and hold its lock (one writer per output folder); one-line ``InputError`` if not."""
    try:
        if out.exists() and not out.is_dir():
            raise InputError(f"--out: {str(out)!r} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        lock = (out / LOCK).open("w")
    except OSError as err:
        raise InputError(
            f"--out: {str(out)!r}: cannot write there ({err.strerror or one_line(err)})"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise InputError(f"--out: {str(out)!r}: another generate.py run is writing into it") from None
    return lock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """``out/journal.jsonl``: one JSON object a line, appended and fsynced (the record of what was made).
    ``records`` holds the lines there were when it was opened (what ``recover`` needs), not later appends."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / JOURNAL
        self.records = self._read_and_repair()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _read_and_repair(self) -> list[dict]:
        """The whole lines; a torn last line (a kill while appending) is cut off so the next append is whole."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) != len(data):
            os.truncate(self.path, len(whole))
        records = []
        for line in whole.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
        return records

    def append(self, record: dict) -> None:
        _write_all(self._fd, (json.dumps(record) + "\n").encode())
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    def videos(self) -> list[dict]:
        return [r for r in self.records if r.get("op") == "video"]


def recover(journal: Journal) -> set[str]:
    """Finish the renames a kill interrupted, delete unreferenced temp files; returns the ids already made
    (a journal "video" line, or an ``ID.mp4`` present without one, e.g. copied in by hand)."""
    out = journal.out
    made = set()
    for rec in journal.videos():
        made.add(str(rec["id"]))
        final, tmp = out / f"{rec['id']}.mp4", out / str(rec.get("tmp", ""))
        if not final.exists() and rec.get("tmp") and tmp.is_file():
            os.replace(tmp, final)
    for p in out.iterdir():
        if TEMP.match(p.name):
            p.unlink(missing_ok=True)
        elif p.suffix == ".mp4" and not p.name.startswith("."):
            made.add(p.stem)
    _fsync_dir(out)
    return made


def publish(journal: Journal, video_id: str, mp4: bytes, record: dict) -> Path:
    """Write ``mp4`` (encoded bytes) as ``out/ID.mp4`` in the three steps of the module docstring."""
    out = journal.out
    tmp = out / f".{video_id}.tmp-{secrets.token_hex(4)}.mp4"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, mp4)
        os.fsync(fd)
    finally:
        os.close(fd)
    final = out / f"{video_id}.mp4"
    journal.append({"op": "video", "id": video_id, "tmp": tmp.name, "path": str(final), **record})
    os.replace(tmp, final)
    _fsync_dir(out)
    return final
