"""Generate rank-event videos: one mp4 per prompt or per JSONL event, written atomically into --out.

    python scripts/generate.py --model EXPORT --events events.jsonl --out videos/ [--profile fast]
    python scripts/generate.py --model EXPORT --prompt "the green row climbs from #3 to #2" --out videos/
    python scripts/generate.py --ab EXPORT_A EXPORT_B --rollout 0.1 --events events.jsonl --out videos/
    python scripts/generate.py --model EXPORT --student STUDENT --deadline 60 --events events.jsonl --out videos/
    python scripts/generate.py --watch SPOOL_DIR --model EXPORT --out videos/ [--max-idle SECONDS]

Each bad event line (not UTF-8, not JSON, nested too deep, not an object, over 1 MiB, a bad field) is skipped
with its line number, one stderr line each; the good lines still give their videos (exit code 1 when any line
was bad). A missing / unreadable --events, an --out that cannot be written, a bad LoRA: one line, exit code 2,
before any model loads where possible. An --out holding an earlier run's videos or manifest is refused unless
--overwrite. ``--out/manifest.jsonl`` (rewritten atomically after every batch) has one row per video (path,
variant, model, profile, prompt, seconds, steps, seed, line, size); user names only with --include-user.
An event's ``"board": "path.png"`` (or ``--image`` for every prompt) is the first frame the video continues (a
TI2V model). --deadline picks each batch's profile from the throughput measured on the run, --watch runs a
worker behind a spool folder that makes one video per event id (both in wan2/serve; README "Generate").
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from pathlib import Path

from wan2.serve.events import InputError
from wan2.serve.events import board_path as _board
from wan2.serve.events import event_lines as _event_lines
from wan2.serve.events import one_line as _one_line
from wan2.serve.events import parse_json as _parse_json
from wan2.serve.events import user_field as _user_field
from wan2.serve.journal import lock_folder

VIDEO_NAME = re.compile(r"^\d{5,}\.mp4$")  # the names this script gives its videos
LEFTOVER = re.compile(r"^\.(\d{5,}|manifest\.jsonl)\.tmp-")  # temp names of a killed run's atomic writes


def _read_meta(model_dir: str) -> dict:
    """The export's wan2.json ({} for a directory without one), checked before loading the model."""
    from wan2.backbones.files import BackboneError, read_wan2_json

    try:
        return read_wan2_json(model_dir).to_dict()
    except BackboneError as err:
        raise InputError(f"--model: {_one_line(err)}") from None


def read_items(args) -> tuple[list[dict], list[str]]:
    """Work items ``{line, prompt, seed, user_id, user, variant}`` and the error lines of skipped input.

    Every per-line fault (bytes, JSON, nesting, type, field) skips that line only."""
    from wan2.prompts import event_to_prompt
    from wan2.rollout import assign_variant

    if args.prompt:
        try:
            board = _board(getattr(args, "image", None), "--image")
        except ValueError as err:
            raise InputError(str(err)) from None
        items, errors = [], []
        for i, p in enumerate(args.prompt):
            if not p.strip():
                errors.append(f"line {i + 1}: skipped: prompt: empty")
                continue
            items.append(
                {
                    "line": i + 1,
                    "prompt": p,
                    "seed": args.seed + i,
                    "user_id": None,
                    "user": None,
                    "variant": None,
                    "board": board,
                }
            )
        return items, errors
    rows = min(_read_meta(d).get("rows", 5) for d in (args.ab or [args.model]))
    items, errors = [], []
    for n, text, problem in _event_lines(Path(args.events)):
        if problem is None and not text.strip():
            continue
        try:
            if problem is not None:
                raise ValueError(problem)
            event = _parse_json(text)
            prompt = event_to_prompt(
                event, tone=args.tone, style=args.style, rows=rows
            )  # non-object: ValueError
            user_id, user = _user_field(event, "user_id"), _user_field(event, "user")
            user_id = user if user_id is None else user_id
            if args.ab and user_id is None:
                raise ValueError("user_id: missing (--ab routes by user_id, or user)")
            variant = assign_variant(str(user_id), args.rollout) if args.ab else None
            board = _board(event.get("board"), "board")
        except Exception as err:  # noqa: BLE001  (untrusted input: any fault of one line skips that line)
            errors.append(f"line {n}: skipped: {_one_line(err)}")
            continue
        items.append(
            {
                "line": n,
                "prompt": prompt,
                "seed": args.seed + n - 1,
                "user_id": user_id,
                "user": user,
                "variant": variant,
                "board": board,
            }
        )
    if not items and not errors:
        raise InputError(f"--events: {args.events!r} holds no events (empty, or blank lines only)")
    return items, errors


