"""Differentiable similarity / loss metrics between powder patterns on a common 2θ grid.

Every function here takes **one** pattern pair ``(pred, target)`` of shape ``(N,)`` sampled on the
same 2θ grid (degrees) and is pure JAX: it works under ``jax.grad``, ``jax.jit`` and ``jax.vmap``
(batch with ``jax.vmap``). Masked ``sqrt``/``log``/division use the double-``where`` pattern, so
gradients stay finite also for all-zero stretches of a pattern.

Conventions
-----------
* ``loss(pred, target)`` is ``>= 0`` (soft-DTW: see below) and exactly ``0`` when
  ``pred == target``, also when ``pred`` is a positive multiple of ``target`` (every metric here is
  scale-free). Gradient descent minimises it.
* ``similarity(pred, target)`` is "higher = more similar"; it is the natural similarity where one
  exists (cosine, Pearson r, spectral-entropy similarity in [0, 1]) and ``-loss`` otherwise (MSE,
  Wasserstein-1, soft-DTW divergence). Rank statistics and mutual information are invariant to
  that choice of monotone map; Pearson correlation is not (documented in the report).

| name | loss | similarity | normalisation |
|---|---|---|---|
| ``cosine`` | 1 − cos(p, t) | cos(p, t) ∈ [0, 1] for non-negative patterns | none (scale-free) |
| ``pearson`` | 1 − r(p, t) | Pearson r ∈ [−1, 1] | none (scale/offset-free) |
| ``mse`` | mean((p/max p − t/max t)²) | −loss | each pattern divided by its maximum |
| ``entropy`` | JSD(p̂, t̂)/ln 2 ∈ [0, 1] | 1 − loss (spectral-entropy similarity) | p̂ = p/Σp (a distribution over the grid) |
| ``wasserstein`` | ∫ \\|CDF_p̂ − CDF_t̂\\| d2θ (degrees) | −loss | p̂ = p/Σp |
| ``softdtw`` | soft-DTW divergence (γ; 0 at identity, may dip slightly below 0) | −loss | max-normalised, block-averaged to ≤ ``dtw_points`` |

Spectral entropy (Li et al., Nat. Methods 18, 1524 (2021), as used for PXRD by Segal et al. 2026):
with H(x) = −Σ x log x the Shannon entropy of a normalised pattern, the similarity is
``1 − (2 H((p̂+t̂)/2) − H(p̂) − H(t̂)) / ln 4`` = 1 − JSD/ln 2 (the un-weighted form; Li et al.'s
low-entropy re-weighting of mass spectra is not applied).

Soft-DTW (Cuturi & Blondel, ICML 2017) with squared-difference cost between intensities,
soft-minimum ``−γ log Σ exp(−r/γ)``; the *divergence* ``D(x, y) = sdtw(x, y) − (sdtw(x, x) +
sdtw(y, y))/2`` (Blondel, Mensch & Vert, AISTATS 2021) is 0 at identity. Its non-negativity is
proven only under a kernel condition on the cost that the squared difference does not meet in
general: we measured D = −0.0065 for two 0.5°-smoothed two-peak patterns (250 points, γ = 0.1;
the value agrees with a plain NumPy recursion), so treat it as a loss to minimise, not as a
distance. The DP is an ``O(n m)`` scan over anti-diagonals, so patterns are block-averaged to at
most ``dtw_points`` points first (default 256).

Optional smoothing: ``broaden_fwhm`` (degrees) convolves both patterns with a unit-area Gaussian of
that FWHM before the metric (:func:`gaussian_broaden`), which widens the basin of attraction of
every metric (peaks overlap for larger lattice errors).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax.numpy as jnp
import numpy as np
from jax import lax

_TINY = 1e-30
LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------
# safe primitives (double-where)
# ----------------------------------------------------------------------------------------------

def _safe_div(a, b):
    ok = b > _TINY
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


def _safe_sqrt(x):
    ok = x > 0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, x, 1.0)), 0.0)


def _xlogx(x):
    ok = x > 0
    return jnp.where(ok, x * jnp.log(jnp.where(ok, x, 1.0)), 0.0)


def max_normalise(y):
    """``y / max(y)`` (0 for an all-zero pattern)."""
    return _safe_div(y, jnp.max(y))


def sum_normalise(y):
    """Non-negative part of ``y`` divided by its sum: a probability distribution over the grid."""
    y = jnp.maximum(y, 0.0)
    return _safe_div(y, jnp.sum(y))


def gaussian_kernel(step: float, fwhm: float) -> np.ndarray:
    """Unit-sum Gaussian of ``fwhm`` (degrees) sampled at ``step`` (degrees), ±4σ (host)."""
    sigma = fwhm / (2.0 * math.sqrt(2.0 * LN2)) / step
    half = max(1, int(math.ceil(4.0 * sigma)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_broaden(y, step: float, fwhm: float):
    """Convolve a pattern ``(N,)`` with a unit-area Gaussian of ``fwhm`` degrees on a uniform grid
    of ``step`` degrees (zero outside the grid). ``fwhm <= 0`` returns ``y`` unchanged."""
    if fwhm <= 0:
        return y
    k = jnp.asarray(gaussian_kernel(step, fwhm), y.dtype)
    if k.shape[0] > 2 * y.shape[-1]:
        raise ValueError(f"broadening FWHM {fwhm} deg is far wider than the 2theta range")
    # the same as jnp.convolve(y, k, mode="same"), written as a sum of shifted copies: XLA's CPU
    # convolution kernel segfaulted intermittently in float64 inside the vmapped Adam scan
    # (jaxlib 0.10.2; seen in recover() and solve() with broadening on)
    m, n, h = k.shape[0], y.shape[-1], k.shape[0] // 2
    ypad = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(h, h)])
    return sum(k[j] * ypad[..., 2 * h - j: 2 * h - j + n] for j in range(m))


# ----------------------------------------------------------------------------------------------
# the metrics (one pattern pair each)
# ----------------------------------------------------------------------------------------------

def cosine_similarity(p, t):
    """cos of the angle between the two intensity vectors."""
    return _safe_div(jnp.sum(p * t), _safe_sqrt(jnp.sum(p * p)) * _safe_sqrt(jnp.sum(t * t)))


def pearson_r(p, t):
    """Pearson correlation coefficient of the intensities over the grid."""
    return cosine_similarity(p - jnp.mean(p), t - jnp.mean(t))


def mse_loss(p, t):
    """Mean squared difference of the max-normalised patterns."""
    return jnp.mean((max_normalise(p) - max_normalise(t)) ** 2)


def entropy(p):
    """Shannon entropy (nats) of a normalised pattern ``p`` (Σp = 1)."""
    return -jnp.sum(_xlogx(p))


def spectral_entropy_similarity(p, t):
    """1 − JSD(p̂, t̂)/ln 2 with p̂, t̂ the sum-normalised patterns (Li et al. 2021 without the
    low-entropy weighting); 1 at identity, 0 for disjoint supports."""
    return 1.0 - jensen_shannon(p, t) / LN2


def jensen_shannon(p, t):
    """Jensen–Shannon divergence (nats) between the sum-normalised patterns, clipped at 0 against
    rounding."""
    ph, th = sum_normalise(p), sum_normalise(t)
    jsd = entropy(0.5 * (ph + th)) - 0.5 * (entropy(ph) + entropy(th))
    return jnp.maximum(jsd, 0.0)


def wasserstein1(p, t, two_theta):
    """Earth mover's distance (degrees 2θ) between the sum-normalised patterns:
    Σ_i |F_p(i) − F_t(i)| (2θ_{i+1} − 2θ_i), F the cumulative sums (the 1-D W1 = L1 of CDFs)."""
    d = jnp.cumsum(sum_normalise(p) - sum_normalise(t))[:-1]
    dx = jnp.diff(jnp.asarray(two_theta, d.dtype))
    return jnp.sum(jnp.abs(d) * dx)


def block_average(y, factor: int):
    """Average consecutive blocks of ``factor`` points (the tail is zero-padded)."""
    if factor <= 1:
        return y
    n = y.shape[-1]
    m = -(-n // factor)
    y = jnp.pad(y, (0, m * factor - n))
    return jnp.mean(y.reshape(m, factor), axis=-1)


def _softmin3(a, b, c, gamma):
    z = jnp.stack([a, b, c]) / (-gamma)
    zmax = lax.stop_gradient(jnp.max(z, axis=0, keepdims=True))
    return -gamma * (jnp.log(jnp.sum(jnp.exp(z - zmax), axis=0)) + zmax[0])


def soft_dtw(x, y, gamma: float = 0.1):
    """Soft-DTW value between 1-D series ``x (n,)`` and ``y (m,)`` with cost (x_i − y_j)².

    Dynamic programme over the anti-diagonals i + j = k (a ``lax.scan`` of n + m − 1 steps, each a
    vector operation over i), so it jits, differentiates and vmaps. Unreachable cells hold a
    large finite number instead of +∞ (keeps gradients finite).
    """
    n, m = x.shape[0], y.shape[0]
    big = jnp.asarray(1e10, x.dtype)
    cost = (x[:, None] - y[None, :]) ** 2  # (n, m)
    i = jnp.arange(n + 1)
    d0 = jnp.where(i == 0, 0.0, big).astype(x.dtype)  # R[i, 0 - i]: only R[0, 0] = 0
    d1 = jnp.full((n + 1,), big, x.dtype)  # R[0, 1], R[1, 0]

    def step(carry, k):
        dm2, dm1 = carry  # diagonals k-2 and k-1, indexed by i
        j = k - i
        valid = (i >= 1) & (j >= 1) & (j <= m)
        c = cost[jnp.clip(i - 1, 0, n - 1), jnp.clip(j - 1, 0, m - 1)]
        diag = jnp.concatenate([big[None], dm2[:-1]])   # R[i-1, j-1]
        up = jnp.concatenate([big[None], dm1[:-1]])     # R[i-1, j]
        left = dm1                                      # R[i, j-1]
        val = c + _softmin3(diag, up, left, gamma)
        new = jnp.where(valid, val, big)
        return (dm1, new), None

    (_, last), _ = lax.scan(step, (d0, d1), jnp.arange(2, n + m + 1))
    return last[n]


def soft_dtw_divergence(x, y, gamma: float = 0.1):
    """sdtw(x, y) − (sdtw(x, x) + sdtw(y, y))/2 (Blondel et al. 2021): 0 at identity; can be
    slightly negative for long, mostly flat series (see the module docstring)."""
    return soft_dtw(x, y, gamma) - 0.5 * (soft_dtw(x, x, gamma) + soft_dtw(y, y, gamma))


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------

METRICS = ("cosine", "pearson", "mse", "entropy", "wasserstein", "softdtw")


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric bound to a 2θ grid and its options. ``loss``/``similarity`` take ``(pred, target)``
    patterns ``(N,)`` on that grid and return scalars (pure JAX)."""

    name: str
    loss: Callable
    similarity: Callable
    options: dict


