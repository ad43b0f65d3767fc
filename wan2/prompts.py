"""Leaderboard events -> text prompts built on the RankJump caption templates.

The tiny models learned their text encoder from RankJump captions only, so the core of every prompt is a
caption exactly as ``wan2.data.rankjump.caption_for`` writes it. A tone picks which template and may add a
short phrase; style words are appended only when asked. Prompts are truncated at the model's ``text_len``
tokens, so the caption always comes first and the extras after it.

User names stay out of prompts by default (``include_user=False``): the tiny text encoder has never seen a
name, so a name only shifts the conditioning away from the captions it was trained on (and names would then
leave the machine in any prompt log).

Any positive rank up to ``MAX_RANK``: the board shows a window of ``rows`` consecutive ranks around the move
(``wan2.data.window``). The prompt keeps the real ranks and, for an event beyond the first rows, adds the
window's on-screen slots and ranks (``Window.phrase``: the tiny text encoder learns the slots' words, not
arithmetic on rank numbers it never saw).
"""

from __future__ import annotations

from dataclasses import dataclass

from wan2.data.rankjump import EVENTS, caption_for, resolve_colour
from wan2.data.window import check_move, check_rank


@dataclass(frozen=True)
class Tone:
    template: int  # index into TEMPLATES[event]
    phrase: str  # appended after the caption
    events: tuple[str, ...] = EVENTS  # the events the tone fits


# Templates are parallel across events: 0 "the {colour} row ...", 1 "leaderboard: ...",
# 2 "{colour} entry ... on the leaderboard", 3 "<event>: the {colour} player ...".
TONES: dict[str, Tone] = {
    "neutral": Tone(0, ""),
    "news": Tone(1, ""),
    "comeback": Tone(3, "what a comeback", ("rank_up",)),
    "climb": Tone(0, "a steady climb", ("rank_up",)),
    "celebrate": Tone(3, "time to celebrate", ("rank_up", "hold", "first_entry")),
    "defended": Tone(1, "rank defended", ("hold",)),
    "welcome": Tone(1, "welcome to the board", ("first_entry",)),
    "setback": Tone(3, "back soon", ("rank_down",)),
}


def _rank(event: dict, key: str) -> int:
    """An integer rank in 1..MAX_RANK taken from ``event[key]``; ValueError naming the field otherwise."""
    if key not in event or event[key] is None:
        raise ValueError(f"{key}: missing for a {event['event']} event")
    return check_rank(key, event[key])


def parse_event(event: dict, rows: int = 5) -> tuple[str, int | None, int, str]:
    """Validated ``(event, old_rank, new_rank, colour)``; every error names the offending field. Any rank in
    1..MAX_RANK is valid: ``rows`` is the board's height, beyond which the event is shown in a window."""
    if not isinstance(event, dict):
        raise ValueError(f"event: expected a JSON object, got {type(event).__name__}")
    kind = event.get("event")
    if kind is None:
        raise ValueError("event: missing (one of " + ", ".join(EVENTS) + ")")
    if kind not in EVENTS:
        raise ValueError(f"event: {kind!r} is not one of {list(EVENTS)}")
    old = None
    if kind == "hold":  # defending a rank: `rank`, else `new_rank`, else the top
        key = "rank" if "rank" in event else "new_rank"
        new = _rank(event, key) if key in event else 1
        old = new
    elif kind == "first_entry":
        new = _rank(event, "new_rank")
    else:
        old = _rank(event, "old_rank")
        new = _rank(event, "new_rank")
        check_move(kind, old, new)
    key = "colour" if "colour" in event else "color"
    try:
        colour = resolve_colour(str(event.get(key, "green")))
    except ValueError as err:
        raise ValueError(f"{key}: {str(err).split(': ', 1)[1]}") from None
    return kind, old, new, colour


def event_to_prompt(
    event: dict,
    tone: str | None = None,
    style: str | list[str] | None = None,
    include_user: bool = False,
    rows: int = 5,
) -> str:
    """The prompt of one leaderboard event: a RankJump caption, then the tone phrase, style words, user."""
    kind, old, new, colour = parse_event(event, rows)
    template, phrase = 0, ""
    if tone is not None:
        if tone not in TONES:
            raise ValueError(f"tone: {tone!r} is not one of {sorted(TONES)}")
        if kind not in TONES[tone].events:
            raise ValueError(f"tone: {tone!r} does not fit a {kind} event (fits {list(TONES[tone].events)})")
        template, phrase = TONES[tone].template, TONES[tone].phrase
    parts = [caption_for(kind, old, new, colour, template=template, rows=rows)]
    if phrase:
        parts.append(phrase)
    words = [style] if isinstance(style, str) else list(style or [])
    words = [w.strip() for w in words if w and w.strip()]
    if words:
        parts.append(", ".join(words))
    if include_user:
        user = event.get("user")
        if not isinstance(user, str) or not user.strip():
            raise ValueError("user: missing (include_user=True needs a user name)")
        parts.append(f"for {user.strip()}")
    return ", ".join(parts)
