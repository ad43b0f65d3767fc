"""Frechet distance between Gaussians fitted to feature sets (FID / FVD), in float64 via ``scipy.linalg.sqrtm``."""

from __future__ import annotations

import numpy as np
from scipy import linalg


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D), unbiased (/(N-1)), of features (N, D), in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features: expected (N, D), got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"features: {x.shape[0]} sample(s); a covariance needs at least 2")
    mu = x.mean(axis=0)
    sigma = np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)); retries with eps*I on both covariances if sqrtm is not finite."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shapes: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape} do not match"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise ValueError(f"frechet_distance: sqrt(S1 S2) is not finite even with {eps} * I added")
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > 1e-3:
            raise ValueError(
                f"frechet_distance: sqrt(S1 S2) has an imaginary diagonal component of {imag:.3g}"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance_from_features(f1, f2, min_samples: int = 2) -> float:
    """Frechet distance between feature sets f1 (N1, D) and f2 (N2, D)."""
    for name, f in (("f1", f1), ("f2", f2)):
        n = np.shape(f)[0] if np.ndim(f) >= 1 else 0
        if n < max(min_samples, 2):
            raise ValueError(
                f"{name}: {n} sample(s), need at least {max(min_samples, 2)} for a Frechet distance"
            )
    mu1, s1 = gaussian_stats(f1)
    mu2, s2 = gaussian_stats(f2)
    return frechet_distance(mu1, s1, mu2, s2)
