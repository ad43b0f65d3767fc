"""Read a (generated) leaderboard video back: where the highlighted row is in each frame, and its colour.

The reader knows only the board geometry and the palette, never the clip's metadata, so it can judge
generated videos. ``judge`` compares what it reads with the event that was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wan2.data.rankjump import PALETTE, BoardGeometry, hue_of, window_of
from wan2.data.window import Window, window_for

SAT_MIN = 0.45  # gray bars and the background have saturation ~0
VAL_MIN = 0.3
MIN_PIXELS_FRAC = 0.004  # of the frame area; fewer highlight pixels means "no highlight in this frame"


def to_uint8_frames(frames) -> np.ndarray:
    """Accept (F, H, W, 3) uint8, float in [0, 1], or a torch (C, F, H, W) tensor in [-1, 1]."""
    if hasattr(frames, "detach"):
        if frames.ndim == 4 and frames.shape[0] == 3:  # (C, F, H, W) in [-1, 1]
            from wan2.data.video import tensor_to_frames  # the one [-1, 1] -> uint8 conversion

            return tensor_to_frames(frames)
        frames = frames.detach().float().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected (F, H, W, 3), got {frames.shape}")
    return frames


def _hsv(frames: np.ndarray):
    """Vectorised RGB -> (hue, sat, val) for uint8 frames; each (F, H, W) float32."""
    x = frames.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx = x.max(-1)
    mn = x.min(-1)
    d = mx - mn
    sat = np.where(mx > 0, d / np.maximum(mx, 1e-6), 0.0)
    dd = np.maximum(d, 1e-6)
    h = np.where(mx == r, ((g - b) / dd) % 6.0, np.where(mx == g, (b - r) / dd + 2.0, (r - g) / dd + 4.0))
    return h / 6.0, sat, mx


@dataclass
class Reading:
    """What the reader saw: rank position per frame (NaN where no highlight) and the colour name."""

    position: np.ndarray  # (F,) continuous 1-based rank, NaN = not visible
    rank: np.ndarray  # (F,) int rank, 0 = not visible, rows + 1 = below the board
    colour: str | None
    visible: np.ndarray  # (F,) bool


def read_clip(frames, geometry: BoardGeometry, colours: list[str] | None = None) -> Reading:
    """Locate the highlighted (saturated) row in every frame and name its colour."""
    frames = to_uint8_frames(frames)
    F, H, W, _ = frames.shape
    if (H, W) != (geometry.height, geometry.width):
        raise ValueError(
            f"frames: size {H}x{W} does not match the board geometry {geometry.height}x{geometry.width}"
        )
    hue, sat, val = _hsv(frames)
    weight = np.clip((sat - SAT_MIN) / (1 - SAT_MIN), 0, 1) * (val > VAL_MIN)  # (F, H, W)
    mass = weight.sum(axis=(1, 2))  # (F,)
    visible = mass >= MIN_PIXELS_FRAC * H * W
    ys = np.arange(H, dtype=np.float32)[None, :, None] + 0.5
    y_mean = (weight * ys).sum(axis=(1, 2)) / np.maximum(mass, 1e-6)  # (F,)
    position = np.where(visible, geometry.rank_of_y(y_mean), np.nan)
    rank = np.where(visible, np.clip(np.rint(np.nan_to_num(position)), 1, geometry.rows + 1), 0).astype(int)
    colour = None
    if visible.any():
        ang = hue * 2 * np.pi
        w = weight * visible[:, None, None]
        mean_hue = (np.arctan2((w * np.sin(ang)).sum(), (w * np.cos(ang)).sum()) / (2 * np.pi)) % 1.0
        names = colours or list(PALETTE)
        colour = min(names, key=lambda n: _circ(mean_hue, hue_of(PALETTE[n])))
    return Reading(position=position, rank=rank, colour=colour, visible=visible)


def _circ(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


def judge(
    frames,
    event: str,
    old_rank: int | None,
    new_rank: int,
    colour: str,
    geometry: BoardGeometry,
    tolerance: float = 0.35,
    window: Window | int | None = None,
) -> dict:
    """Did the clip show the asked-for motion? Returns per-criterion booleans and ``trajectory_ok``.

    ``old_rank`` / ``new_rank`` are real ranks, judged on the board ``window`` the clip was given (a ``Window``,
    or the rank on its first row; None: ``window_for``'s rule, rows 1..rows for today's events): the reader
    sees slots, so each rank becomes its slot on that window.

    - start / end: the slot read on the first / last frame equals the asked one (first_entry, and a jump
      entering from the window's edge, start off the board: no highlight or beyond that edge);
    - monotonic: the position never moves against the event's direction by more than ``tolerance`` rows
      (hold: never leaves its slot by more than ``tolerance``);
    - visible: the highlight is in every frame (first_entry: from the moment it enters on);
    - colour: the read colour is the asked one.
    """
    rows = geometry.rows
    if event == "first_entry":
        old_rank = None
    if not isinstance(window, Window):
        w = window_for(event, old_rank, new_rank, rows)
        if window is not None and window != w.top:
            w = window_of(
                {
                    "event": event,
                    "old_rank": old_rank,
                    "new_rank": new_rank,
                    "rows": rows,
                    "window_top": window,
                }
            )
        window = w
    old_rank, new_rank = window.old_slot, window.new_slot  # judged as slots of the window from here on
    reading = read_clip(frames, geometry)
    pos, vis = reading.position, reading.visible
    if old_rank is None or old_rank in (0, rows + 1):  # enters: from below (rows + 1) or above (0)
        if old_rank == 0:
            start_ok = (not vis[0]) or pos[0] < 0.5 + tolerance
        else:
            start_ok = (not vis[0]) or pos[0] > rows + 0.5 - tolerance
        entered = np.argmax(vis) if vis.any() else len(vis)
        visible_ok = bool(vis.any()) and bool(vis[entered:].all())
    else:
        # ranks are clipped to 1 at the top: a row above the board's top edge (entering from above) is not on #1
        start_ok = bool(vis[0]) and int(reading.rank[0]) == old_rank and pos[0] >= 0.5
        visible_ok = bool(vis.all())
    end_ok = bool(vis[-1]) and int(reading.rank[-1]) == new_rank
    p = pos[vis]
    if p.size < 2:
        mono_ok = False
    elif event in ("rank_up", "first_entry"):
        mono_ok = bool(np.all(p[1:] <= np.minimum.accumulate(p)[:-1] + tolerance))
    elif event == "rank_down":
        mono_ok = bool(np.all(p[1:] >= np.maximum.accumulate(p)[:-1] - tolerance))
    elif event == "hold":
        mono_ok = bool(np.all(np.abs(p - new_rank) <= tolerance + 0.15))
    else:
        raise ValueError(f"event: {event!r} is not one of rank_up, rank_down, hold, first_entry")
    colour_ok = reading.colour == colour
    trajectory_ok = bool(start_ok and end_ok and mono_ok and visible_ok)
    return {
        "trajectory_ok": trajectory_ok,
        "start_ok": bool(start_ok),
        "end_ok": bool(end_ok),
        "monotonic_ok": mono_ok,
        "visible_ok": visible_ok,
        "colour_ok": bool(colour_ok),
        "colour_read": reading.colour,
        "ranks": reading.rank.tolist(),
        "row_error": float(
            np.nanmean(np.abs(pos - _expected_positions(event, old_rank, new_rank, rows, len(pos))))
        )
        if vis.any()
        else float("nan"),
    }


def _expected_positions(event, old, new, rows, n) -> np.ndarray:
    from wan2.data.rankjump import trajectory

    return trajectory(event, old, new, rows, n)["highlight"]


def judge_meta(frames, meta: dict) -> dict:
    """``judge`` with the asked-for event (and its board window) taken from a RankJump metadata dict."""
    geo = BoardGeometry(meta["height"], meta["width"], meta["rows"])
    return judge(
        frames, meta["event"], meta["old_rank"], meta["new_rank"], meta["colour"], geo, window=window_of(meta)
    )
