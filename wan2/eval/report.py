"""What people look at: contact sheets (PNG), sample folders, inline SVG plots and report.html.

No plotting library: bar charts and CI whiskers are a few SVG rectangles and lines written here. Every string
that reaches the HTML is escaped; a video inside the report folder is embedded as a data URI (up to
``EMBED_LIMIT`` bytes per page) or linked by a relative path inside that folder, never anything else.
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


def metric_family(key: str) -> str:
    """The axis a metric's CI shares: every accuracy (a share in [0, 1], differences in [-1, 1]) one axis,
    any other metric the axis of its own metric name (``flicker/score`` and ``flicker/p90`` together)."""
    return "accuracy" if key.rsplit("/", 1)[-1].endswith("accuracy") else key.split("/")[0]


def family_spans(comparison: dict) -> dict[str, float]:
    """Half-width of each family's shared CI axis: 1 for accuracies, else the family's largest |bound|."""
    spans: dict[str, float] = {}
    for key, c in comparison.items():
        fam = metric_family(key)
        if fam == "accuracy":
            spans[fam] = 1.0
        elif "ci_low" in c:
            bound = max(abs(c["ci_low"]), abs(c["ci_high"]), abs(c["diff"]))
            spans[fam] = max(spans.get(fam, 0.0), bound)
    return {f: (v if f == "accuracy" else _nice(v)) for f, v in spans.items()}


def _nice(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``v`` (a readable axis end)."""
    if not v > 0:
        return 1.0
    k = 10.0 ** np.floor(np.log10(v))
    return float(next(m * k for m in (1, 2, 2.5, 5, 10) if m * k >= v))


def svg_ci(diff: float, lo: float, hi: float, span: float, width: int = 220, height: int = 30) -> str:
    """A CI whisker around the difference on the axis [-span, span] (shared by the metric's family), with the
    zero line and the axis ends written under it: a 0.002 change looks as small as it is."""
    pad = 8

    def x(v):
        return width / 2 + max(-1.0, min(1.0, v / span)) * (width / 2 - pad)

    colour = "#2a9d3a" if lo > 0 else ("#d03030" if hi < 0 else "#777")
    y = 10
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="ci" '
        f'data-span="{span:.6g}">'
        f'<line x1="{pad}" y1="{y}" x2="{width - pad}" y2="{y}" stroke="#eee"/>'
        f'<line x1="{width / 2}" y1="2" x2="{width / 2}" y2="{y + 8}" stroke="#bbb"/>'
        f'<line x1="{x(lo):.1f}" y1="{y}" x2="{x(hi):.1f}" y2="{y}" stroke="{colour}" stroke-width="2"/>'
        f'<circle cx="{x(diff):.1f}" cy="{y}" r="3.5" fill="{colour}"/>'
        f'<text x="{pad}" y="{height - 2}" font-size="9">{-span:.6g}</text>'
        f'<text x="{width / 2}" y="{height - 2}" font-size="9" text-anchor="middle">0</text>'
        f'<text x="{width - pad}" y="{height - 2}" font-size="9" text-anchor="end">{span:.6g}</text></svg>'
    )


# ----------------------------------------------------------------------------- HTML

STYLE = """body{font-family:sans-serif;margin:24px auto;max-width:1200px;padding:0 12px}
table{border-collapse:collapse;margin:8px 0 18px}.scroll{max-width:100%;overflow-x:auto}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}td.l{max-width:32em;overflow-wrap:anywhere}.plots svg{margin:4px;border:1px solid #eee}
img{image-rendering:pixelated;margin:4px;max-width:100%}video{max-width:240px;image-rendering:pixelated}
.pairs td{vertical-align:top}.note{color:#666;font-size:12px}.caveat{background:#fff6dd;padding:6px 10px}"""
EMBED_LIMIT = 24 * 2**20  # bytes of mp4 embedded per report (base64 adds a third); the rest are linked


