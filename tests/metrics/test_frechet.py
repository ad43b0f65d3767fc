"""Frechet distance against independent float64 references on Gaussians with known answers."""

import numpy as np
import pytest

from wan2.metrics import frechet
from wan2.metrics.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats


def _eig_reference(mu1, s1, mu2, s2) -> float:
    """Independent route (torchmetrics style): Tr sqrt(S1 S2) = sum sqrt(eig(S1 S2))."""
    eig = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_full_covariance_matches_eigen_route():
    rng = np.random.default_rng(1)
    mu1, mu2, s1, s2 = rng.normal(size=8), rng.normal(size=8), _spd(rng, 8), _spd(rng, 8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_eig_reference(mu1, s1, mu2, s2), rel=1e-8)


def test_gaussian_stats_float64_unbiased():
    x = np.random.default_rng(2).normal(size=(50, 5)).astype(np.float32)
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64 and sigma.shape == (5, 5)
    xc = x.astype(np.float64) - x.astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, xc.T @ xc / 49, rtol=1e-12)


def test_sampled_gaussians_approach_known_answer():
    rng = np.random.default_rng(3)
    a, b = np.array([1.0, 2.0, 0.5]), np.array([0.25, 2.0, 2.0])
    mu2 = np.array([1.0, 0.0, -1.0])
    f1 = rng.normal(size=(40000, 3)) * np.sqrt(a)
    f2 = mu2 + rng.normal(size=(40000, 3)) * np.sqrt(b)
    expected = (mu2**2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # 2 + 0.25 + 0 + 0.5 = 2.75
    assert frechet_distance_from_features(f1, f2) == pytest.approx(expected, abs=0.05)


def test_identical_sets_near_zero():
    f = np.random.default_rng(4).normal(size=(200, 16))
    assert abs(frechet_distance_from_features(f, f.copy())) < 1e-8


def test_singular_covariances_finite():
    # N = 5 samples in 32 dims: rank-deficient covariances, as FVD with few videos.
    rng = np.random.default_rng(5)
    f1, f2 = rng.normal(size=(5, 32)), rng.normal(size=(5, 32)) + 0.5
    d = frechet_distance_from_features(f1, f2)
    mu1, s1 = gaussian_stats(f1)
    mu2, s2 = gaussian_stats(f2)
    assert np.isfinite(d) and d == pytest.approx(_eig_reference(mu1, s1, mu2, s2), rel=1e-5)
    same = frechet_distance_from_features(f1, f1.copy())
    assert abs(same) < 1e-6 * np.trace(s1)


def test_eps_fallback_when_sqrtm_not_finite(monkeypatch):
    rng = np.random.default_rng(6)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = np.diag([1.0, 0.0, 2.0, 0.0]), np.diag([0.0, 0.0, 1.0, 3.0])  # singular
    real_sqrtm = frechet.linalg.sqrtm
    calls = []

    def flaky(m):
        calls.append(m.copy())
        return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(frechet.linalg, "sqrtm", flaky)
    d = frechet_distance(mu1, s1, mu2, s2, eps=1e-6)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s1 + 1e-6 * np.eye(4)) @ (s2 + 1e-6 * np.eye(4)))
    a, b = np.diag(s1), np.diag(s2)
    # traces of the original covariances, sqrt of the regularised product (clean-fid convention)
    exact = ((mu1 - mu2) ** 2).sum() + a.sum() + b.sum() - 2 * np.sqrt((a + 1e-6) * (b + 1e-6)).sum()
    assert d == pytest.approx(exact, rel=1e-9)
    assert d == pytest.approx(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), abs=1e-2)


def test_imaginary_component_raises(monkeypatch):
    monkeypatch.setattr(frechet.linalg, "sqrtm", lambda m: np.eye(len(m)) * (1 + 0.5j))
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3))


def test_too_few_samples():
    f = np.zeros((1, 8))
    with pytest.raises(ValueError, match="1 sample"):
        frechet_distance_from_features(f, np.zeros((10, 8)))
    with pytest.raises(ValueError, match="f2: 3 sample.*at least 4"):
        frechet_distance_from_features(np.zeros((10, 8)), np.zeros((3, 8)), min_samples=4)