def get_metric(name: str, two_theta, *, broaden_fwhm: float = 0.0, gamma: float = 0.1,
               dtw_points: int = 256) -> Metric:
    """The metric ``name`` (one of :data:`METRICS`) on the grid ``two_theta`` (degrees).

    ``broaden_fwhm`` (degrees, needs a uniform grid): Gaussian smoothing of both patterns first.
    ``gamma``, ``dtw_points``: soft-DTW temperature and the most points the DP runs on.
    """
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    tt = np.asarray(two_theta, np.float64).reshape(-1)
    if tt.size < 2 or not np.all(np.diff(tt) > 0):
        raise ValueError("two_theta must be an increasing grid of at least 2 points")
    if broaden_fwhm < 0:
        raise ValueError(f"broaden_fwhm must be >= 0, got {broaden_fwhm}")
    if gamma <= 0:
        raise ValueError(f"soft-DTW gamma must be > 0, got {gamma}")
    step = float(np.median(np.diff(tt)))
    if broaden_fwhm > 0 and np.ptp(np.diff(tt)) > 1e-6 * step:
        raise ValueError("broaden_fwhm needs a uniform 2theta grid")
    pre = (lambda y: gaussian_broaden(y, step, broaden_fwhm)) if broaden_fwhm > 0 else (lambda y: y)
    factor = max(1, -(-tt.size // int(dtw_points)))

    if name == "cosine":
        sim = lambda p, t: cosine_similarity(pre(p), pre(t))  # noqa: E731
        loss = lambda p, t: 1.0 - sim(p, t)  # noqa: E731
    elif name == "pearson":
        sim = lambda p, t: pearson_r(pre(p), pre(t))  # noqa: E731
        loss = lambda p, t: 1.0 - sim(p, t)  # noqa: E731
    elif name == "mse":
        loss = lambda p, t: mse_loss(pre(p), pre(t))  # noqa: E731
        sim = lambda p, t: -loss(p, t)  # noqa: E731
    elif name == "entropy":
        loss = lambda p, t: jensen_shannon(pre(p), pre(t)) / LN2  # noqa: E731
        sim = lambda p, t: 1.0 - loss(p, t)  # noqa: E731
    elif name == "wasserstein":
        loss = lambda p, t: wasserstein1(pre(p), pre(t), tt)  # noqa: E731
        sim = lambda p, t: -loss(p, t)  # noqa: E731
    else:
        def loss(p, t):
            a = block_average(max_normalise(pre(p)), factor)
            b = block_average(max_normalise(pre(t)), factor)
            return soft_dtw_divergence(a, b, gamma)

        sim = lambda p, t: -loss(p, t)  # noqa: E731
    opts = {"broaden_fwhm": float(broaden_fwhm)}
    if name == "softdtw":
        opts.update(gamma=float(gamma), dtw_points=int(dtw_points), block=int(factor))
    return Metric(name=name, loss=loss, similarity=sim, options=opts)


def similarity_from_loss(name: str, loss):
    """The ``similarity`` of metric ``name`` from its ``loss`` (every similarity here is
    ``1 − loss`` or ``−loss``)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return 1.0 - loss if name in ("cosine", "pearson", "entropy") else -loss
