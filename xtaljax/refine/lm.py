"""Levenberg–Marquardt on JAX Jacobians, pure and vmappable.

The problem is ``min_z ½|r(z)|²`` with ``r = (y_calc(z) − y_obs)·√w`` (so ``|r|² = χ²``) over the
entries of ``z`` switched on by ``active`` (a 0/1 vector: inactive entries keep their value and
get no column), inside box bounds ``lo <= z <= hi``.

One cycle (:func:`lm_cycle`):

1. ``r`` and ``J = ∂r/∂z`` by forward mode (``jax.jacfwd``: the number of parameters is small
   and the number of points large, so forward mode is the right one);
2. the normal matrix ``A = JᵀJ`` and gradient ``g = Jᵀr`` are scaled to unit diagonal
   (``D = diag(A)^½``, ``Â = D⁻¹AD⁻¹``) — Marquardt's scaling, which makes λ dimensionless;
3. ``(Â + λI) δ̂ = −ĝ`` is solved through the eigen-decomposition of ``Â``, dropping the
   directions with eigenvalue below ``rcond·max`` (a parameter, or a combination of them, that
   the data do not determine: the solve stays finite and the host reports which);
4. the step is clipped into the bounds and accepted if χ² does not increase; otherwise λ is
   raised ×10 and the solve repeated without recomputing ``J`` (at most ``max_tries`` times).
   On acceptance λ is lowered ×10. A NaN χ² is a rejection: the last good ``z`` is kept.

Covariance (:func:`covariance`): ``C = A⁺ · χ²/(N − P)`` (GSAS-II: the inverse normal matrix
scaled by GOF²), esd = √diag C, correlation = C / √(diag C diag Cᵀ).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

RCOND = 1e-10


class LMState(NamedTuple):
    z: jax.Array  # parameters
    lam: jax.Array  # Marquardt λ
    chi2: jax.Array  # χ² at z
    cycle: jax.Array  # cycles done
    rel_change: jax.Array  # relative χ² decrease in the last cycle
    accepted: jax.Array  # last cycle found a step that did not increase χ²
    n_singular: jax.Array  # dropped eigen-directions in the last solve
    aux: object  # the residual's auxiliary output at z (zeros before the first cycle)
    normal: jax.Array  # JᵀJ at the start of the last cycle (for esd's after convergence)


def _scaled_normal(jac, r, active):
    a = jac.T @ jac
    g = jac.T @ r
    d = jnp.diag(a)
    live = (active > 0) & (d > 0)
    s = jnp.where(live, jnp.sqrt(jnp.where(live, d, 1.0)), 1.0)
    a_s = a / (s[:, None] * s[None, :])
    a_s = jnp.where(live[:, None] & live[None, :], a_s, jnp.eye(a.shape[0], dtype=a.dtype) * (~live)[:, None])
    g_s = jnp.where(live, g / s, 0.0)
    return a_s, g_s, s, live


def _solve(a_s, g_s, live, lam, rcond):
    ev, vec = jnp.linalg.eigh(a_s)
    top = jnp.max(ev)
    keep = ev > rcond * top
    inv = jnp.where(keep, 1.0 / (jnp.where(keep, ev, 1.0) + lam), 0.0)
    step = -(vec * inv[None, :]) @ (vec.T @ g_s)
    n_sing = jnp.sum(~keep).astype(jnp.int32)  # dropped directions (padding rows have eigenvalue 1: never dropped)
    return jnp.where(live, step, 0.0), n_sing


def lm_cycle(residual: Callable, state: LMState, active, lo, hi, *, rcond: float = RCOND, max_tries: int = 8,
             lam_min: float = 1e-6, lam_max: float = 1e8) -> LMState:
    """One Levenberg–Marquardt cycle. ``residual(z) -> (r, aux)`` (``aux``: any pytree the
    caller wants at the accepted point, e.g. an overflow flag and the calculated pattern).
    Pure: jit it, vmap it over problems. The residual is traced twice (in the Jacobian and in
    the trial step), which keeps the compiled program small."""
    active = jnp.asarray(active, state.z.dtype)
    def with_aux(z):
        r, aux = residual(z)
        return r, (r, aux)

    jac, (r, aux0) = jax.jacfwd(with_aux, has_aux=True)(state.z)
    jac = jac * active[None, :]
    a_s, g_s, s, live = _scaled_normal(jac, r, active)
    chi2 = jnp.sum(r * r)

    def not_done(carry):
        return (~carry[3]) & (carry[6] < max_tries)

    def body(carry):
        lam, _, _, _, _, _, tries = carry
        lam = jnp.where(tries > 0, jnp.minimum(lam * 10.0, lam_max), lam)  # raised after a rejection
        step_s, n_sing = _solve(a_s, g_s, live, lam, rcond)
        z_new = jnp.clip(state.z + step_s / s, lo, hi)
        z_new = jnp.where(active > 0, z_new, state.z)
        r_new, aux_new = residual(z_new)
        chi2_new = jnp.sum(r_new * r_new)
        ok = jnp.isfinite(chi2_new) & (chi2_new <= chi2)
        return lam, z_new, chi2_new, ok, aux_new, n_sing, tries + jnp.int32(1)

    carry0 = (state.lam, state.z, chi2, jnp.array(False), aux0, jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32))
    lam, z_new, chi2_new, ok, aux_new, n_sing, _ = lax.while_loop(not_done, body, carry0)
    rel = jnp.where(ok, (chi2 - chi2_new) / jnp.maximum(chi2, 1e-300), 0.0)
    pick = lambda a, b: jnp.where(ok, a, b)  # noqa: E731
    return _typed(LMState(z=pick(z_new, state.z), lam=pick(jnp.maximum(lam / 10.0, lam_min), lam),
                          chi2=pick(chi2_new, chi2), cycle=state.cycle + 1, rel_change=rel, accepted=ok,
                          n_singular=n_sing, aux=jax.tree_util.tree_map(pick, aux_new, aux0),
                          normal=jac.T @ jac))


def lm_init(residual: Callable, z0, lam0: float = 1e-3) -> LMState:
    """Starting state; nothing is evaluated (χ² = ∞ until the first cycle, ``aux`` zeros)."""
    z0 = jnp.asarray(z0)
    aux = jax.tree_util.tree_map(lambda sd: jnp.zeros(sd.shape, sd.dtype), jax.eval_shape(residual, z0)[1])
    return _typed(LMState(z=z0, lam=lam0, chi2=jnp.inf, cycle=0, rel_change=jnp.inf, accepted=True,
                          n_singular=0, aux=aux, normal=jnp.zeros((z0.shape[0],) * 2, z0.dtype)))


def _typed(st: LMState) -> LMState:
    """Strong, fixed dtypes (weakly typed scalars would retrace a jitted cycle)."""
    f = st.z.dtype
    return LMState(z=st.z, lam=jnp.asarray(st.lam, f), chi2=jnp.asarray(st.chi2, f),
                   cycle=jnp.asarray(st.cycle, jnp.int32), rel_change=jnp.asarray(st.rel_change, f),
                   accepted=jnp.asarray(st.accepted, jnp.bool_), n_singular=jnp.asarray(st.n_singular, jnp.int32),
                   aux=jax.tree_util.tree_map(lambda a: jnp.asarray(a, a.dtype), st.aux),
                   normal=jnp.asarray(st.normal, f))


def lm_run(residual: Callable, z0, active, lo, hi, *, max_cycles: int = 30, tol: float = 1e-5,
           lam0: float = 1e-3, rcond: float = RCOND) -> LMState:
    """Cycles until the relative χ² decrease of an accepted step falls below ``tol``, no step is
    accepted, or ``max_cycles``. Pure (a ``lax.while_loop``): vmap it to refine many patterns at
    once."""
    def cond(st):
        return (st.cycle < max_cycles) & st.accepted & (st.rel_change > tol)

    return lax.while_loop(cond, lambda st: lm_cycle(residual, st, active, lo, hi, rcond=rcond),
                          lm_init(residual, z0, lam0))


def normal_matrix(residual: Callable, z, active):
    """``(A, r)``: normal matrix JᵀJ over the active parameters (zero rows/columns elsewhere)
    and the residual vector at ``z``."""
    active = jnp.asarray(active, jnp.asarray(z).dtype)
    jac, r = jax.jacfwd(lambda q: (residual(q)[0],) * 2, has_aux=True)(z)
    jac = jac * active[None, :]
    return jac.T @ jac, r


def covariance(a, chi2, n_obs: int, active, rcond: float = RCOND):
    """Covariance ``A⁺·χ²/(N − P)`` of the active parameters (scaled pseudo-inverse), esd's and
    the correlation matrix. Returns ``(cov, esd, corr, singular)`` where ``singular`` lists the
    indices of parameters that take part in an undetermined direction."""
    import numpy as np

    a = np.asarray(a, np.float64)
    act = np.asarray(active) > 0
    d = np.diag(a)
    live = act & (d > 0)
    s = np.where(live, np.sqrt(np.where(live, d, 1.0)), 1.0)
    a_s = a / np.outer(s, s)
    idx = np.flatnonzero(live)
    sub = a_s[np.ix_(idx, idx)]
    ev, vec = np.linalg.eigh(sub) if len(idx) else (np.zeros(0), np.zeros((0, 0)))
    keep = ev > rcond * (ev.max() if ev.size else 1.0)
    inv = (vec[:, keep] / ev[keep]) @ vec[:, keep].T
    singular = set()
    for j in np.flatnonzero(~keep):
        singular.update(int(idx[i]) for i in np.flatnonzero(np.abs(vec[:, j]) > 0.2))
    singular.update(int(i) for i in np.flatnonzero(act & (d <= 0)))
    p = int(act.sum())
    gof2 = float(chi2) / max(n_obs - p, 1)
    cov = np.zeros_like(a)
    cov[np.ix_(idx, idx)] = inv / np.outer(s[idx], s[idx]) * gof2
    esd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(esd, esd)
    corr[~np.isfinite(corr)] = 0.0
    return cov, esd, corr, sorted(singular)
