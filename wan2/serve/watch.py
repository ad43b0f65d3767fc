"""A long-running generation worker behind a spool folder (``scripts/generate.py --watch SPOOL``).

Producers write a JSONL file of events elsewhere (or under a name starting with '.') and rename it into SPOOL
as ``*.jsonl``. The worker claims a file by renaming it to ``SPOOL/claimed/WORKER/NS.NAME`` (atomic: of several
workers on one spool exactly one gets it), makes one video per event ``id`` into ``--out`` (exactly once there,
see ``wan2.serve.journal``), writes the bad lines with their reasons to ``SPOOL/failed/NS.NAME`` and moves the
file to ``SPOOL/done/NS.NAME``. A restarted worker (same ``--worker-id``: by default the host name and the
``--out`` folder) first finishes the files it had claimed. SIGTERM / SIGINT: the batch being made is finished
and published, then the worker exits 0 (its claimed file is resumed by the next start).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import time
import zlib
from pathlib import Path

from wan2.serve.events import (
    EVENT_ID,
    InputError,
    board_path,
    event_id,
    event_lines,
    one_line,
    parse_json,
    user_field,
)
from wan2.serve.journal import Journal, lock_folder, publish, recover
from wan2.serve.profiles import Planner, Throughput, ladder

POLL_SECONDS = 0.2  # how often an idle worker looks at the spool


def default_worker_id(out: Path) -> str:
    """Stable across restarts of the worker that writes ``out`` (so it finds its own claimed files)."""
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname()) or "host"
    digest = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
    return f"{host}-{digest}"


class Spool:
    """The spool's folders: incoming ``*.jsonl`` at the top, ``claimed/WORKER/``, ``done/``, ``failed/``."""

    def __init__(self, root: Path, worker_id: str):
        if not EVENT_ID.match(worker_id):
            raise InputError(f"--worker-id: {worker_id!r} is not letters, digits, '.', '_' or '-'")
        if not root.is_dir():
            raise InputError(f"--watch: {str(root)!r} is not a folder")
        self.root = root
        self.claimed = root / "claimed" / worker_id
        self.done, self.failed = root / "done", root / "failed"
        try:
            for d in (self.claimed, self.done, self.failed):
                d.mkdir(parents=True, exist_ok=True)
            for p in self.claimed.glob(".*.failed.tmp"):  # a kill while writing a failed/ record
                p.unlink()
        except OSError as err:
            raise InputError(
                f"--watch: {str(root)!r}: cannot write there ({err.strerror or one_line(err)})"
            ) from None

    def mine(self) -> list[Path]:
        """Files this worker claimed and has not finished (a kill or SIGTERM left them), oldest claim first."""
        return sorted(p for p in self.claimed.iterdir() if not p.name.startswith(".") and p.is_file())

    def claim(self) -> Path | None:
        """Rename the oldest incoming ``*.jsonl`` into ``claimed/WORKER/``; None when there is none."""
        try:
            entries = [p for p in self.root.iterdir() if p.suffix == ".jsonl" and not p.name.startswith(".")]
        except OSError:
            return None
        for p in sorted(entries, key=lambda p: (_mtime(p), p.name)):
            if not p.is_file():
                continue
            dst = self.claimed / f"{time.time_ns()}.{p.name}"
            try:
                os.rename(p, dst)  # another worker may have taken it since the listing
            except FileNotFoundError:
                continue
            return dst
        return None

    def finish(self, path: Path, failed: list[dict]) -> None:
        """Write the failed lines (to a temp file in this worker's folder, then renamed: the same name on a
        rerun) and move the file to ``done/``."""
        if failed:
            tmp = self.claimed / f".{path.name}.failed.tmp"
            with open(tmp, "w") as f:
                f.write("".join(json.dumps(r) + "\n" for r in failed))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.failed / path.name)
        os.replace(path, self.done / path.name)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _claim_time(path: Path) -> float:
    """The ``time.time()`` of a claim, from its ``NS.`` prefix (a resumed file keeps its deadline)."""
    try:
        return int(path.name.split(".", 1)[0]) / 1e9
    except ValueError:
        return time.time()


