"""RankJump: procedural leaderboard videos whose motion is known exactly.

A board of ``rows`` gray bars, one highlighted in a named colour, and one event:

- ``rank_up``: the highlighted row climbs from ``old_rank`` to ``new_rank`` (ease-in-out) while the rows it
  passes shift down one slot;
- ``rank_down``: the mirror image;
- ``hold``: the row stays at its rank (defending #1 when the rank is 1) and pulses;
- ``first_entry``: a new row slides in from below the board to ``new_rank``; the rows below shift down and the
  last one drops off the board.

Any positive rank: the board shows a window of ``rows`` consecutive ranks around the move (``wan2.data.window``);
ranks beyond the first rows are drawn as slots of that window, and the caption adds the window. A
``window_mix`` share of a dataset's clips are such windowed events.

Everything is deterministic in the seed. Frames are ``uint8`` arrays ``(F, H, W, 3)``.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from wan2.data.window import (
    MAX_RANK,
    Window,
    check_move,
    check_rank,
    ranks_for_slots,
    window_for,
    windowed_slots,
)

EVENTS = ("rank_up", "rank_down", "hold", "first_entry")

# Saturated colours, well apart in hue so that a blurred highlight still reads as its colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 128, 0),
    "gold": (235, 200, 20),
    "green": (30, 190, 60),
    "blue": (40, 90, 240),
    "purple": (150, 50, 210),
}
BACKGROUND = (18, 18, 28)
BAR_GRAY = (150, 150, 150)

SPLIT_SEED_BASE = {"train": 0, "val": 10_000_000, "test": 20_000_000, "heldout": 30_000_000}


def hue_of(rgb: tuple[int, int, int]) -> float:
    """Hue in [0, 1) of an 8-bit RGB triple."""
    r, g, b = (c / 255.0 for c in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0]


def resolve_colour(colour: str) -> str:
    """Map a palette name (any case) or a hex such as ``#4CAF50`` to the nearest palette name by hue."""
    key = colour.strip().lower()
    if key in PALETTE:
        return key
    if key.startswith("#") and len(key) == 7:
        try:
            rgb = tuple(int(key[i : i + 2], 16) for i in (1, 3, 5))
        except ValueError as err:
            raise ValueError(f"colour: {colour!r} is not a hex colour like #4CAF50") from err
        r, g, b = (c / 255.0 for c in rgb)
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        if s < 0.25 or v < 0.2:
            raise ValueError(f"colour: {colour!r} is too gray or dark to highlight a row")
        return min(PALETTE, key=lambda n: _hue_dist(h, hue_of(PALETTE[n])))
    raise ValueError(f"colour: {colour!r} is not one of {sorted(PALETTE)} or a hex like #4CAF50")


