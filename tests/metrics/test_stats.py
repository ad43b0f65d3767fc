"""Paired BCa bootstrap: the CI finds a known shift, covers zero without one, and has about its nominal coverage."""

import numpy as np
import pytest

from wan2.metrics.stats import bca_paired, verdict


def test_known_shift_is_found_and_the_verdict_follows_the_direction():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, 200)  # per-prompt difficulty shared by both models
    b = a + 0.3 + rng.normal(0.0, 0.2, 200)  # B is 0.3 higher on every prompt, plus a little noise
    res = bca_paired(a, b, num_samples=4000)
    assert res["num_pairs"] == 200 and res["ci_low"] < res["diff"] < res["ci_high"]
    assert 0.25 < res["ci_low"] and res["ci_high"] < 0.35  # pairing removes the shared N(0, 1) spread
    assert verdict(res["ci_low"], res["ci_high"], higher_is_better=True) == "B better"
    assert verdict(res["ci_low"], res["ci_high"], higher_is_better=False) == "B worse"
    assert verdict(-0.1, 0.2) == "no significant difference"
    assert verdict(-0.3, -0.1) == "B worse"


def test_identical_models_and_nan_pairs():
    a = np.array([1.0, 0.0, 1.0, np.nan, 1.0])
    res = bca_paired(a, a.copy())
    assert res["diff"] == 0.0 and res["ci_low"] == 0.0 == res["ci_high"] and res["num_pairs"] == 4
    assert verdict(res["ci_low"], res["ci_high"]) == "no significant difference"
    with pytest.raises(ValueError, match="at least 2"):
        bca_paired([1.0, np.nan], [np.nan, 2.0])
    with pytest.raises(ValueError, match="equal length"):
        bca_paired([1.0, 2.0], [1.0])


def test_coverage_is_near_nominal():
    """Over 300 simulated A/B runs with a true difference of 0.1, the 95% CI holds it about 95% of the time."""
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(300):
        a = rng.normal(0.0, 1.0, 60)
        b = a + 0.1 + rng.normal(0.0, 0.5, 60)
        res = bca_paired(a, b, num_samples=1000, seed=i)
        hits += res["ci_low"] <= 0.1 <= res["ci_high"]
    assert 0.89 <= hits / 300 <= 0.99
