"""A/B statistics: per summary key, the paired B - A difference over identical prompts and seeds, with a
bootstrap CI where there are per-video numbers, and a verdict."""

from __future__ import annotations


def compare(a: dict, b: dict, num_samples: int = 10_000, ci: float = 0.95, seed: int = 0) -> dict:
    """Per summary key: the paired B - A difference with a bootstrap CI (per-video metrics) and a verdict."""
    from wan2.metrics.stats import paired_bootstrap, verdict

    out = {}
    for key in a["summary"]:
        if key not in b["summary"]:
            continue
        hib = a["higher_is_better"].get(key, True)
        va, vb = a["per_video"].get(key), b["per_video"].get(key)
        batches = min(s["metrics"].get("nfe_time", {}).get("num_batches", 0) for s in (a, b))
        if key == "cost/seconds_per_video" and batches < 2:  # one timing per batch: too few to resample
            out[key] = {
                "mean_a": a["summary"][key],
                "mean_b": b["summary"][key],
                "diff": b["summary"][key] - a["summary"][key],
                "higher_is_better": hib,
                "verdict": f"no CI (one timing per batch, {batches} batch)",
            }
            continue
        if va is not None and vb is not None:
            try:
                res = paired_bootstrap(va, vb, num_samples=num_samples, ci=ci, seed=seed)
            except ValueError as err:  # fewer than 2 complete pairs
                out[key] = {
                    "diff": b["summary"][key] - a["summary"][key],
                    "verdict": f"no CI ({err})",
                    "higher_is_better": hib,
                }
                continue
            out[key] = res | {"verdict": verdict(res["ci_low"], res["ci_high"], hib), "higher_is_better": hib}
            continue
        ma, mb = a["summary"][key], b["summary"][key]
        d = mb - ma
        if key == "cost/nfe":  # exact count: no sampling error
            text = "no difference" if d == 0 else ("B better" if (d > 0) == hib else "B worse")
        else:
            text = "no CI (one number per set)"
        out[key] = {"mean_a": ma, "mean_b": mb, "diff": d, "verdict": text, "higher_is_better": hib}
    return out
