"""Any rank on a board of a few rows: the window of consecutive ranks an event is shown in.

The board shows ``rows`` consecutive ranks ``top .. top + rows - 1``. Events whose ranks all fit the first
rows keep today's board (``top = 1``). Otherwise the window is placed by one rule, shared by the generator,
the prompts and the reader:

- the move fits the window (``|old - new| < rows``): the lower (worse) rank sits on the bottom row;
- a longer jump: the window shows the destination and the row enters from the window's edge: a rank_up
  enters from below and climbs to the top row (``top = new``), a rank_down enters from above and drops to the
  bottom row.

On screen a windowed event is a 5-row motion between *slots* (1..rows on the board, 0 above it, rows + 1 below
it); the real ranks only change the prompt. Numbers are plain Python, no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_RANK = 1_000_000  # ranks above this are refused (an app never has such a board; a typo or an overflow)


@dataclass(frozen=True)
class Window:
    """The ranks a board shows (``top`` .. ``top + rows - 1``) and the event's slots on it."""

    top: int  # the rank on the board's first row
    rows: int
    old_slot: int | None  # 1..rows on the board, 0 above it, rows + 1 below it; None for a first_entry
    new_slot: int  # 1..rows

    @property
    def last(self) -> int:
        return self.top + self.rows - 1

    @property
    def windowed(self) -> bool:
        """False for today's boards (every rank of the event is on rows 1..rows)."""
        return self.top > 1 or self.old_slot not in (None, *range(1, self.rows + 1))

    def phrase(self) -> str:
        """What the prompt adds for a windowed event: the on-screen slots first, then the window's ranks.

        The tiny text encoder cannot do arithmetic on rank numbers it never saw (#128 - #97); the slots use
        the vocabulary of today's 5-row captions, so the motion stays learnable, and truncation at ``text_len``
        drops the window's ranks before the slots."""
        if self.old_slot is None or self.old_slot == self.new_slot:
            where = f"on the board at #{self.new_slot}"
        else:
            where = f"on the board #{self.old_slot} to #{self.new_slot}"
        return f"{where}, ranks {self.top} to {self.last}"


def window_for(event: str, old: int | None, new: int, rows: int) -> Window:
    """The window of an event with valid ranks (see ``check_move``); today's boards get ``top = 1``."""
    lo, hi = (new, new) if old is None else (min(old, new), max(old, new))
    if hi <= rows:
        top = 1
    elif hi - lo < rows:
        top = hi - rows + 1
    elif event == "rank_up":  # enters from below, ends on the top row
        top = new
    else:  # rank_down: enters from above, ends on the bottom row
        top = new - rows + 1
    old_slot = None if old is None else min(max(old - top + 1, 0), rows + 1)
    return Window(top, rows, old_slot, new - top + 1)


def windowed_slots(rows: int, event: str) -> list[tuple[int | None, int]]:
    """The (old_slot, new_slot) pairs ``window_for`` gives to events beyond the first ``rows`` ranks."""
    if event == "rank_up":
        return [(rows, n) for n in range(1, rows)] + [(rows + 1, 1)]
    if event == "rank_down":
        return [(o, rows) for o in range(1, rows)] + [(0, rows)]
    if event == "hold":
        return [(rows, rows)]
    if event == "first_entry":
        return [(None, rows)]
    raise ValueError(f"event: {event!r} is not one of rank_up, rank_down, hold, first_entry")


def ranks_for_slots(event: str, old_slot: int | None, new_slot: int, rows: int, rng, max_rank: int):
    """Real (old, new) ranks beyond the first ``rows`` whose window has these slots; ``rng`` a numpy Generator.

    The window's top (and a long jump's length) are log-uniform, so small and huge ranks both appear."""

    def log_int(lo: int, hi: int) -> int:
        if hi <= lo:
            return lo
        return min(hi, int(round(float(2 ** rng.uniform(_log2(lo), _log2(hi + 1) - 1e-9)))))

    max_top = max(2, max_rank - rows + 1)
    if event == "rank_up" and old_slot == rows + 1:  # a long climb: enters from below to the top row
        new = log_int(1, max_rank - rows)
        old = new + log_int(rows, max_rank - new)
    elif event == "rank_down" and old_slot == 0:  # a long drop: enters from above to the bottom row
        new = log_int(2 * rows, max_rank)
        old = new - log_int(rows, new - 1)
    else:
        top = log_int(2, max_top)
        new = top + new_slot - 1
        old = None if old_slot is None else top + old_slot - 1
    w = window_for(event, old, new, rows)
    if (w.old_slot, w.new_slot) != (old_slot, new_slot) or not w.windowed:  # the rule and its inverse agree
        raise AssertionError(
            f"ranks_for_slots: {event} {old}->{new} has window {w}, not slots {old_slot}->{new_slot}"
        )
    return old, new


def _log2(x: float) -> float:
    import math

    return math.log2(x)


def check_rank(key: str, value, event: str = "event") -> int:
    """An integer rank in 1..MAX_RANK from ``value``; ValueError naming ``key`` otherwise (bools, floats, text)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, str))
        or not str(value).strip().lstrip("-").isdigit()
    ):
        raise ValueError(f"{key}: {value!r} is not an integer rank")
    rank = int(str(value).strip()) if isinstance(value, str) else value
    if rank < 1:
        raise ValueError(f"{key}: {rank} is below 1 (ranks start at #1)")
    if rank > MAX_RANK:
        raise ValueError(f"{key}: {rank} is above {MAX_RANK:,} (not a leaderboard rank)")
    return rank


def check_move(event: str, old: int | None, new: int) -> None:
    """The event's direction: a rank_up ends better, a rank_down worse; ValueError naming ``new_rank``."""
    if event == "rank_up" and new >= old:
        raise ValueError(f"new_rank: #{new} is not better than old_rank #{old} for a rank_up")
    if event == "rank_down" and new <= old:
        raise ValueError(f"new_rank: #{new} is not worse than old_rank #{old} for a rank_down")
    if event == "hold" and old != new:
        raise ValueError(f"new_rank: #{new} differs from old_rank #{old} for a hold")
