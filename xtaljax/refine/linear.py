"""Exact weighted linear least squares for the parameters a pattern is linear in."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from ..core.crystal import Crystal
from ..core.instrument import Instrument
from ..core.pattern import chebyshev_background, simulate
from ..metrics import agreement


def fit_scale_background(crystals: Crystal | list[Crystal], instrument: Instrument, two_theta, y_obs, sigma=None,
                         *, n_background: int = 6) -> dict:
    """Fit one scale per phase and ``n_background`` Chebyshev coefficients, everything else fixed.

    The pattern is linear in these parameters (y = Σ_p s_p P_p(2θ) + Σ_k c_k T_k(x)), so the
    weighted least-squares solution (w = 1/σ²) is found exactly, in one solve, in float64.
    Returns a dict with ``instrument`` (scale of the first phase folded in, background set),
    ``phase_scales``, ``y_calc``, the agreement factors (:func:`xtaljax.metrics.agreement`) and
    ``esd`` of the linear parameters.
    """
    crystals = [crystals] if isinstance(crystals, Crystal) else list(crystals)
    tt = np.asarray(two_theta, np.float64)
    yo = np.asarray(y_obs, np.float64)
    if yo.shape != tt.shape:
        raise ValueError("observed intensities and 2θ grid differ in length")
    if not np.all(np.isfinite(yo)):
        raise ValueError("observed pattern contains NaN or infinite values")
    if n_background < 1:
        raise ValueError("n_background must be >= 1")
    sig = np.sqrt(np.maximum(yo, 1.0)) if sigma is None else np.asarray(sigma, np.float64)
    w = np.where(sig > 0, 1.0 / np.maximum(sig, 1e-300) ** 2, 0.0)
    unit = dataclasses.replace(instrument, scale=jnp.ones_like(instrument.scale),
                               background=jnp.zeros(1, instrument.background.dtype))
    cols = [np.asarray(simulate(c, unit, tt), np.float64) for c in crystals]
    eye = np.eye(n_background)
    cols += [np.asarray(chebyshev_background(jnp.asarray(tt), jnp.asarray(eye[k])), np.float64) for k in range(n_background)]
    a = np.stack(cols, axis=1)
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(a * sw[:, None], yo * sw, rcond=None)
    yc = a @ coef
    n_p = len(crystals)
    stats = agreement(yo, yc, sig, a.shape[1])
    normal = (a * w[:, None]).T @ a
    esd = np.sqrt(np.clip(np.diag(np.linalg.pinv(normal)), 0, None) * stats["reduced_chi2"])
    inst = instrument.replace(scale=coef[0], background=coef[n_p:])
    return {"instrument": inst, "phase_scales": coef[:n_p] / coef[0] if coef[0] != 0 else coef[:n_p],
            "scales": coef[:n_p], "background": coef[n_p:], "y_calc": yc, "esd": esd, **stats}
