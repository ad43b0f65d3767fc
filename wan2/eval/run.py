"""Run an evaluation: ``main(cfg)`` plans (cheap checks), gets the videos (generated or read), scores each side,
compares A/B and writes the outputs. evaluate.py calls it after ``wan2.eval.config`` checked the config."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from wan2.config_check import ConfigError
from wan2.eval.ab import compare
from wan2.eval.outputs import clean, side_report, write_report
from wan2.eval.plan import Plan, plan
from wan2.eval.sources import generate, load_videos


def run(cfg, p: Plan) -> dict:
    """Generate (or read) the videos, score them, write report.json / report.html, log to W&B; returns the report."""
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    start = time.time()
    if p.mode == "videos":
        sides = {"model": side_report(load_videos(Path(p.source)), p, None, cfg, out, out)}
    else:
        sides = {}
        for side in p.sides:
            sub = out if p.mode == "generate" else out / side.label
            ev = generate(side, p.items, side.gen(p.gen), sub, cfg)
            sides[side.label] = side_report(ev, p, side, cfg, out, sub)
    report = {"mode": p.mode, "metrics_run": p.metrics, "seconds": 0.0}
    if p.mode == "compare":
        a, b = sides["A"], sides["B"]
        bs = cfg.get("bootstrap") or {}
        report |= {
            "a": {"name": p.sides[0].name, **a},
            "b": {"name": p.sides[1].name, **b},
            "comparison": compare(
                a, b, int(bs.get("num_samples", 10_000)), float(bs.get("ci", 0.95)), int(cfg.seed)
            ),
        }
        if p.notes:
            report["notes"] = p.notes
        report["summary"] = (
            {f"A/{k}": v for k, v in a["summary"].items()}
            | {f"B/{k}": v for k, v in b["summary"].items()}
            | {f"diff/{k}": c["diff"] for k, c in report["comparison"].items()}
        )
    else:
        report |= sides["model"]
    for d in (report, report.get("a", {}), report.get("b", {})):
        d.pop("per_video", None)  # the same numbers are in `videos`, row by row
    report["seconds"] = round(time.time() - start, 1)
    report = clean(report)
    write_report(report, out, cfg)
    return report


def main(cfg) -> int:
    """Check, plan, run, print the summary; a config or input problem prints one line and returns 2."""
    from wan2.eval.config import check_eval_config

    try:
        check_eval_config(cfg)  # evaluate.py checked already; callers from Python get the same checks
        p = plan(cfg)
        for name, why in p.skipped.items():
            print(f"note: {name} not run: {why}", file=sys.stderr)
        for note in p.notes:
            print(f"note: {note}", file=sys.stderr)
        report = run(cfg, p)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(str(cfg.out))
    print(json.dumps(report["summary"], indent=1))
    if report["mode"] == "compare":
        for key, c in report["comparison"].items():
            ci = f" [{c['ci_low']:+.4g}, {c['ci_high']:+.4g}]" if "ci_low" in c else ""
            print(f"{key}: B - A = {c['diff']:+.4g}{ci}: {c['verdict']}")
    print(f"report: {out / 'report.html'}", file=sys.stderr)
    return 0
