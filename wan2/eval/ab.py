"""A/B statistics: per summary key, the paired B - A difference over identical prompts and seeds, with a BCa
bootstrap CI (``scipy.stats.bootstrap(method="BCa")``) where there are per-video numbers, a verdict, and a
Holm adjustment across all the metrics compared (many CIs at 95% give some false "significant" verdicts)."""

from __future__ import annotations

from wan2.metrics.stats import bca_paired, verdict

SMALL_N = 30  # fewer pairs: bootstrap intervals are approximate (often too narrow); the report says so


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (monotone step-down) for the keys given."""
    order = sorted(p_values, key=p_values.get)
    m, running, out = len(order), 0.0, {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[key]))
        out[key] = running
    return out


def compare(a: dict, b: dict, num_samples: int = 10_000, ci: float = 0.95, seed: int = 0) -> dict:
    """Per summary key: the paired B - A difference with a BCa CI (per-video metrics), a verdict, the number
    of pairs / videos behind it and, across the keys with a CI, Holm-adjusted p-values."""
    out = {}
    for key in a["summary"]:
        if key not in b["summary"]:
            continue
        hib = a["higher_is_better"].get(key, True)
        ns = {"n_a": a.get("n", {}).get(key), "n_b": b.get("n", {}).get(key)}
        va, vb = a["per_video"].get(key), b["per_video"].get(key)
        batches = min(s["metrics"].get("nfe_time", {}).get("num_batches", 0) for s in (a, b))
        if key == "cost/seconds_per_video" and batches < 2:  # one timing per batch: too few to resample
            out[key] = {
                "mean_a": a["summary"][key],
                "mean_b": b["summary"][key],
                "diff": b["summary"][key] - a["summary"][key],
                "higher_is_better": hib,
                "verdict": f"no CI (one timing per batch, {batches} batch)",
            } | ns
            continue
        if va is not None and vb is not None:
            try:
                res = bca_paired(va, vb, num_samples=num_samples, ci=ci, seed=seed)
            except ValueError as err:  # fewer than 2 complete pairs
                out[key] = {
                    "diff": b["summary"][key] - a["summary"][key],
                    "verdict": f"no CI ({err})",
                    "higher_is_better": hib,
                } | ns
                continue
            verdict_text = verdict(res["ci_low"], res["ci_high"], hib)
            out[key] = res | {"verdict": verdict_text, "higher_is_better": hib} | ns
            continue
        ma, mb = a["summary"][key], b["summary"][key]
        d = mb - ma
        if key == "cost/nfe":  # exact count: no sampling error
            text = "no difference" if d == 0 else ("B better" if (d > 0) == hib else "B worse")
        else:
            text = "no CI (one number per set)"
        out[key] = {"mean_a": ma, "mean_b": mb, "diff": d, "verdict": text, "higher_is_better": hib} | ns
    tested = {k: c["p_value"] for k, c in out.items() if c.get("p_value") is not None}
    for key, p in holm(tested).items():
        out[key]["p_holm"] = p
        out[key]["num_compared"] = len(tested)
    return out
