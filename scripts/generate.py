"""Generate rank-event videos: one mp4 per prompt or per JSONL event, written atomically into --out.

    python scripts/generate.py --model EXPORT --events events.jsonl --out videos/ [--profile fast]
    python scripts/generate.py --model EXPORT --prompt "the green row climbs from #3 to #2" --out videos/
    python scripts/generate.py --ab EXPORT_A EXPORT_B --rollout 0.1 --events events.jsonl --out videos/

Each bad event line (not UTF-8, not JSON, nested too deep, not an object, over 1 MiB, a bad field) is skipped
with its line number, one stderr line each; the good lines still give their videos (exit code 1 when any line
was bad). A missing / unreadable --events, an --out that cannot be written, a bad LoRA: one line, exit code 2,
before any model loads where possible. An --out holding an earlier run's videos or manifest is refused unless
--overwrite. ``--out/manifest.jsonl`` (rewritten atomically after every batch) has one row per video (path,
variant, model, prompt, seconds, steps, seed, line); user names only with --include-user. An event's
``"board": "path.png"`` (or ``--image`` for every prompt) is the first frame the video continues (a TI2V model).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import stat
import sys
from pathlib import Path

MAX_LINE_BYTES = 1 << 20  # an event is a few hundred bytes; a longer line is skipped without being parsed
VIDEO_NAME = re.compile(r"^\d{5,}\.mp4$")  # the names this script gives its videos
LEFTOVER = re.compile(r"^\.(\d{5,}|manifest\.jsonl)\.tmp-")  # temp names of a killed run's atomic writes


class InputError(Exception):
    """Bad arguments or files found before any model loads: one line, exit code 2."""


def _one_line(err: BaseException, limit: int = 300) -> str:
    """The first line of an error, printable and bounded (it may echo a value from the input)."""
    text = str(err).strip()
    text = text.splitlines()[0] if text else type(err).__name__
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # no terminal control characters
    return text if len(text) <= limit else text[:limit] + "..."


def _read_meta(model_dir: str) -> dict:
    """The export's wan2.json ({} for a directory without one), checked before loading the model."""
    from wan2.backbones.files import BackboneError, read_wan2_json

    try:
        return read_wan2_json(model_dir).to_dict()
    except BackboneError as err:
        raise InputError(f"--model: {_one_line(err)}") from None


def _event_lines(path: Path):
    """``(line number, text or None, error)`` per line of the events file, read as bytes and decoded per line,
    so an undecodable or oversized line costs only itself."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"--events: {str(path)!r} is a folder, not a JSONL file")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise InputError(f"--events: {str(path)!r} is not a regular file")
        f = path.open("rb")
    except OSError as err:
        raise InputError(f"--events: {str(path)!r}: {err.strerror or _one_line(err)}") from None
    with f:
        n = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            n += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                size = len(raw)
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line unread
                    raw = f.readline(MAX_LINE_BYTES)
                    size += len(raw)
                yield n, None, f"line is {size} bytes, over the {MAX_LINE_BYTES}-byte limit"
                continue
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark
            try:
                yield n, raw.rstrip(b"\r\n").decode("utf-8"), None
            except UnicodeDecodeError as err:
                yield n, None, f"not UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1})"


def _parse_json(text: str):
    """One event line as JSON; a ValueError that says why not (deep nesting included)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err.msg} at column {err.colno}") from None
    except RecursionError:
        raise ValueError("not JSON we accept: nested too deep") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"not JSON we accept: {_one_line(err)}") from None


def _user_field(event: dict, key: str):
    value = event.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise ValueError(f"{key}: expected a string or an integer, got {type(value).__name__}")
    return value


