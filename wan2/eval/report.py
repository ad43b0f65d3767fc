"""What people look at: contact sheets (PNG), sample folders, inline SVG plots and report.html.

No plotting library: bar charts and CI whiskers are a few SVG rectangles and lines written here. Every string
that reaches the HTML is escaped, and a video is linked only by a relative path inside the report folder.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np

PASS, FAIL, UNKNOWN = (40, 200, 70), (230, 50, 50), (120, 120, 120)
COLOURS = ("#4e79a7", "#f28e2b")  # A, B (or the single model)


# ----------------------------------------------------------------------------- contact sheets and samples


def contact_sheet(
    videos, marks: list[tuple[int, int, int]] | None = None, max_frames: int = 9, scale: int = 3
) -> np.ndarray:
    """Videos (uint8 (N, F, H, W, 3) or float (N, 3, F, H, W) in [-1, 1]) -> one row per video of evenly spaced
    frames, framed in its mark colour when ``marks`` are given; uint8 (H', W', 3)."""
    from wan2.metrics.temporal import uint8_videos

    videos = uint8_videos(videos)  # (N, F, H, W, 3)
    rows = []
    for n, v in enumerate(videos):
        idx = np.linspace(0, len(v) - 1, min(max_frames, len(v))).round().astype(int)
        row = np.concatenate(
            [np.pad(v[i], ((1, 1), (1, 1), (0, 0))) for i in idx], axis=1
        )  # (H+2, k(W+2), 3)
        if marks is not None:
            framed = np.empty((row.shape[0] + 4, row.shape[1] + 4, 3), np.uint8)
            framed[:] = marks[n]
            framed[2:-2, 2:-2] = row
            row = framed
        rows.append(row)
    sheet = np.concatenate(rows, axis=0)
    return sheet.repeat(scale, 0).repeat(scale, 1)


def save_samples(videos, captions: list[str], out_dir: Path, fps: int = 8) -> None:
    """``out_dir/contact_sheet.png``, ``captions.txt`` and one mp4 per video (float (B, 3, F, H, W) in
    [-1, 1] or uint8 (B, F, H, W, 3)): what training validation and scripts/sample.py leave to look at."""
    from PIL import Image

    from wan2.metrics.temporal import uint8_videos

    frames = uint8_videos(videos)  # (B, F, H, W, 3)
    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(frames, scale=2)).save(out_dir / "contact_sheet.png")
    (out_dir / "captions.txt").write_text("\n".join(captions) + "\n")
    try:
        from wan2.data.video import write_mp4
    except ImportError:  # video IO not available: the contact sheet still shows the motion
        return
    for i, v in enumerate(frames):
        write_mp4(v, out_dir / f"{i:02d}.mp4", fps=fps)


def write_contact_sheets(
    videos: np.ndarray, metas: list, passed: list | None, out_dir: Path, per_sheet: int = 8
) -> dict[str, tuple[Path, list[int]]]:
    """One PNG per event (its first ``per_sheet`` videos; frame green = trajectory read right, red = wrong);
    returns event -> (path, video indices in the sheet's row order)."""
    from PIL import Image

    groups: dict[str, list[int]] = {}
    for i, m in enumerate(metas):
        groups.setdefault(m["event"] if m else "videos", []).append(i)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, idx in sorted(groups.items()):
        idx = idx[:per_sheet]
        marks = []
        for i in idx:
            ok = passed[i] if passed is not None else float("nan")
            marks.append(UNKNOWN if ok != ok else (PASS if ok >= 0.5 else FAIL))
        path = out_dir / f"{name}.png"
        Image.fromarray(contact_sheet(videos[idx], marks)).save(path)
        paths[name] = (path, idx)
    return paths


# ----------------------------------------------------------------------------- SVG


def _fmt(x) -> str:
    """A number or value as HTML-safe text."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4g}"
    return html.escape(str(x))


def video_link(file: str, out: Path) -> str:
    """An escaped link to a video when ``file`` (relative to the report folder ``out``) lies inside it, else
    the escaped name alone: a name such as ``javascript:alert(1).mp4`` can never become a live link."""
    name = html.escape(Path(file).name)
    target = (Path(out) / file).resolve()
    root = Path(out).resolve()
    if Path(file).is_absolute() or not target.is_relative_to(root):
        return name
    rel = Path(os.path.relpath(target, root)).as_posix()
    return f'<a href="./{html.escape(quote(rel))}">{name}</a>'


def svg_bars(
    title: str, labels: list[str], series: list[tuple[str, list]], width: int = 420, height: int = 220
) -> str:
    """Grouped bar chart: one group per label, one bar per series (name, values); None values are left out."""
    vals = [v for _, vs in series for v in vs if v is not None]
    top = max([abs(v) for v in vals] + [1e-12])
    top = 1.0 if 0.0 <= min(vals or [0]) and top <= 1.0 else top * 1.1
    left, bottom, plot_h = 40, 40, height - 70
    group_w = (width - left - 10) / max(1, len(labels))
    bar_w = group_w * 0.8 / max(1, len(series))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="plot">',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 5}" y2="{height - bottom}" stroke="#333"/>',
        f'<text x="{left - 4}" y="{height - bottom - plot_h + 4}" text-anchor="end" font-size="10">{_fmt(top)}</text>',
        f'<text x="{left - 4}" y="{height - bottom + 4}" text-anchor="end" font-size="10">0</text>',
    ]
    for g, label in enumerate(labels):
        x0 = left + g * group_w + group_w * 0.1
        for s, (_, values) in enumerate(series):
            v = values[g]
            if v is None:
                continue
            h = plot_h * max(0.0, v) / top
            x = x0 + s * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{height - bottom - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS[s % len(COLOURS)]}"><title>{_fmt(v)}</title></rect>'
            )
            parts.append(
                f'<text x="{x + bar_w / 2 - 1:.1f}" y="{height - bottom - h - 3:.1f}" text-anchor="middle" '
                f'font-size="9">{_fmt(v)}</text>'
            )
        parts.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{height - bottom + 14}" text-anchor="middle" '
            f'font-size="10">{html.escape(label)}</text>'
        )
    if len(series) > 1:
        for s, (name, _) in enumerate(series):
            parts.append(
                f'<rect x="{left + s * 90}" y="{height - 16}" width="10" height="10" '
                f'fill="{COLOURS[s % len(COLOURS)]}"/><text x="{left + s * 90 + 14}" y="{height - 7}" '
                f'font-size="10">{html.escape(name)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def svg_ci(diff: float, lo: float, hi: float, width: int = 180, height: int = 22) -> str:
    """A CI whisker around the difference, with the zero line: does the interval cross 0?"""
    span = max(abs(lo), abs(hi), abs(diff), 1e-12) * 1.1

    def x(v):
        return width / 2 + v / span * (width / 2 - 6)

    colour = "#2a9d3a" if lo > 0 else ("#d03030" if hi < 0 else "#777")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<line x1="{width / 2}" y1="2" x2="{width / 2}" y2="{height - 2}" stroke="#bbb"/>'
        f'<line x1="{x(lo):.1f}" y1="{height / 2}" x2="{x(hi):.1f}" y2="{height / 2}" stroke="{colour}" stroke-width="2"/>'
        f'<circle cx="{x(diff):.1f}" cy="{height / 2}" r="3.5" fill="{colour}"/></svg>'
    )


# ----------------------------------------------------------------------------- HTML

STYLE = """body{font-family:sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse;margin:8px 0 18px}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.plots svg{margin:4px;border:1px solid #eee}img{image-rendering:pixelated;margin:4px}
.note{color:#666;font-size:12px}"""


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _side_sections(side: dict, out: Path, title: str) -> str:
    events = list(side["per_event"])
    header = ["metric", "all"] + [f"{e} (n={side['per_event'][e]['num_videos']})" for e in events]
    rows = [
        [html.escape(k), _fmt(v)] + [_fmt(side["per_event"][e].get(k)) for e in events]
        for k, v in side["summary"].items()
    ]
    proto = _table(["protocol", "value"], [[html.escape(k), _fmt(v)] for k, v in side["protocol"].items()])
    info = "".join(
        f"<li><b>{html.escape(n)}</b>: {html.escape(str(i))}</li>" for n, i in side["metrics"].items()
    )
    skipped = "".join(f"<li>{html.escape(n)}: {html.escape(w)}</li>" for n, w in side["skipped"].items())
    sheets = "".join(
        f"<div><b>{html.escape(n)}</b> (rows top to bottom; green frame: trajectory read right, red: wrong)<br>"
        f"{_img(out / s['file'])}<ol class='note'>"
        + "".join(f"<li>{html.escape(str(side['videos'][i]['prompt']))}</li>" for i in s["videos"])
        + "</ol></div>"
        for n, s in side["contact_sheets"].items()
    )
    keys = [k for k in side["summary"] if side["videos"] and k in side["videos"][0]]
    vrows = [
        [
            video_link(r["file"], out),
            html.escape(str(r["prompt"])),
            _fmt(r["seed"]),
            _fmt(r["event"]),
        ]
        + [_fmt(r.get(k)) for k in keys]
        for r in side["videos"][:200]
    ]
    return (
        f"<h2>{html.escape(title)}</h2>{proto}<h3>Metrics</h3>"
        + _table(header, rows)
        + (f"<ul class='note'>{info}</ul>" if info else "")
        + (f"<p class='note'>Not run:</p><ul class='note'>{skipped}</ul>" if skipped else "")
        + f"<h3>Contact sheets</h3>{sheets}<h3>Videos</h3>"
        + _table(["file", "prompt", "seed", "event"] + keys, vrows, left=2)
    )


def _plots(sides: list[tuple[str, dict]]) -> str:
    first = sides[0][1]
    events = list(first["per_event"])
    labels = ["all"] + events
    charts = []
    for key in first["summary"]:
        series = []
        for name, s in sides:
            vals = [s["summary"].get(key)] + [s["per_event"].get(e, {}).get(key) for e in events]
            series.append((name, vals))
        charts.append(svg_bars(key, labels, series))
    return "<h2>Plots</h2><div class='plots'>" + "".join(charts) + "</div>"


def render_html(report: dict, out: Path) -> str:
    """The whole report as one HTML string (images inlined as base64, plots as SVG)."""
    out = Path(out)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>wan2 evaluation</title>"
        f"<style>{STYLE}</style></head><body><h1>wan2 evaluation ({html.escape(report['mode'])})</h1>"
        f"<p class='note'>In-domain metrics (rank_trajectory, colour, indomain) read RankJump videos with the "
        f"repo's own reader / encoder; they are not FVD or CLIPScore. {_fmt(report['seconds'])} s.</p>"
    ]
    if report["mode"] == "compare":
        rows = []
        for key, c in report["comparison"].items():
            ci = f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]" if "ci_low" in c else ""
            whisker = svg_ci(c["diff"], c["ci_low"], c["ci_high"]) if "ci_low" in c else ""
            rows.append(
                [
                    html.escape(key),
                    _fmt(c.get("mean_a")),
                    _fmt(c.get("mean_b")),
                    _fmt(c["diff"]),
                    ci,
                    whisker,
                    "higher" if c["higher_is_better"] else "lower",
                    html.escape(c["verdict"]),
                ]
            )
        parts.append(
            f"<h2>A/B: B - A, paired over identical prompts and seeds</h2>"
            f"<p>A = {html.escape(report['a']['name'])}<br>B = {html.escape(report['b']['name'])}</p>"
            + _table(["metric", "A", "B", "B - A", "95% CI", "CI vs 0", "better", "verdict"], rows)
        )
        parts.append(_plots([("A", report["a"]), ("B", report["b"])]))
        parts.append(_side_sections(report["a"], out, "A: " + report["a"]["name"]))
        parts.append(_side_sections(report["b"], out, "B: " + report["b"]["name"]))
    else:
        parts.append(_plots([("model", report)]))
        parts.append(
            _side_sections(report, out, report["protocol"].get("ckpt") or report["protocol"]["source"])
        )
    parts.append("</body></html>\n")
    return "".join(parts)
