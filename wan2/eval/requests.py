"""What is asked for: prompt sets (a RankJump split, a .txt of prompts, a .jsonl of events) as work items,
and RankJump captions parsed back into event metadata so the reader can judge videos of plain prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from wan2.config_check import ConfigError
from wan2.data.rankjump import EVENTS, PALETTE, SPLIT_SEED_BASE, TEMPLATES, RankJumpConfig
from wan2.data.window import check_move, check_rank

DEFAULT_SPLIT_VIDEOS = 96


def _caption_patterns() -> list[tuple[str, re.Pattern]]:
    out = []
    for event, templates in TEMPLATES.items():
        for t in templates:
            rx = re.escape(t)
            for name, group in (
                ("colour", r"(?P<colour>[a-z]+)"),
                ("old", r"(?P<old>\d+)"),
                ("new", r"(?P<new>\d+)"),
            ):
                rx = rx.replace(re.escape("{" + name + "}"), group)
            out.append((event, re.compile(rx + r"(?=$|,)")))
    return out


_PATTERNS = _caption_patterns()


def meta_from_prompt(
    prompt: str, height: int, width: int, num_frames: int, rows: int = 5, fps: float = 8
) -> dict | None:
    """RankJump metadata of a prompt that starts with a RankJump caption (as event prompts do), else None."""
    text = prompt.strip().lower()
    for event, rx in _PATTERNS:
        m = rx.match(text)
        if not m:
            continue
        colour, new = m.group("colour"), int(m.group("new"))
        old = int(m.group("old")) if "old" in m.groupdict() else (new if event == "hold" else None)
        try:  # any rank: beyond the first rows the board shows a window (wan2.data.window)
            check_move(event, old, check_rank("new_rank", new))
            if old is not None:
                check_rank("old_rank", old)
        except ValueError:
            return None
        if colour not in PALETTE:
            return None
        return {
            "event": event,
            "old_rank": old,
            "new_rank": new,
            "colour": colour,
            "rows": rows,
            "height": height,
            "width": width,
            "num_frames": num_frames,
            "fps": fps,
        }
    return None


def prompt_items(cfg, gen: dict) -> tuple[list[dict], str]:
    """Work items {prompt, seed, meta, real}: a RankJump split, a .txt of prompts or a .jsonl of events."""
    spec, seed, n = str(cfg.prompts), int(cfg.seed), cfg.get("num_videos")
    if n is not None and int(n) < 1:
        raise ConfigError(f"num_videos: {n} is below 1")
    geo = {k: int(gen[k]) for k in ("height", "width", "num_frames", "rows")} | {"fps": gen["fps"]}
    if spec in SPLIT_SEED_BASE:
        from wan2.data.rankjump import RankJump

        events = list(cfg.get("events") or EVENTS)
        bad = [e for e in events if e not in EVENTS]
        if bad:
            raise ConfigError(f"events: {bad} not in {list(EVENTS)}")
        n = int(n or DEFAULT_SPLIT_VIDEOS)
        try:
            rj = RankJump(RankJumpConfig(**geo, mix=dict.fromkeys(events, 1.0)), spec, n)
        except ValueError as err:
            raise ConfigError(f"prompts: RankJump {spec} prompts at this geometry: {err}") from None
        clips = [rj[i] for i in range(n)]
        return [
            {"prompt": c.caption, "seed": seed + i, "meta": c.meta, "real": c.frames}
            for i, c in enumerate(clips)
        ], f"RankJump {spec} split ({', '.join(events)})"
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"prompts: {spec!r} is neither a RankJump split {list(SPLIT_SEED_BASE)} nor a file")
    lines = [(i, ln) for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]
    if not lines:
        raise ConfigError(f"prompts: {spec!r} has no prompts")
    base = []
    if path.suffix == ".jsonl":
        from wan2.prompts import event_to_prompt, parse_event

        for i, text in lines:
            try:
                event = json.loads(text)
                prompt = event_to_prompt(
                    event, tone=event.get("tone"), style=event.get("style"), rows=geo["rows"]
                )
                kind, old, new, colour = parse_event(event, rows=geo["rows"])
            except (ValueError, AttributeError) as err:
                raise ConfigError(f"prompts: {spec} line {i}: {str(err).splitlines()[0]}") from None
            base.append((prompt, {"event": kind, "old_rank": old, "new_rank": new, "colour": colour, **geo}))
    else:
        base = [(ln.strip(), meta_from_prompt(ln, **geo)) for _, ln in lines]
    n = int(n or len(base))
    items = [
        {"prompt": base[i % len(base)][0], "seed": seed + i, "meta": base[i % len(base)][1], "real": None}
        for i in range(n)
    ]  # more videos than prompts: the prompts again, with new seeds
    return items, str(path)