def _board(path, key: str) -> str | None:
    """An event's ``board`` (or ``--image``): None, or the path of a readable image (ValueError naming ``key``)."""
    if path is None:
        return None
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{key}: expected the path of an image file, got {path!r}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        why = "is not an image" if isinstance(err, UnidentifiedImageError) else "cannot be read"
        raise ValueError(f"{key}: {path!r} {why}") from None
    return path


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
    import fcntl

    try:
        if out.exists() and not out.is_dir():
            raise InputError(f"--out: {str(out)!r} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        lock = (out / ".generate.lock").open("w")  # also proves the folder is writable
    except OSError as err:
        raise InputError(
            f"--out: {str(out)!r}: cannot write there ({err.strerror or _one_line(err)})"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise InputError(f"--out: {str(out)!r}: another generate.py run is writing into it") from None
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a text prompt (repeatable)")
    src.add_argument("--events", help="JSONL file, one leaderboard event per line")
    models = p.add_mutually_exclusive_group(required=True)
    models.add_argument("--model", help="a wan2 export or a Wan 2.2 diffusers directory")
    models.add_argument("--ab", nargs=2, metavar=("A_DIR", "B_DIR"), help="route users between two models")
    p.add_argument("--rollout", type=float, default=0.1, help="with --ab: the fraction of users sent to B")
    p.add_argument("--out", required=True, help="output folder (refused if it holds an earlier run's videos)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the videos and manifest of an earlier run"
    )
    p.add_argument("--profile", choices=("fast", "standard"), default="standard")
    p.add_argument("--steps", type=int, default=None, help="override the profile's inference steps")
    p.add_argument("--batch", type=int, default=4, help="videos per pipeline call")
    p.add_argument("--seed", type=int, default=0, help="line N uses seed + N - 1")
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
    try:
        lock, earlier = prepare_out(Path(args.out), args.overwrite)
        try:
            return run(args, earlier)
        finally:
            lock.close()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args, earlier: list[dict]) -> int:
    """Read the input (bad lines skipped), generate per variant in batches, save each mp4 atomically and rewrite
    the manifest atomically after every batch; with ``--overwrite`` the earlier run's files go at the end."""
    from diffusers.utils import logging as diffusers_logging
    from tqdm import tqdm
    from transformers.utils import logging as transformers_logging

    from wan2.backbones.stack import BackboneError
    from wan2.export import atomic_write_text
    from wan2.inference import NonFiniteVideoError, Wan2T2V, save_video
    from wan2.lora.adapters import LoraFileError

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("wan2").setLevel(logging.INFO)  # frame-count notes
    diffusers_logging.disable_progress_bar()  # loading bars; ours below counts videos
    transformers_logging.disable_progress_bar()
    items, errors = read_items(args)
    for e in errors:
        print(e, file=sys.stderr)
    variants = {"A": args.ab[0], "B": args.ab[1]} if args.ab else {None: args.model}
    out = Path(args.out)
    rows, failed = [], len(errors)
    written = set()  # file names this run wrote
    scales = args.lora_scale if args.lora_scale is None or len(args.lora_scale) > 1 else args.lora_scale[0]

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
    for variant, model_dir in variants.items():
        todo = [it for it in items if it["variant"] == variant]
        if not todo:
            continue
        try:
            model = Wan2T2V.from_pretrained(
                model_dir,
                device=args.device,
                dtype=args.dtype,
                lora=args.lora or None,
                lora_scales=scales,
                offload=args.offload,
            )
        except (BackboneError, LoraFileError, ValueError, RuntimeError, OSError, AssertionError) as err:
            if bar is not None:  # AssertionError: torch's "not compiled with CUDA" for --device cuda
                bar.close()
            raise InputError(_one_line(err, limit=2000)) from None
        if bar is None:
            bar = tqdm(total=len(items), unit="video", file=sys.stderr)
        kwargs = model.profile(args.profile)
        if args.steps is not None:
            kwargs["num_inference_steps"] = args.steps
        for i in range(0, len(todo), args.batch):
            chunk = todo[i : i + args.batch]
            try:
                boards = [it.get("board") for it in chunk]
                videos = model.generate(
                    [it["prompt"] for it in chunk],
                    seed=[it["seed"] for it in chunk],
                    **kwargs,
                    **({"image": boards} if any(boards) else {}),  # TI2V: each event's board as frame 0
                )
            except NonFiniteVideoError as err:  # keep the batch's finite videos, report the others
                videos = err.videos
                for j in err.bad:
                    line = chunk[j]["line"]
                    msg = "frames: NaN / Inf values (the model or a LoRA diverged); no mp4 written"
                    tqdm.write(f"line {line}: failed: {msg}", file=sys.stderr)
            except (ValueError, RuntimeError) as err:
                videos = [None] * len(chunk)
                for it in chunk:
                    tqdm.write(f"line {it['line']}: failed: {_one_line(err)}", file=sys.stderr)
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
                    "model": str(model_dir),
                    "prompt": video.prompt,
                    "seconds": round(video.seconds, 3),
                    "steps": video.steps,
                    "seed": video.seed,
                    "line": it["line"],
                    "num_frames": video.num_frames,
                }
                if args.include_user:
                    row["user"] = it["user"]
                rows.append(row)
                tqdm.write(f"{path}  {video.seconds:.2f}s  {video.steps} steps")
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