class Worker:
    """Claims spool files one at a time and makes their videos; ``run`` returns the exit code."""

    def __init__(self, spool: Spool, out: Path, models: dict, args, log=None):
        self.spool, self.out, self.models, self.args = spool, out, models, args
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.stop: str | None = None  # the signal's name once asked to stop
        self.journal = Journal(out)
        self.made = recover(self.journal)
        self.rows = min(m.rows for _, m in models.values())
        self.profiles = ladder(models["base"][1], models.get("student", (None, None))[1], args.steps)
        self.throughput = Throughput()

    def ask_stop(self, signum, frame) -> None:
        """The signal handler: only sets the flag (printing here could re-enter a print in progress)."""
        self.stop = signal.Signals(signum).name

    def run(self) -> int:
        max_idle = self.args.max_idle
        idle_since = time.monotonic()
        self.log(f"watch: {self.spool.root} -> {self.out} ({len(self.made)} videos already made)")
        while self.stop is None:
            path = next(iter(self.spool.mine()), None) or self.spool.claim()
            if path is not None:
                try:
                    self.process(path)
                except OSError as err:  # e.g. a full disk: the file stays claimed for the next start
                    self.log(f"error: watch: {path.name}: {err.strerror or one_line(err)}; exiting")
                    self.journal.close()
                    return 1
                idle_since = time.monotonic()
                continue
            if max_idle is not None and time.monotonic() - idle_since >= max_idle:
                self.log(f"watch: idle for {max_idle:g} s, exiting")
                break
            time.sleep(POLL_SECONDS)
        if self.stop is not None:
            self.log(f"watch: {self.stop}: stopped after the current batch")
        self.journal.close()
        return 0

    def read(self, path: Path) -> tuple[list[dict], list[dict]]:
        """Work items ``{id, line, prompt, seed, user, text, board}`` and failed records ``{line, reason, event}``."""
        from wan2.prompts import event_to_prompt

        items, failed = [], []
        a = self.args
        for n, text, problem in event_lines(path, label=path.name):
            if problem is None and not text.strip():
                continue
            try:
                if problem is not None:
                    raise ValueError(problem)
                event = parse_json(text)
                prompt = event_to_prompt(event, tone=a.tone, style=a.style, rows=self.rows)
                vid = event_id(event)
                user = user_field(event, "user")
                board = board_path(event.get("board"), "board")  # TI2V: the app's board as frame 0
            except Exception as err:  # noqa: BLE001  (untrusted input: any fault of one line skips that line)
                failed.append({"line": n, "reason": one_line(err), "event": text})
                continue
            seed = (a.seed + zlib.crc32(vid.encode())) % 2**32  # per id: a remade video is the same video
            items.append(
                {
                    "id": vid,
                    "line": n,
                    "prompt": prompt,
                    "seed": seed,
                    "user": user,
                    "text": text,
                    "board": board,
                }
            )
        return items, failed

    def process(self, path: Path) -> None:
        """Make the videos of one claimed file not made yet; finish the file unless asked to stop."""
        from wan2.data.video import encode_mp4
        from wan2.serve.engine import generate_batch

        try:
            items, failed = self.read(path)
        except InputError as err:  # the claimed file itself cannot be read: recorded, never retried
            self.log(f"watch: {path.name}: {one_line(err)}")
            self.spool.finish(path, [{"line": 0, "reason": one_line(err), "event": None}])
            return
        todo, seen = [], set()
        for it in items:
            if it["id"] not in self.made and it["id"] not in seen:
                todo.append(it)
            seen.add(it["id"])
        self.log(
            f"watch: {path.name}: {len(todo)} to make, {len(items) - len(todo)} ids made before, "
            f"{len(failed)} bad lines"
        )
        a = self.args
        deadline = None
        if a.deadline is not None:  # seconds from the claim (a resumed file keeps its deadline)
            deadline = time.monotonic() + a.deadline - (time.time() - _claim_time(path))
        plan = Planner(self.profiles, self.models, a.batch, a.profile, deadline, self.throughput)
        i = 0
        while i < len(todo):
            if self.stop is not None:
                return
            pick = plan.next(len(todo) - i)
            if pick.note:
                self.log(f"watch: {pick.note}")
            chunk = todo[i : i + pick.batch]
            i += len(chunk)
            self.journal.append({"op": "start", "file": path.name, "ids": [it["id"] for it in chunk]})
            videos, errors = generate_batch(pick, chunk)
            for j, (it, video) in enumerate(zip(chunk, videos)):
                if video is None:
                    failed.append(
                        {"line": it["line"], "id": it["id"], "reason": errors[j], "event": it["text"]}
                    )
                    continue
                record = {
                    "file": path.name,
                    "line": it["line"],
                    "profile": pick.name,
                    "model": pick.model_dir,
                    "prompt": video.prompt,
                    "seconds": round(video.seconds, 3),
                    "steps": video.steps,
                    "seed": video.seed,
                    "num_frames": video.num_frames,
                    "height": int(video.frames.shape[1]),
                    "width": int(video.frames.shape[2]),
                }
                if a.include_user:
                    record["user"] = it["user"]
                final = publish(self.journal, it["id"], encode_mp4(video.frames, video.fps), record)
                self.made.add(it["id"])
                self.log(f"{final}  {video.seconds:.2f}s  {pick.name}")
        plan.finish()
        failed.sort(key=lambda r: r["line"])
        self.spool.finish(path, failed)
        made = len({it["id"] for it in items} & self.made)  # this file's ids that have their video
        self.journal.append({"op": "file", "file": path.name, "videos": made, "failed": len(failed)})
        self.log(f"watch: {path.name}: done ({made} videos, {len(failed)} failed)")


def serve(args, load_models) -> int:
    """``--watch``: check the spool and ``--out`` and take the lock first (one line on error), then load the
    models and run the worker until SIGTERM / SIGINT or ``--max-idle`` seconds without work."""
    worker: list[Worker] = []
    stop: list[int] = []

    def on_signal(signum, frame):  # before the models load: a SIGTERM while loading still exits 0
        if worker:
            worker[0].ask_stop(signum, frame)
        else:
            stop.append(signum)

    out = Path(args.out)
    spool = Spool(Path(args.watch), args.worker_id or default_worker_id(out))
    lock = lock_folder(out)
    try:
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            models = load_models(args)
            worker.append(Worker(spool, out, models, args))
            if stop:
                worker[0].ask_stop(stop[0], None)
            return worker[0].run()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
    finally:
        lock.close()
