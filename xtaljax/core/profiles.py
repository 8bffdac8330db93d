"""Peak-profile functions (all angles in degrees 2θ unless stated).

* Thompson–Cox–Hastings (1987) pseudo-Voigt: from the Gaussian FWHM Γ_G and Lorentzian FWHM Γ_L,

      Γ = (Γ_G⁵ + 2.69269 Γ_G⁴Γ_L + 2.42843 Γ_G³Γ_L² + 4.47163 Γ_G²Γ_L³ + 0.07842 Γ_GΓ_L⁴ + Γ_L⁵)^(1/5)
      q = Γ_L / Γ,   η = 1.36603 q − 0.47719 q² + 0.11116 q³

  and pV(x) = η L(x; Γ) + (1 − η) G(x; Γ), each of unit area and FWHM Γ.
* Finger–Cox–Jephcoat (1994) axial-divergence asymmetry, by Gauss–Legendre quadrature of the
  FCJ weight function in the variable t = h/L, in which the 1/h singularity cancels:

      cos 2φ(t) = cos 2θ · √(1 + t²),   w(t) ∝ min(S/L + H/L − t, 2 min(S/L, H/L)) / ((1 + t²) |sin 2φ|)

  for 0 <= t <= min(S/L + H/L, |tan 2θ|); the profile is Σ_i w_i pV(x − (2φ(t_i) − 2θ)).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .numerics import safe_arccos, safe_div, safe_sqrt

LN2 = float(np.log(2.0))
RAD = float(180.0 / np.pi)
MIN_FWHM = 1e-5  # degrees; keeps every profile finite


def tch_fwhm_eta(fwhm_g, fwhm_l):
    """Thompson–Cox–Hastings total FWHM Γ and Lorentzian fraction η."""
    g, l = fwhm_g, fwhm_l
    total5 = (g**5 + 2.69269 * g**4 * l + 2.42843 * g**3 * l**2 + 4.47163 * g**2 * l**3
              + 0.07842 * g * l**4 + l**5)
    total = jnp.maximum(safe_mask_pow(total5, 0.2), MIN_FWHM)
    q = jnp.clip(l / total, 0.0, 1.0)
    eta = 1.36603 * q - 0.47719 * q**2 + 0.11116 * q**3
    return total, jnp.clip(eta, 0.0, 1.0)


def safe_mask_pow(x, p):
    ok = x > 0
    return jnp.where(ok, jnp.where(ok, x, 1.0) ** p, 0.0)


def gaussian(x, fwhm):
    """Unit-area Gaussian of FWHM ``fwhm``."""
    c = 4.0 * LN2
    return jnp.sqrt(c / jnp.pi) / fwhm * jnp.exp(-c * (x / fwhm) ** 2)


def lorentzian(x, fwhm):
    """Unit-area Lorentzian (Cauchy) of FWHM ``fwhm``."""
    return (2.0 / (jnp.pi * fwhm)) / (1.0 + 4.0 * (x / fwhm) ** 2)


def pseudo_voigt(x, fwhm, eta):
    """Unit-area pseudo-Voigt η L + (1 − η) G with common FWHM."""
    u = (x / fwhm) ** 2
    c = 4.0 * LN2
    lor = (2.0 / jnp.pi) / (1.0 + 4.0 * u)
    gau = np.sqrt(c / np.pi) * jnp.exp(-c * u)
    return (eta * lor + (1.0 - eta) * gau) / fwhm


def caglioti_sigma2(tan_t, cos_t, u, v, w, p):
    """GSAS Gaussian variance σ² = U tan²θ + V tanθ + W + P/cos²θ (deg²)."""
    return u * tan_t**2 + v * tan_t + w + p / cos_t**2


def gaussian_fwhm(sigma2):
    """FWHM_G = √(8 ln2 σ²); 0 where σ² <= 0."""
    return safe_sqrt(8.0 * LN2 * sigma2)


def fcj_nodes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes/weights on [0, 1] for each of the two FCJ segments (n total)."""
    half = max(n // 2, 1)
    x, w = np.polynomial.legendre.leggauss(half)
    return (x + 1) / 2, w / 2


def fcj_shifts_weights(two_theta_deg, sl, hl, n: int):
    """FCJ sub-peak shifts (degrees) and normalised weights.

    Args:
      two_theta_deg: ``(k,)`` peak positions (Bragg angles, degrees).
      sl, hl: scalars S/L and H/L.
      n: static number of quadrature points (split over [0, t_infl] and [t_infl, t_max]).

    Returns:
      ``(k, n)`` shifts and ``(k, n)`` weights summing to 1 over the last axis. With S/L = H/L = 0
      every shift is 0.
    """
    x01, w01 = fcj_nodes(n)
    x01 = jnp.asarray(x01, two_theta_deg.dtype)
    w01 = jnp.asarray(w01, two_theta_deg.dtype)
    tt = jnp.deg2rad(two_theta_deg)[:, None]
    c = jnp.cos(tt)
    t_max = sl + hl
    t_lim = jnp.abs(safe_div(jnp.sin(tt), c, 1e6))  # |tan 2θ|: beyond it 2φ would pass 0/180°
    t_up = jnp.minimum(t_max, t_lim)
    t_inf = jnp.minimum(jnp.abs(hl - sl), t_up)
    # segment 1: [0, t_inf]; segment 2: [t_inf, t_up]
    t1 = t_inf * x01[None, :]
    t2 = t_inf + (t_up - t_inf) * x01[None, :]
    t = jnp.concatenate([t1, t2], axis=1)
    jac = jnp.concatenate([t_inf * w01[None, :] * jnp.ones_like(t1), (t_up - t_inf) * w01[None, :] * jnp.ones_like(t2)], axis=1)
    cos2phi = c * jnp.sqrt(1.0 + t**2)
    two_phi = safe_arccos(cos2phi)
    sin2phi = jnp.abs(jnp.sin(two_phi))
    num = jnp.minimum(t_max - t, 2.0 * jnp.minimum(sl, hl))
    wt = jac * safe_div(num, (1.0 + t**2) * sin2phi)
    total = jnp.sum(wt, axis=1, keepdims=True)
    use = total > 0
    n_tot = t.shape[1]
    weights = jnp.where(use, safe_div(wt, jnp.where(use, total, 1.0)), 1.0 / n_tot)
    shifts = jnp.where(use, RAD * two_phi - RAD * tt, 0.0)
    return shifts, weights
