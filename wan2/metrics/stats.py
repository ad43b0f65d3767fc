"""Paired comparison statistics for A/B evaluation: the mean per-video difference with a BCa bootstrap CI.

Both models see the same prompts and seeds, so video i of A and video i of B form a pair; resampling pairs
(not each side alone) removes the prompt-to-prompt variance that both share.
"""

from __future__ import annotations

import numpy as np


def bca_paired(a, b, num_samples: int = 10_000, ci: float = 0.95, seed: int = 0) -> dict:
    """Mean of ``b - a`` over complete pairs with a BCa bootstrap CI and a two-sided bootstrap p-value for 0;
    a ValueError below 2 pairs."""
    from scipy.stats import bootstrap

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a/b: expected two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = b[keep] - a[keep]  # (n,) paired differences
    n = int(d.size)
    if n < 2:
        raise ValueError(f"a/b: {n} complete pair(s); a bootstrap CI needs at least 2")
    out = {
        "mean_a": float(a[keep].mean()),
        "mean_b": float(b[keep].mean()),
        "diff": float(d.mean()),
        "ci": ci,
        "num_pairs": n,
        "num_samples": num_samples,
        "method": "BCa",
    }
    if np.ptp(d) == 0.0:  # every pair differs by the same amount: no spread to resample
        return out | {"ci_low": float(d[0]), "ci_high": float(d[0]), "p_value": 1.0 if d[0] == 0 else 0.0}
    res = bootstrap(
        (d,),
        np.mean,
        confidence_level=ci,
        n_resamples=num_samples,
        method="BCa",
        rng=np.random.default_rng(seed),
    )
    dist = res.bootstrap_distribution  # (S,) resampled means
    p = min(1.0, 2.0 * min(np.mean(dist <= 0.0), np.mean(dist >= 0.0)))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return out | {"ci_low": lo, "ci_high": hi, "p_value": float(p)}


def verdict(ci_low: float, ci_high: float, higher_is_better: bool = True) -> str:
    """One line from a CI of ``B - A``: "B better", "B worse" or "no significant difference"."""
    if ci_low > 0.0:
        return "B better" if higher_is_better else "B worse"
    if ci_high < 0.0:
        return "B worse" if higher_is_better else "B better"
    return "no significant difference"