def _read_rows(manifest: Path) -> list[dict]:
    """The rows of an earlier manifest.jsonl (unreadable rows dropped: it is being replaced)."""
    rows = []
    try:
        lines = manifest.read_bytes().splitlines() if manifest.is_file() else []
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict) and isinstance(row.get("path"), str):
            rows.append(row)
    return rows


def prepare_out(out: Path, overwrite: bool):
    """Create / check ``--out`` before any model loads; returns ``(lock, earlier rows)``.

    A folder holding an earlier run's videos or manifest.jsonl is refused unless ``--overwrite``; a lock file
    keeps two runs from writing into one folder; temp files of a killed run are removed."""
    lock = lock_folder(out)  # also proves the folder is writable
    try:
        names = [p.name for p in out.iterdir()]
        for name in names:
            if LEFTOVER.match(name):
                (out / name).unlink(missing_ok=True)
    except OSError as err:
        lock.close()
        raise InputError(f"--out: {str(out)!r}: cannot list it ({err.strerror or _one_line(err)})") from None
    videos = [n for n in names if VIDEO_NAME.match(n)]
    if (videos or "manifest.jsonl" in names) and not overwrite:
        lock.close()
        raise InputError(
            f"--out: {str(out)!r} already holds {len(videos)} videos and "
            f"{'a' if 'manifest.jsonl' in names else 'no'} manifest.jsonl from an earlier run; "
            "pass --overwrite to replace them, or choose another folder"
        )
    return lock, _read_rows(out / "manifest.jsonl") if overwrite else []


def _check_args(p: argparse.ArgumentParser, args) -> None:
    """Argument values argparse cannot check (each a one-line usage error, exit 2)."""
    _check_serving(p, args)
    if args.batch < 1:
        p.error("--batch must be >= 1")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1")
    if not 0 <= args.seed < 2**32:
        p.error("--seed must be in 0 .. 2**32 - 1")
    if not 0.0 <= args.rollout <= 1.0:
        p.error("--rollout must be in [0, 1]")
    from wan2.prompts import TONES

    if args.tone is not None and args.tone not in TONES:
        p.error(f"--tone: {args.tone!r} is not one of {sorted(TONES)}")
    if args.ab and not args.events:
        p.error("--ab needs --events (each event's user_id picks the variant)")
    if any(not math.isfinite(s) for s in args.lora_scale or []):
        p.error("--lora-scale must be a finite number")
    if args.lora_scale and len(args.lora_scale) > 1 and len(args.lora_scale) != len(args.lora):
        p.error(f"--lora-scale: {len(args.lora_scale)} scales for {len(args.lora)} --lora files")