def _hue_dist(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


@dataclass(frozen=True)
class BoardGeometry:
    """Where the rank slots sit on a frame; shared by the generator and the reader."""

    height: int
    width: int
    rows: int

    @property
    def margin(self) -> float:
        return 0.06 * self.height

    @property
    def pitch(self) -> float:
        return (self.height - 2 * self.margin) / self.rows

    def slot_y(self, rank: float) -> float:
        """Centre y (pixels) of a (possibly fractional) 1-based rank slot."""
        return self.margin + (rank - 0.5) * self.pitch

    def rank_of_y(self, y: np.ndarray | float) -> np.ndarray | float:
        """Inverse of ``slot_y``: continuous rank position of a y coordinate."""
        return (y - self.margin) / self.pitch + 0.5


def parse_mix(text: str) -> dict[str, float]:
    """``rank_up=0.02,hold=0.3`` -> ``{"rank_up": 0.02, "hold": 0.3}``: a ``--mix`` command-line value (the
    event names are checked where ``RankJumpConfig`` is built)."""
    import argparse

    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--mix: {part!r} is not event=weight")
        try:
            mix[name.strip()] = float(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"--mix: {value!r} is not a number") from err
    return mix


@dataclass(frozen=True)
class RankJumpConfig:
    """Size and look of generated clips. Frames must be 4k+1 (the Wan VAE keeps the first frame alone)."""

    height: int = 32
    width: int = 32
    num_frames: int = 17
    fps: int = 8
    rows: int = 5
    colours: tuple[str, ...] = tuple(PALETTE)
    labels: bool = False  # short name labels on each bar (needs >= 96 px height to be legible)
    marks: bool = False  # arrow and sparkle marks on rank_up
    mix: dict[str, float] = field(
        default_factory=lambda: {"rank_up": 0.02, "rank_down": 0.33, "hold": 0.3, "first_entry": 0.35}
    )
    heldout_fraction: int = 6  # one colour in this many is held out per (event, old, new)
    window_mix: float = 0.0  # share of clips with ranks beyond the first ``rows`` (a window of the board)
    max_rank: int = 1000  # windowed clips draw ranks up to this (log-uniform)

    def __post_init__(self):
        if self.num_frames < 1 or (self.num_frames - 1) % 4 != 0:
            raise ValueError(f"num_frames: {self.num_frames} is not 4k+1 (5, 9, 13, 17, ...)")
        if not 5 <= self.rows <= 8:
            raise ValueError(f"rows: {self.rows} is outside 5..8")
        if self.height < 16 or self.width < 16:
            raise ValueError(f"height/width: {self.height}x{self.width} is below 16x16")
        for c in self.colours:
            if c not in PALETTE:
                raise ValueError(f"colours: {c!r} is not one of {sorted(PALETTE)}")
        bad = set(self.mix) - set(EVENTS)
        if bad:
            raise ValueError(f"mix: unknown events {sorted(bad)}; allowed {list(EVENTS)}")
        if sum(self.mix.values()) <= 0 or min(self.mix.values()) < 0:
            raise ValueError(f"mix: weights must be >= 0 with a positive sum, got {self.mix}")
        if not 0.0 <= self.window_mix <= 1.0:
            raise ValueError(f"window_mix: {self.window_mix} is outside [0, 1]")
        if not 2 * self.rows <= self.max_rank <= MAX_RANK:
            raise ValueError(f"max_rank: {self.max_rank} is outside {2 * self.rows}..{MAX_RANK}")

    @property
    def geometry(self) -> BoardGeometry:
        return BoardGeometry(self.height, self.width, self.rows)


@dataclass
class Clip:
    frames: np.ndarray  # (F, H, W, 3) uint8
    caption: str
    meta: dict


# ----------------------------------------------------------------------------- combinations and splits


def combos(rows: int, event: str) -> list[tuple[int | None, int]]:
    """All (old_rank, new_rank) pairs of an event on a board of ``rows`` rows."""
    if event == "rank_up":
        return [(o, n) for o in range(2, rows + 1) for n in range(1, o)]
    if event == "rank_down":
        return [(o, n) for o in range(1, rows) for n in range(o + 1, rows + 1)]
    if event == "hold":
        return [(r, r) for r in range(1, rows + 1)]
    if event == "first_entry":
        return [(None, n) for n in range(1, rows + 1)]
    raise ValueError(f"event: {event!r} is not one of {list(EVENTS)}")


def is_heldout(event: str, old: int | None, new: int, colour: str, cfg: RankJumpConfig) -> bool:
    """Deterministic held-out (event, old, new, colour) triples: one colour per pair, rotating.

    Every (old, new) pair and every colour still appears in training, only not together.
    """
    colours = list(cfg.colours)
    if len(colours) < 2:
        return False
    key = f"{event}:{old}:{new}"
    h = int(hashlib.sha1(key.encode()).hexdigest(), 16)
    per_pair = max(1, len(colours) // cfg.heldout_fraction)
    start = h % len(colours)
    held = {colours[(start + i) % len(colours)] for i in range(per_pair)}
    return colour in held


def split_combos(
    cfg: RankJumpConfig, event: str, split: str, windowed: bool = False
) -> list[tuple[int | None, int, str]]:
    """(old, new, colour) triples of an event that a split may use: ``heldout`` only the held-out ones.

    ``windowed``: the (old_slot, new_slot) pairs of events beyond the first rows instead (held out the same
    way, by slots: a held-out windowed clip is a slot motion and colour never trained together)."""
    out = []
    for old, new in windowed_slots(cfg.rows, event) if windowed else combos(cfg.rows, event):
        for colour in cfg.colours:
            held = is_heldout(event, old, new, colour, cfg)
            if (split == "heldout") == held:
                out.append((old, new, colour))
    return out


# ----------------------------------------------------------------------------- captions

TEMPLATES: dict[str, tuple[str, ...]] = {
    "rank_up": (
        "the {colour} row climbs from #{old} to #{new}",
        "leaderboard: {colour} bar rises from rank {old} to rank {new}",
        "{colour} entry moves up from #{old} to #{new} on the leaderboard",
        "rank up: the {colour} player jumps from {old} to {new}",
    ),
    "rank_down": (
        "the {colour} row drops from #{old} to #{new}",
        "leaderboard: {colour} bar falls from rank {old} to rank {new}",
        "{colour} entry moves down from #{old} to #{new} on the leaderboard",
        "rank down: the {colour} player slips from {old} to {new}",
    ),
    "hold": (
        "the {colour} row holds #{new} with a pulse",
        "leaderboard: {colour} bar defends rank {new}",
        "{colour} entry stays at #{new} on the leaderboard",
        "hold: the {colour} player keeps rank {new}",
    ),
    "first_entry": (
        "a new {colour} row enters the leaderboard at #{new}",
        "leaderboard: new {colour} bar slides in at rank {new}",
        "{colour} entry joins the leaderboard at #{new}",
        "first entry: the {colour} player arrives at {new}",
    ),
}


def caption_for(event: str, old: int | None, new: int, colour: str, template: int = 0, rows: int = 5) -> str:
    """The caption with the real ranks; a windowed event (a rank beyond ``rows``) adds its window's phrase."""
    options = TEMPLATES[event]
    text = options[template % len(options)].format(colour=colour, old=old, new=new)
    window = window_for(event, old, new, rows)
    return f"{text}, {window.phrase()}" if window.windowed else text


# ----------------------------------------------------------------------------- rendering


def ease_in_out(t: np.ndarray) -> np.ndarray:
    """Smoothstep on [0, 1], with a still first and last 10% of the clip."""
    u = np.clip((t - 0.1) / 0.8, 0.0, 1.0)
    return u * u * (3 - 2 * u)


def _coverage(lo: float, hi: float, n: int) -> np.ndarray:
    """Fraction of each of ``n`` unit pixels covered by the interval [lo, hi): anti-aliased edges."""
    idx = np.arange(n, dtype=np.float32)
    return np.clip(np.minimum(idx + 1, hi) - np.maximum(idx, lo), 0.0, 1.0)


def _fill(img: np.ndarray, y0: float, y1: float, x0: float, x1: float, rgb) -> None:
    """Alpha-blend an anti-aliased rectangle into ``img`` (H, W, 3) float32 in place."""
    h, w, _ = img.shape
    alpha = np.outer(_coverage(y0, y1, h), _coverage(x0, x1, w))[..., None]  # (H, W, 1)
    img *= 1.0 - alpha
    img += alpha * np.asarray(rgb, dtype=np.float32)


def trajectory(event: str, old: int | None, new: int, rows: int, num_frames: int) -> dict[str, np.ndarray]:
    """Continuous slot position per frame of the highlighted row and of every other row.

    ``old`` / ``new`` are slots (``Window.old_slot`` / ``new_slot``): 1..rows, or an old slot of 0 (a rank_down
    entering from above) or rows + 1 (a rank_up entering from below). Returns ``{"highlight": (F,), "others":
    (rows_shown, F)}``; positions are 1-based slots, below 0.5 or above rows + 0.5 off the board.
    """
    t = np.linspace(0.0, 1.0, num_frames)
    s = ease_in_out(t)  # (F,)
    start = rows + 1.0 if event == "first_entry" else float(old)
    hl = start + (new - start) * s
    others = []
    if event == "first_entry":
        # rows 1..rows on the board; those at >= new shift down one slot, the last drops off.
        for r in range(1, rows + 1):
            shift = 1.0 if r >= new else 0.0
            others.append(r + shift * s)
    else:
        board = [r for r in range(1, rows + 1) if r != old]  # the other rows' old slots
        for r in board:
            if event == "rank_up" and new <= r < old:
                others.append(r + s)
            elif event == "rank_down" and old < r <= new:
                others.append(r - s)
            else:
                others.append(np.full_like(s, float(r)))
    return {"highlight": hl, "others": np.stack(others) if others else np.zeros((0, num_frames))}


def render(
    cfg: RankJumpConfig,
    event: str,
    old: int | None,
    new: int,
    colour: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one clip (``old`` / ``new`` are slots of the window, see ``trajectory``). Returns frames
    ``(F, H, W, 3)`` uint8 and the highlight centre y per frame ``(F,)``."""
    geo = cfg.geometry
    F, H, W = cfg.num_frames, cfg.height, cfg.width
    traj = trajectory(event, old, new, cfg.rows, F)
    x0 = 0.08 * W
    # Bar length falls with rank; a little jitter per clip so that bars are not identical across clips.
    base_len = 0.86 * W - x0
    jitter = float(rng.uniform(0.93, 1.0))

    def length_of_rank(r: float) -> float:
        return base_len * (1.0 - 0.09 * (min(max(r, 1.0), cfg.rows) - 1)) * jitter

    bar_h = 0.66 * geo.pitch
    rgb = PALETTE[colour]
    t = np.linspace(0.0, 1.0, F)
    frames = np.empty((F, H, W, 3), dtype=np.uint8)
    centres = np.empty(F, dtype=np.float32)
    for f in range(F):
        img = np.empty((H, W, 3), dtype=np.float32)
        img[:] = BACKGROUND
        for pos in traj["others"][:, f]:
            if pos > cfg.rows + 0.5 or pos < 0.5:
                continue
            y = geo.slot_y(pos)
            _fill(img, y - bar_h / 2, y + bar_h / 2, x0, x0 + length_of_rank(min(pos, cfg.rows)), BAR_GRAY)
        pos = float(traj["highlight"][f])
        y = geo.slot_y(pos)
        hh = bar_h
        if event == "hold":  # pulse: the bar swells twice over the clip
            hh = bar_h * (1.0 + 0.3 * math.sin(2 * math.pi * 2 * t[f]) ** 2)
        _fill(img, y - hh / 2, y + hh / 2, x0, x0 + length_of_rank(min(pos, cfg.rows)), rgb)
        if cfg.marks and event == "rank_up" and 0.1 < t[f] < 0.9:
            _draw_arrow(img, y, x0 + length_of_rank(min(pos, cfg.rows)) + 0.04 * W, geo.pitch, rgb)
        if cfg.labels:
            _draw_labels(img, traj, f, geo, x0, rng_seed=int(rng.integers(1 << 30)) if f == 0 else None)
        frames[f] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        centres[f] = y
    return frames, centres


def _draw_arrow(img: np.ndarray, y: float, x: float, pitch: float, rgb) -> None:
    """A small upward arrow (stacked shrinking rectangles) beside a climbing bar."""
    size = 0.8 * pitch
    steps = max(2, int(size))
    for i in range(steps):
        half = (i + 1) / steps * size / 2
        yy = y - size / 2 + i * size / steps
        _fill(img, yy, yy + size / steps, x - half / 2, x + half / 2, rgb)


_LABELS = ("ANA", "BO", "CY", "DEV", "ELI", "FAY", "GUS", "HAL")


def _draw_labels(img, traj, f, geo, x0, rng_seed) -> None:
    """Short name labels left of each bar (only legible from about 96 px height)."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    positions = list(traj["others"][:, f]) + [traj["highlight"][f]]
    for i, pos in enumerate(positions):
        if pos <= geo.rows + 0.5:
            draw.text((1, geo.slot_y(pos) - 5), _LABELS[i % len(_LABELS)], fill=(230, 230, 230))
    img[:] = np.asarray(pil, dtype=np.float32)
    _ = x0, rng_seed


# ----------------------------------------------------------------------------- the dataset


@dataclass
class RankJump:
    """Indexable synthetic dataset: ``RankJump(cfg, split)[i]`` is the same clip for the same (split, i)."""

    cfg: RankJumpConfig = field(default_factory=RankJumpConfig)
    split: str = "train"
    size: int = 1000

    def __post_init__(self):
        if self.split not in SPLIT_SEED_BASE:
            raise ValueError(f"split: {self.split!r} is not one of {list(SPLIT_SEED_BASE)}")
        weights = {e: w for e, w in self.cfg.mix.items() if w > 0}
        self._events = list(weights)
        self._probs = np.array([weights[e] for e in self._events], dtype=np.float64)
        self._probs /= self._probs.sum()
        self._combos = {e: split_combos(self.cfg, e, self.split) for e in self._events}
        self._windowed = {e: split_combos(self.cfg, e, self.split, windowed=True) for e in self._events}

    def __len__(self) -> int:
        return self.size

    def seed_of(self, index: int) -> int:
        return SPLIT_SEED_BASE[self.split] + index

    def __getitem__(self, index: int) -> Clip:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng(self.seed_of(index))
        event = self._events[int(rng.choice(len(self._events), p=self._probs))]
        # drawn only when window_mix > 0, so that today's datasets keep every clip
        windowed = self.cfg.window_mix > 0 and rng.random() < self.cfg.window_mix
        options = (self._windowed if windowed else self._combos)[event]
        old, new, colour = options[int(rng.integers(len(options)))]
        if windowed:  # slots -> real ranks beyond the first rows
            old, new = ranks_for_slots(event, old, new, self.cfg.rows, rng, self.cfg.max_rank)
        return make_clip(
            self.cfg, event, old, new, colour, rng=rng, split=self.split, seed=self.seed_of(index)
        )


def make_clip(
    cfg: RankJumpConfig,
    event: str,
    old: int | None,
    new: int,
    colour: str,
    *,
    rng: np.random.Generator | None = None,
    seed: int = 0,
    split: str = "custom",
    template: int | None = None,
) -> Clip:
    """Render one event with any ranks 1..MAX_RANK (a window of the board, ``window_of``). ``old`` is ignored
    (None) for ``first_entry``; ``hold`` uses ``new`` for both."""
    if event not in EVENTS:
        raise ValueError(f"event: {event!r} is not one of {list(EVENTS)}")
    colour = resolve_colour(colour)
    if event == "first_entry":
        old = None
    if event == "hold":
        old = new if old is None else old
    new = check_rank("new_rank", new)
    old = None if old is None else check_rank("old_rank", old)
    if old is None and event != "first_entry":
        raise ValueError(f"old_rank: missing for a {event} event")
    check_move(event, old, new)
    window = window_for(event, old, new, cfg.rows)
    rng = rng if rng is not None else np.random.default_rng(seed)
    template = int(rng.integers(len(TEMPLATES[event]))) if template is None else template
    frames, centres = render(cfg, event, window.old_slot, window.new_slot, colour, rng)
    caption = caption_for(event, old, new, colour, template, rows=cfg.rows)
    meta = {
        "event": event,
        "old_rank": old,
        "new_rank": new,
        "rows": cfg.rows,
        "colour": colour,
        "colour_rgb": list(PALETTE[colour]),
        "centre_y": [round(float(c), 3) for c in centres],
        "height": cfg.height,
        "width": cfg.width,
        "num_frames": cfg.num_frames,
        "fps": cfg.fps,
        "seed": seed,
        "split": split,
        "caption": caption,
    }
    if window.windowed:  # the rank on the board's first row (absent: today's board, rows 1..rows)
        meta["window_top"] = window.top
    return Clip(frames=frames, caption=caption, meta=meta)


def window_of(meta: dict) -> Window:
    """The board window of a clip's metadata (``window_top`` when recorded, else the rule of ``window_for``)."""
    w = window_for(meta["event"], meta["old_rank"], meta["new_rank"], meta["rows"])
    top = meta.get("window_top")
    if top is None or top == w.top:
        return w
    old = meta["old_rank"]
    old_slot = None if old is None else min(max(old - top + 1, 0), meta["rows"] + 1)
    return Window(top, meta["rows"], old_slot, meta["new_rank"] - top + 1)