class _Clips:
    """Embeds clips as data URIs until ``limit`` bytes, links the rest; counts both for the page's claim."""

    def __init__(self, out: Path, limit: int):
        self.out, self.left, self.embedded, self.linked = Path(out), limit, 0, 0

    def cell(self, file: str) -> str:
        path = (self.out / file).resolve()
        inside = not Path(file).is_absolute() and path.is_relative_to(self.out.resolve())
        size = path.stat().st_size if inside and path.is_file() else None
        if size is None or size > self.left:
            self.linked += 1
            return video_link(file, self.out)
        self.left -= size
        self.embedded += 1
        data = base64.b64encode(path.read_bytes()).decode()
        return (
            f'<video controls loop muted preload="metadata" src="data:video/mp4;base64,{data}"></video>'
            f"<br>{html.escape(Path(file).name)}"
        )


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<div class='scroll'><table><tr>{th}</tr>{body}</table></div>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def prose(value) -> str:
    """A note or a metric's info (str, number, list or dict) as escaped prose, never a Python repr."""
    if isinstance(value, dict):
        return "; ".join(f"{html.escape(str(k)).replace('_', ' ')}: {prose(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(prose(v) for v in value)
    return _fmt(value)


def _side_sections(side: dict, out: Path, title: str, clips: _Clips, sheets: bool = True) -> str:
    events = list(side["per_event"])
    n = side.get("n", {})
    header = ["metric", "n", "all"] + [f"{e} (n={side['per_event'][e]['num_videos']})" for e in events]
    rows = [
        [html.escape(k), _fmt(n.get(k)), _fmt(v)] + [_fmt(side["per_event"][e].get(k)) for e in events]
        for k, v in side["summary"].items()
    ]
    proto = _table(["protocol", "value"], [[html.escape(k), _fmt(v)] for k, v in side["protocol"].items()])
    info = "".join(f"<li><b>{html.escape(k)}</b>: {prose(i)}</li>" for k, i in side["metrics"].items() if i)
    skipped = "".join(f"<li>{html.escape(k)}: {prose(w)}</li>" for k, w in side["skipped"].items())
    sheet_html = "".join(
        f"<div><b>{html.escape(k)}</b> (rows top to bottom; green frame: trajectory read right, red: wrong)<br>"
        f"{_img(out / s['file'])}<ol class='note'>"
        + "".join(f"<li>{html.escape(str(side['videos'][i]['prompt']))}</li>" for i in s["videos"])
        + "</ol></div>"
        for k, s in side["contact_sheets"].items()
    )
    keys = [k for k in side["summary"] if side["videos"] and k in side["videos"][0]]
    shown = side["videos"][:200]
    vrows = [
        [clips.cell(r["file"]), html.escape(str(r["prompt"])), _fmt(r["seed"]), _fmt(r["event"])]
        + [_fmt(r.get(k)) for k in keys]
        for r in shown
    ]
    return (
        f"<h2>{html.escape(title)}</h2>{proto}<h3>Metrics (n = videos with a value)</h3>"
        + _table(header, rows)
        + (f"<ul class='note'>{info}</ul>" if info else "")
        + (f"<p class='note'>Not run:</p><ul class='note'>{skipped}</ul>" if skipped else "")
        + (f"<h3>Contact sheets</h3>{sheet_html}" if sheets else "")
        + f"<h3>Videos ({len(shown)} of {len(side['videos'])} shown)</h3>"
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
        ns = "/".join(_fmt(s.get("n", {}).get(key)) for _, s in sides)
        charts.append(svg_bars(f"{key} (n={ns})", labels, series))
    return "<h2>Plots</h2><div class='plots'>" + "".join(charts) + "</div>"


def _sheet_rows(path: Path, count: int) -> list[str]:
    """The ``count`` equal-height rows of a contact sheet PNG (one per video), each as an embedded <img>."""
    import io

    from PIL import Image

    sheet = Image.open(path)
    h = sheet.height // max(1, count)
    imgs = []
    for r in range(count):
        buf = io.BytesIO()
        sheet.crop((0, r * h, sheet.width, (r + 1) * h)).save(buf, format="PNG")
        data = base64.b64encode(buf.getvalue()).decode()
        imgs.append(f'<img src="data:image/png;base64,{data}" alt="row {r + 1} of {html.escape(path.name)}">')
    return imgs


def _pairs(report: dict, out: Path) -> str:
    """A/B side by side, one table row per prompt: the same prompt and seed's frames from A and from B."""
    a, b = report["a"], report["b"]
    parts = [
        "<h2>A/B side by side (same prompt and seed per row; frame green: trajectory read right, red: wrong)</h2>"
    ]
    for event, sa in a["contact_sheets"].items():
        sb = b["contact_sheets"].get(event)
        if sb is None:
            continue
        rows_a = _sheet_rows(out / sa["file"], len(sa["videos"]))
        rows_b = _sheet_rows(out / sb["file"], len(sb["videos"]))
        body = "".join(
            f"<tr class='pair'><td class='l prompt'>{html.escape(str(a['videos'][i]['prompt']))}"
            f"<br><span class='note'>seed {_fmt(a['videos'][i]['seed'])}</span></td>"
            f"<td class='a'>{ra}</td><td class='b'>{rb}</td></tr>"
            for i, ra, rb in zip(sa["videos"], rows_a, rows_b)
        )
        parts.append(
            f"<h3>{html.escape(event)} (n={len(sa['videos'])} prompts shown)</h3><div class='scroll'>"
            f"<table class='pairs'><tr><th class='l'>prompt</th><th>A</th><th>B</th></tr>{body}</table></div>"
        )
    return "".join(parts)


def _comparison(report: dict) -> str:
    """The B - A table: n per side and pairs, BCa CI on the family's shared axis, Holm p, and the caveats."""
    from wan2.eval.ab import SMALL_N

    comp = report["comparison"]
    spans = family_spans(comp)
    rows = []
    for key, c in comp.items():
        has_ci = "ci_low" in c
        fam = metric_family(key)
        rows.append(
            [
                html.escape(key),
                html.escape(fam) + (f" (&plusmn;{spans[fam]:.6g})" if fam in spans else ""),
                _fmt(c.get("num_pairs")),
                f"{_fmt(c.get('mean_a'))} (n={_fmt(c.get('n_a'))})",
                f"{_fmt(c.get('mean_b'))} (n={_fmt(c.get('n_b'))})",
                _fmt(c["diff"]),
                f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]" if has_ci else "",
                svg_ci(c["diff"], c["ci_low"], c["ci_high"], spans[fam]) if has_ci else "",
                _fmt(c.get("p_holm")),
                "higher" if c["higher_is_better"] else "lower",
                html.escape(c["verdict"]),
            ]
        )
    pairs = [c["num_pairs"] for c in comp.values() if c.get("num_pairs")]
    tested = max([c.get("num_compared", 0) for c in comp.values()] + [0])
    level = next((c["ci"] for c in comp.values() if "ci" in c), 0.95)
    caveats = []
    if pairs and min(pairs) < SMALL_N:
        caveats.append(
            f"Small sample: as few as n = {min(pairs)} pairs (under {SMALL_N}). Bootstrap intervals (BCa) are "
            "approximate at this size and tend to be too narrow; read the verdicts as indicative and rerun "
            "with more videos before concluding."
        )
    if tested > 1:
        holm_sig = [k for k, c in comp.items() if c.get("p_holm") is not None and c["p_holm"] < 1 - level]
        caveats.append(
            f"Multiple comparisons: {tested} metrics were compared, each with its own {level:.0%} interval; "
            f"if nothing changed, the chance that at least one still looks significant is up to "
            f"{1 - level**tested:.0%}. The Holm-adjusted p-values (column p Holm) control that; significant "
            f"after Holm at {1 - level:.2g}: {html.escape(', '.join(holm_sig)) if holm_sig else 'none'}."
        )
    caveat = "".join(f"<p class='caveat'>{c}</p>" for c in caveats)
    return (
        "<h2>A/B: B - A, paired over identical prompts and seeds</h2>"
        f"<p>A = {html.escape(report['a']['name'])}<br>B = {html.escape(report['b']['name'])}</p>"
        f"<p class='note'>{level:.0%} CIs are BCa bootstrap intervals of the mean paired difference "
        "(scipy.stats.bootstrap, method=BCa). Whiskers share one axis per metric family (the &plusmn; range "
        "in the family column; accuracies on [-1, 1]), so their lengths compare within a family.</p>"
        + caveat
        + _table(
            ["metric", "family (axis)", "n pairs", "A", "B", "B - A", f"{level:.0%} CI (BCa)", "CI vs 0"]
            + ["p Holm", "better", "verdict"],
            rows,
        )
    )


def render_html(report: dict, out: Path, embed_limit: int = EMBED_LIMIT) -> str:
    """The whole report as one HTML string: contact sheets and plots inline; clips embedded as data URIs up
    to ``embed_limit`` bytes, the rest linked (the page says which it is)."""
    out = Path(out)
    clips = _Clips(out, embed_limit)
    body = []
    if report["mode"] == "compare":
        body.append(_comparison(report))
        body.append(_pairs(report, out))
        body.append(_plots([("A", report["a"]), ("B", report["b"])]))
        body.append(_side_sections(report["a"], out, "A: " + report["a"]["name"], clips, sheets=False))
        body.append(_side_sections(report["b"], out, "B: " + report["b"]["name"], clips, sheets=False))
    else:
        body.append(_plots([("model", report)]))
        title = report["protocol"].get("ckpt") or report["protocol"]["source"]
        body.append(_side_sections(report, out, title, clips))
    if clips.linked:
        claim = (
            f"Not self-contained: {clips.embedded} clip(s) are embedded and {clips.linked} are linked by paths "
            "relative to this report's folder (over the embedding cap, or missing); keep report.html next to "
            "its videos. Contact sheets and plots are embedded."
        )
    else:
        claim = f"Self-contained: contact sheets, plots and all {clips.embedded} clip(s) shown are embedded."
    notes = "".join(f"<li>{prose(n)}</li>" for n in report.get("notes") or [])
    head = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>wan2 evaluation</title>"
        f"<style>{STYLE}</style></head><body><h1>wan2 evaluation ({html.escape(report['mode'])})</h1>"
        f"<p class='note' id='claim'>{claim}</p>"
        f"<p class='note'>In-domain metrics (rank_trajectory, colour, indomain) read RankJump videos with the "
        f"repo's own reader / encoder; they are not FVD or CLIPScore. {_fmt(report['seconds'])} s.</p>"
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
    )
    return head + "".join(body) + "</body></html>\n"
