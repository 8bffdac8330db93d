"""Agreement factors, each with its definition named (all in percent).

* ``rwp`` — GSAS-II wR: 100·√(Σ w (yo − yc)² / Σ w yo²), w = 1/σ².
* ``rp`` — GSAS-II Rp: 100·Σ|yo − yc| / Σ yo.
* ``r_expected`` — 100·√((N − P) / Σ w yo²).
* ``chi2`` — Σ w (yo − yc)²;  ``reduced_chi2`` = χ²/(N − P);  ``gof`` — GSAS-II GOF = √(χ²/(N − P)).
* ``rwp_wpem`` — PyWPEM's variant: weights 1/max(yo, 1) instead of 1/σ².
"""

from __future__ import annotations

import numpy as np


def _arrays(yo, yc, sigma=None):
    yo = np.asarray(yo, np.float64)
    yc = np.asarray(yc, np.float64)
    if yo.shape != yc.shape or yo.size == 0:
        raise ValueError("observed and calculated patterns must be non-empty and of equal length")
    w = 1.0 / np.maximum(yo, 1.0) if sigma is None else np.where(np.asarray(sigma) > 0, 1.0 / np.asarray(sigma, np.float64) ** 2, 0.0)
    return yo, yc, w


def rwp(yo, yc, sigma=None) -> float:
    yo, yc, w = _arrays(yo, yc, sigma)
    return float(100 * np.sqrt(np.sum(w * (yo - yc) ** 2) / np.sum(w * yo**2)))


def rp(yo, yc) -> float:
    yo, yc, _ = _arrays(yo, yc)
    return float(100 * np.sum(np.abs(yo - yc)) / np.sum(np.abs(yo)))


def rwp_wpem(yo, yc) -> float:
    return rwp(yo, yc, sigma=None)


def chi2(yo, yc, sigma) -> float:
    yo, yc, w = _arrays(yo, yc, sigma)
    return float(np.sum(w * (yo - yc) ** 2))


def agreement(yo, yc, sigma, n_params: int) -> dict:
    """All named factors in one dict (``rwp`` = GSAS-II wR)."""
    yo_, yc_, w = _arrays(yo, yc, sigma)
    n = yo_.size
    c2 = float(np.sum(w * (yo_ - yc_) ** 2))
    dof = max(n - n_params, 1)
    return {"rwp": rwp(yo, yc, sigma), "rp": rp(yo, yc), "r_expected": float(100 * np.sqrt(dof / np.sum(w * yo_**2))),
            "chi2": c2, "reduced_chi2": c2 / dof, "gof": float(np.sqrt(c2 / dof)), "rwp_wpem": rwp_wpem(yo, yc), "n_obs": int(n), "n_params": int(n_params),
            "definitions": {"rwp": "GSAS-II wR, w=1/sigma^2", "rp": "GSAS-II Rp", "gof": "GSAS-II GOF = sqrt(chi2/(N-P))",
                            "rwp_wpem": "PyWPEM, w=1/max(yo,1)"}}