def _check_serving(p: argparse.ArgumentParser, args) -> None:
    """--deadline, --student and --watch (wan2/serve): what they need and what they exclude."""
    if args.deadline is not None and not (math.isfinite(args.deadline) and args.deadline > 0):
        p.error("--deadline must be a positive number of seconds")
    if args.deadline is not None and args.profile is not None:
        p.error("--deadline picks the profile of each batch; leave out --profile")
    if args.deadline is not None and args.steps is not None:
        p.error("--deadline picks the steps of each batch; leave out --steps")
    for flag, value in (("--deadline", args.deadline), ("--student", args.student), ("--watch", args.watch)):
        if value is not None and args.ab:
            p.error(f"{flag} needs --model (not --ab)")
    if args.student and args.lora:
        p.error(
            "--student with --lora: a LoRA trained on the base loses most of its effect on the student; "
            "fuse it and distil the fused model (README: Distillation)"
        )
    if args.profile in ("student", "student-fast") and not args.student:
        p.error(f"--profile {args.profile} needs --student DIR")
    if args.max_idle is not None and not (math.isfinite(args.max_idle) and args.max_idle >= 0):
        p.error("--max-idle must be >= 0 seconds")
    if args.watch is None and (args.max_idle is not None or args.worker_id is not None):
        p.error("--max-idle and --worker-id are --watch options")
    if args.watch is not None and args.overwrite:
        p.error("--watch never replaces videos (one per event id); leave out --overwrite")
    if args.profile is None and args.deadline is None:
        args.profile = "standard"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a text prompt (repeatable)")
    src.add_argument("--events", help="JSONL file, one leaderboard event per line")
    src.add_argument(
        "--watch",
        metavar="SPOOL_DIR",
        help="run as a worker: claim the *.jsonl files renamed into SPOOL_DIR, one video per event id",
    )
    models = p.add_mutually_exclusive_group(required=True)
    models.add_argument("--model", help="a wan2 export or a Wan 2.2 diffusers directory")
    models.add_argument("--ab", nargs=2, metavar=("A_DIR", "B_DIR"), help="route users between two models")
    p.add_argument("--rollout", type=float, default=0.1, help="with --ab: the fraction of users sent to B")
    p.add_argument("--out", required=True, help="output folder (refused if it holds an earlier run's videos)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the videos and manifest of an earlier run"
    )
    p.add_argument(
        "--profile",
        choices=("standard", "student", "fast", "student-fast"),
        default=None,
        help="frames, size, steps (default standard; the student ones need --student)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help="pick each batch's profile so the queue (with --watch: each file) ends within SECONDS",
    )
    p.add_argument("--student", default=None, metavar="DIR", help="a few-step student of --model (profiles)")
    p.add_argument(
        "--max-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --watch: exit 0 after SECONDS without work (default: run until SIGTERM)",
    )
    p.add_argument("--worker-id", default=None, help="with --watch (default: host name + --out folder)")
    p.add_argument("--steps", type=int, default=None, help="override the profile's inference steps")
    p.add_argument("--batch", type=int, default=4, help="videos per pipeline call")
    p.add_argument(
        "--seed", type=int, default=0, help="line N uses seed + N - 1 (--watch: seed + crc32(event id))"
    )
    p.add_argument("--lora", action="append", default=[], help="a LoRA file or folder (repeatable)")
    p.add_argument(
        "--lora-scale",
        type=float,
        action="append",
        default=None,
        help="one scale for all LoRAs, or one per --lora",
    )
    p.add_argument(
        "--image", default=None, help="with --prompt: the first frame every video continues (TI2V)"
    )
    p.add_argument("--tone", default=None, help="event tone (wan2.prompts.TONES)")
    p.add_argument("--style", default=None, help="style words appended to event prompts")
    p.add_argument("--include-user", action="store_true", help="record user names in manifest.jsonl")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None)
    p.add_argument(
        "--offload",
        choices=("model", "sequential"),
        default=None,
        help="keep weights on the CPU and move each component (model) or layer (sequential) to --device as it runs",
    )
    args = p.parse_args(argv)
    _check_args(p, args)
    args.started = time.monotonic()  # --deadline counts from here (model loading included)
    try:
        if args.student and not Path(args.student).is_dir():
            raise InputError(f"--student: {args.student!r} is not a folder")
        if args.watch is not None:
            from wan2.serve.engine import load_models
            from wan2.serve.watch import serve

            _quiet_logging()
            return serve(args, load_models)
        lock, earlier = prepare_out(Path(args.out), args.overwrite)
        try:
            return run(args, earlier)
        finally:
            lock.close()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _quiet_logging() -> None:
    """wan2's notes on stderr; no loading bars (ours counts videos)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("wan2").setLevel(logging.INFO)  # frame-count notes
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def run(args, earlier: list[dict]) -> int:
    """Read the input (bad lines skipped), generate per variant in batches (each batch's profile from
    ``wan2.serve.profiles.Planner``), save each mp4 atomically and rewrite the manifest atomically after every
    batch; with ``--overwrite`` the earlier run's files go at the end."""
    from tqdm import tqdm

    from wan2.export import atomic_write_text
    from wan2.inference import save_video
    from wan2.serve.engine import generate_batch, load_model
    from wan2.serve.profiles import Planner, ladder

    _quiet_logging()
    items, errors = read_items(args)
    for e in errors:
        print(e, file=sys.stderr)
    variants = {"A": args.ab[0], "B": args.ab[1]} if args.ab else {None: args.model}
    out = Path(args.out)
    rows, failed = [], len(errors)
    written = set()  # file names this run wrote

    def write_manifest() -> None:
        """This run's rows, plus the earlier run's rows whose videos are still there and not replaced yet."""
        keep = [
            r
            for r in earlier
            if Path(r["path"]).name not in written and (out / Path(r["path"]).name).is_file()
        ]
        try:
            atomic_write_text(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in [*keep, *rows]))
        except OSError as err:  # e.g. a full disk: the previous manifest stays whole
            raise InputError(
                f"--out: cannot write manifest.jsonl ({err.strerror or _one_line(err)})"
            ) from None

    bar = None  # made once a model has loaded: a refused model or LoRA prints one line only
    student = None  # loaded once, with the first variant's model
    for variant, model_dir in variants.items():
        todo = [it for it in items if it["variant"] == variant]
        if not todo:
            continue
        try:
            model = load_model(model_dir, args)
            if args.student and student is None:
                student = load_model(args.student, args, lora=False)
        except InputError:
            if bar is not None:
                bar.close()
            raise
        if bar is None:
            bar = tqdm(total=len(items), unit="video", file=sys.stderr)
        models = {"base": (model_dir, model), "student": (args.student, student)}
        deadline = None if args.deadline is None else args.started + args.deadline
        plan = Planner(ladder(model, student, args.steps), models, args.batch, args.profile, deadline)
        i = 0
        while i < len(todo):
            pick = plan.next(len(todo) - i)
            if pick.note:
                tqdm.write(pick.note, file=sys.stderr)
            chunk = todo[i : i + pick.batch]
            i += len(chunk)
            videos, problems = generate_batch(pick, chunk)  # each event's board as frame 0 (TI2V)
            for j, msg in sorted(problems.items()):
                tqdm.write(f"line {chunk[j]['line']}: failed: {msg}", file=sys.stderr)
            for it, video in zip(chunk, videos):
                if video is None:
                    failed += 1
                    continue
                try:
                    path = save_video(video, out / f"{it['line']:05d}.mp4")
                except (OSError, ValueError, RuntimeError) as err:
                    failed += 1
                    tqdm.write(f"line {it['line']}: failed: {_one_line(err)}", file=sys.stderr)
                    continue
                written.add(path.name)
                row = {
                    "path": str(path),
                    "variant": variant,
                    "model": pick.model_dir,
                    "profile": pick.name,
                    "prompt": video.prompt,
                    "seconds": round(video.seconds, 3),
                    "steps": video.steps,
                    "seed": video.seed,
                    "line": it["line"],
                    "num_frames": video.num_frames,
                    "height": int(video.frames.shape[1]),
                    "width": int(video.frames.shape[2]),
                }
                if args.include_user:
                    row["user"] = it["user"]
                rows.append(row)
                tqdm.write(f"{path}  {video.seconds:.2f}s  {video.steps} steps  {pick.name}")
            rows.sort(key=lambda r: r["line"])
            if rows:
                write_manifest()
            bar.update(len(chunk))
        del model
    if bar is not None:
        bar.close()
    if (
        args.overwrite and rows
    ):  # the earlier run's videos this run did not replace go now (kept if none made)
        for f in out.iterdir():
            if VIDEO_NAME.match(f.name) and f.name not in written:
                f.unlink(missing_ok=True)
        write_manifest()
    print(f"wrote {len(rows)} videos to {out}, skipped {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
