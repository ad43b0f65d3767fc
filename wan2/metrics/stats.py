"""Paired comparison statistics for A/B evaluation: the mean per-video difference with a bootstrap CI.

Both models see the same prompts and seeds, so video i of A and video i of B form a pair; resampling pairs
(not each side alone) removes the prompt-to-prompt variance that both share.
"""

from __future__ import annotations

import numpy as np


def paired_bootstrap(a, b, num_samples: int = 10_000, ci: float = 0.95, seed: int = 0) -> dict:
    """Mean of ``b - a`` over pairs with a percentile bootstrap CI; pairs with a NaN on either side are dropped."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a/b: expected two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci: {ci} is not in (0, 1)")
    keep = np.isfinite(a) & np.isfinite(b)
    d = b[keep] - a[keep]  # (n,) paired differences
    n = int(d.size)
    if n < 2:
        raise ValueError(f"a/b: {n} complete pair(s); a bootstrap CI needs at least 2")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(num_samples, n))  # (S, n) resampled pair indices
    means = d[idx].mean(axis=1)  # (S,)
    lo, hi = np.quantile(means, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return {
        "mean_a": float(a[keep].mean()),
        "mean_b": float(b[keep].mean()),
        "diff": float(d.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "ci": ci,
        "num_pairs": n,
        "num_samples": num_samples,
    }


def verdict(ci_low: float, ci_high: float, higher_is_better: bool = True) -> str:
    """One line from a CI of ``B - A``: "B better", "B worse" or "no significant difference"."""
    if ci_low > 0.0:
        return "B better" if higher_is_better else "B worse"
    if ci_high < 0.0:
        return "B worse" if higher_is_better else "B better"
    return "no significant difference"
