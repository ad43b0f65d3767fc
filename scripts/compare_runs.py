"""Compare runs from their local files, for machines without a W&B server.

    python scripts/compare_runs.py RUN_DIR [RUN_DIR ...] [--out DIR] [--metrics KEY ...]

A RUN_DIR is a train.py run folder (``metrics.json``, ``csv/metrics.csv``, ``.hydra/``) or an evaluate.py output
folder (``report.json``). Prints a markdown table (one row per run: its name, the final metrics, the eval summary)
and writes into ``--out`` (default ``compare_runs/``): ``compare.csv``, ``compare.json`` and one SVG plot per
curve of the CSV histories (``curves/<metric>.svg``, one line per run). A folder that is not a run: one line, exit 2.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


class NotARun(Exception):
    """A folder that holds none of a run's files (one line for the user)."""


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise NotARun(f"{path}: unreadable JSON ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise NotARun(f"{path}: must hold a JSON object")
    return data


def _name(run: Path) -> str:
    """``<experiment>-<overrides>`` from the run's ``.hydra`` files (as its W&B run name), else the folder name."""
    cfg, over = run / ".hydra" / "config.yaml", run / ".hydra" / "overrides.yaml"
    if not cfg.is_file():
        return run.name
    from omegaconf import OmegaConf

    from wan2.lightning.loggers import run_name

    try:
        name = str(OmegaConf.load(cfg).get("name") or run.name)
        overrides = [str(o) for o in OmegaConf.load(over)] if over.is_file() else []
    except Exception:  # a damaged .hydra file: the folder name still identifies the run
        return run.name
    return f"{run_name(name, overrides)} ({run.name})"


def _curves(path: Path) -> dict[str, list[tuple[float, float]]]:
    """metric -> [(step, value)] from a CSV history (empty cells skipped)."""
    from wan2.lightning.loggers import read_rows

    _, rows = read_rows(path)
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        try:
            step = float(row.get("step") or "nan")
        except ValueError:
            continue
        for key, value in row.items():
            if key in ("step", "epoch") or value in (None, ""):
                continue
            try:
                curves.setdefault(key, []).append((step, float(value)))
            except ValueError:
                pass
    return curves


def load_run(path: Path) -> dict:
    """{name, dir, kind, final, curves} of a run folder; ``NotARun`` for anything else."""
    if not path.is_dir():
        raise NotARun(f"{path}: not a folder")
    metrics, csv_file, report = path / "metrics.json", path / "csv" / "metrics.csv", path / "report.json"
    if not (metrics.is_file() or csv_file.is_file() or report.is_file()):
        raise NotARun(
            f"{path}: not a run folder (no metrics.json, csv/metrics.csv or report.json; "
            "give train.py's run folder or evaluate.py's out folder)"
        )
    final: dict[str, float] = {}
    if metrics.is_file():
        final |= {k: v for k, v in _json(metrics).items() if isinstance(v, int | float) and k != "step"}
    kind = "train"
    if report.is_file():
        kind = "eval"
        summary = _json(report).get("summary") or {}
        final |= {f"eval/{k}": v for k, v in summary.items() if isinstance(v, int | float)}
    curves = _curves(csv_file) if csv_file.is_file() else {}
    return {"name": _name(path), "dir": str(path), "kind": kind, "final": final, "curves": curves}


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(runs: list[dict], keys: list[str]) -> str:
    """Markdown: a row per run, a column per metric (blank where a run lacks it)."""
    head = ["run", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [r["name"].replace("|", "/"), *[_fmt(r["final"].get(k)) for k in keys]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_svg(metric: str, runs: list[dict], w: int = 640, h: int = 360) -> str:
    """One metric's history, a polyline (and dots) per run, on shared axes; hand-written SVG (no matplotlib)."""
    series = [(r["name"], r["curves"].get(metric, [])) for r in runs]
    pts = [p for _, s in series for p in s if math.isfinite(p[1])]
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9 + abs(y0) * 0.05 + 1e-3)
    L, R, T, B = 60, 20, 30, 40 + 16 * len(series)

    def xy(x: float, y: float) -> tuple[float, float]:
        return L + (x - x0) / (x1 - x0) * (w - L - R), T + (1 - (y - y0) / (y1 - y0)) * (h - T - B)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="13">{html.escape(metric)}</text>',
        f'<line x1="{L}" y1="{h - B}" x2="{w - R}" y2="{h - B}" stroke="black"/>',
        f'<line x1="{L}" y1="{T}" x2="{L}" y2="{h - B}" stroke="black"/>',
        f'<text x="{L}" y="{h - B + 14}" text-anchor="middle">{x0:g}</text>',
        f'<text x="{w - R}" y="{h - B + 14}" text-anchor="middle">{x1:g}</text>',
        f'<text x="{(L + w - R) / 2}" y="{h - B + 14}" text-anchor="middle">step</text>',
        f'<text x="{L - 4}" y="{h - B}" text-anchor="end">{y0:.4g}</text>',
        f'<text x="{L - 4}" y="{T + 4}" text-anchor="end">{y1:.4g}</text>',
    ]
    for i, (name, s) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        s = [p for p in s if math.isfinite(p[1])]
        if s:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in (xy(*p) for p in s))
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            out += [
                f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{colour}"/>' for a, b in (xy(*p) for p in s)
            ]
        ly = h - B + 30 + 16 * i
        out.append(f'<rect x="{L}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>')
        label = html.escape(name) + ("" if s else " (not logged)")
        out.append(f'<text x="{L + 16}" y="{ly}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _file_name(metric: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in metric) + ".svg"


def compare(dirs: list[Path], out: Path, only: list[str] | None = None) -> dict:
    """Load the runs, write compare.csv / compare.json / curves/*.svg into ``out``; returns the comparison."""
    from wan2.export import atomic_write_text

    runs = [load_run(d) for d in dirs]
    keys = sorted({k for r in runs for k in r["final"]})
    if only:
        keys = [k for k in keys if any(k == o or k.startswith(o.rstrip("/") + "/") for o in only)]
    curves = sorted({k for r in runs for k in r["curves"]})
    if only:
        curves = [k for k in curves if any(k == o or k.startswith(o.rstrip("/") + "/") for o in only)]
    out.mkdir(parents=True, exist_ok=True)
    buf = [",".join(["run", "dir", "kind", *keys])]
    for r in runs:
        row = [r["name"], r["dir"], r["kind"], *[_fmt(r["final"].get(k)) for k in keys]]
        buf.append(",".join('"' + c.replace('"', '""') + '"' if ("," in c or '"' in c) else c for c in row))
    atomic_write_text(out / "compare.csv", "\n".join(buf) + "\n")
    result = {
        "runs": [{k: r[k] for k in ("name", "dir", "kind", "final")} for r in runs],
        "metrics": keys,
        "plots": [],
    }
    for metric in curves:
        path = out / "curves" / _file_name(metric)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, curve_svg(metric, runs))
        result["plots"].append(str(path.relative_to(out)))
    atomic_write_text(out / "compare.json", json.dumps(result, indent=2) + "\n")
    result["table"] = table(runs, keys)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="train.py run folders and/or evaluate.py out folders")
    ap.add_argument(
        "--out", type=Path, default=Path("compare_runs"), help="where compare.csv/json and plots go"
    )
    ap.add_argument("--metrics", nargs="*", help="only these metric keys (or prefixes such as val/)")
    args = ap.parse_args(argv)
    try:
        result = compare(args.runs, args.out, args.metrics)
    except NotARun as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result["table"])
    print(
        f"wrote {args.out / 'compare.csv'}, compare.json and {len(result['plots'])} plot(s)", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
