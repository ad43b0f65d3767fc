"""Reading untrusted event files line by line (``scripts/generate.py --events`` and the ``--watch`` spool).

Standard library only: a bad file or line is reported before torch or a model loads.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

MAX_LINE_BYTES = 1 << 20  # an event is a few hundred bytes; a longer line is skipped without being parsed
EVENT_ID = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
)  # an id names its video file: no '/', no leading '.'


class InputError(Exception):
    """Bad arguments or files found before any model loads: one line, exit code 2."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """The first line of an error, printable and bounded (it may echo a value from the input)."""
    text = str(err).strip()
    text = text.splitlines()[0] if text else type(err).__name__
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # no terminal control characters
    return text if len(text) <= limit else text[:limit] + "..."


def event_lines(path: Path, label: str = "--events"):
    """``(line number, text or None, error)`` per line of a JSONL file, read as bytes and decoded per line,
    so an undecodable or oversized line costs only itself. ``label`` names the file in errors."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{label}: {str(path)!r} is a folder, not a JSONL file")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise InputError(f"{label}: {str(path)!r} is not a regular file")
        f = path.open("rb")
    except OSError as err:
        raise InputError(f"{label}: {str(path)!r}: {err.strerror or one_line(err)}") from None
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


def parse_json(text: str):
    """One event line as JSON; a ValueError that says why not (deep nesting included)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err.msg} at column {err.colno}") from None
    except RecursionError:
        raise ValueError("not JSON we accept: nested too deep") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"not JSON we accept: {one_line(err)}") from None


def user_field(event: dict, key: str):
    """``user`` / ``user_id``: a string or an integer, or None when absent."""
    value = event.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise ValueError(f"{key}: expected a string or an integer, got {type(value).__name__}")
    return value


def event_id(event: dict) -> str:
    """The event's ``id`` as the stem of its video's file name (exactly one video per id)."""
    value = event.get("id")
    if value is None:
        raise ValueError("id: missing (a watched spool makes exactly one video per event id)")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"id: expected a string or an integer, got {type(value).__name__}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"id: {value} is negative")
    text = str(value)
    if not EVENT_ID.match(text):
        raise ValueError(
            f"id: {one_line(ValueError(text), 60)!r} is not 1-128 letters, digits, '.', '_' or '-' "
            "starting with a letter or digit"
        )
    return text


def board_path(path, key: str) -> str | None:
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
