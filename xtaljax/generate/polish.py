"""Batched gradient polishing and pattern ranking of generated candidates.

Every candidate (target × sample) is one lane of ONE jitted ``lax.scan`` of Adam steps on its
fractional coordinates (P1, the candidate's own cell held fixed) that minimises
1 − cos(simulated, observed) + a soft penalty on contacts shorter than :data:`MIN_DIST` through
the differentiable simulator: first with both patterns
broadened by a Gaussian (``broad_fwhm``; wide basins), then at the pattern's own resolution.
Each lane keeps its best iterate, and never ends worse than it started. The final unbroadened loss ranks the k candidates of a target,
so the pipeline's single answer is the best-scoring candidate: this is the fast, all-candidates
counterpart of the Rietveld refinement in :mod:`.rank` (which then refines the best few with
symmetry constraints).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..core import SimConfig
from ..core.pattern import resolve_config
from ..core.reflections import g_max_for, make_reflections, stack_reflections
from ..landscape.metrics import gaussian_broaden
from .data import pattern_mismatch
from .flow import wrap

LN2 = math.log(2.0)
#: Interatomic distance (Å) below which the polish loss adds a quadratic penalty.
MIN_DIST = 1.0


@dataclasses.dataclass(frozen=True)
class Polish:
    """Settings: Adam ``lr`` (fractional units), ``broad_steps`` at ``broad_fwhm`` degrees, then
    ``fine_steps`` unbroadened."""

    broad_steps: int = 30
    fine_steps: int = 30
    lr: float = 0.002
    broad_fwhm: float = 0.5


def _loss(x, lat, sp, m, yo, rf, ins, tt, cfg, min_dist: float = MIN_DIST):
    """:func:`.data.pattern_mismatch` + a soft contact penalty (minimum image): the pattern barely
    sees light atoms, so without it the fit can park them on top of others."""
    d = wrap(x[None, :, :] - x[:, None, :]) @ lat
    pair = m[:, None] * m[None, :] * (1.0 - jnp.eye(x.shape[0], dtype=x.dtype))
    r = jnp.sqrt(jnp.where(pair > 0, (d * d).sum(-1), 1.0) + 1e-12)
    clash = (pair * jnp.maximum(min_dist - r, 0.0) ** 2).sum() / 2.0
    return pattern_mismatch(x, lat, sp, m, yo, rf, ins, tt, cfg) + clash


@partial(jax.jit, static_argnames=("cfg_b", "cfg_f", "steps_b", "steps_f", "lr"))
def _run(x0, lat, sp, m, yo_b, yo_f, refl, ins_b, ins_f, tt, cfg_b, cfg_f, steps_b, steps_f, lr):
    tx = optax.adam(lr)

    def lane(x, lt, s, mm, yb, yf, rf):
        def stage(x, ins, cfg, yo, n):
            vg = jax.value_and_grad(_loss)

            def step(carry, _):
                x, o, best, bx = carry
                v, g = vg(x, lt, s, mm, yo, rf, ins, tt, cfg)
                better = v < best
                best = jnp.where(better, v, best)
                bx = jnp.where(better, x, bx)
                u, o = tx.update(g * mm[:, None], o, x)
                return (jnp.mod(optax.apply_updates(x, u), 1.0), o, best, bx), None

            (x, _, best, bx), _ = jax.lax.scan(step, (x, tx.init(x), jnp.inf, x), None, length=n)
            v = _loss(x, lt, s, mm, yo, rf, ins, tt, cfg)
            return jnp.where(v < best, x, bx)

        v0 = _loss(x, lt, s, mm, yf, rf, ins_f, tt, cfg_f)
        x1 = stage(x, ins_b, cfg_b, yb, steps_b) if steps_b else x
        x1 = stage(x1, ins_f, cfg_f, yf, steps_f) if steps_f else x1
        v1 = _loss(x1, lt, s, mm, yf, rf, ins_f, tt, cfg_f)
        keep = v1 <= v0  # never return a candidate worse than it came
        return jnp.where(keep, x1, x), jnp.where(keep, v1, v0)

    return jax.vmap(lane)(x0, lat, sp, m, yo_b, yo_f, refl)


def polish(cand, patterns, meta, *, settings: Polish = Polish(), batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Polish every candidate of a :class:`.api.Candidates` against its target's observed
    pattern (``patterns`` (T, n_points) on the model grid). Returns ``(frac (T, k, N, 3),
    loss (T, k))``; candidates whose cell is not valid get loss +inf and are left as they are."""
    from .api import _pad, standard_instrument
    from .data import params_to_matrix, scatterer_indices

    t_n, k, n, _ = cand.frac.shape
    ins = standard_instrument(meta)
    tt = meta.grid.two_theta
    step = float(tt[1] - tt[0])
    extra = settings.broad_fwhm ** 2 / (8 * LN2)
    ins_b = ins.replace(w=float(np.asarray(ins.w)) + extra)
    cfg_f = resolve_config(SimConfig(asymmetry="none"), ins, tt)
    cfg_b = resolve_config(SimConfig(asymmetry="none"), ins_b, tt)
    g = g_max_for(tt[-1] + 1.0, float(np.min(np.asarray(ins.wavelengths))))
    y_f = np.asarray(patterns, np.float64)
    y_b = np.asarray(gaussian_broaden(jnp.asarray(y_f), step, settings.broad_fwhm))
    species = scatterer_indices(cand.z)
    rows = [(t, j) for t in range(t_n) for j in range(k)]
    params = cand.params.reshape(-1, 6)
    ok = np.all(np.isfinite(params), axis=1) & np.all(params[:, :3] > 0.5, axis=1) & \
        np.all((params[:, 3:] > 20) & (params[:, 3:] < 160), axis=1)
    lat = np.asarray(params_to_matrix(jnp.asarray(np.where(ok[:, None], params, [4, 4, 4, 90, 90, 90]), jnp.float32)))
    vol = np.abs(np.linalg.det(lat))
    ok &= vol > 1.0
    refls = [make_reflections(lat[i] if ok[i] else np.eye(3) * 4, g, margin=0.02) for i in range(len(rows))]
    cap = max(r.capacity for r in refls)
    frac = cand.frac.reshape(-1, n, 3).copy()
    loss = np.full(len(rows), np.inf)
    dt = jnp.float32
    tt_j = jnp.asarray(tt, dt)
    for s in range(0, len(rows), batch):
        idx = np.arange(s, min(s + batch, len(rows)))
        pad = _pad(idx, batch) if len(rows) > batch else idx  # one compiled shape across chunks
        tgt = np.array([rows[i][0] for i in pad])
        rf = stack_reflections([refls[i] for i in pad], cap)
        x, v = _run(jnp.asarray(frac[pad], dt), jnp.asarray(lat[pad], dt), jnp.asarray(species[tgt]),
                    jnp.asarray(cand.mask[tgt], dt), jnp.asarray(y_b[tgt], dt), jnp.asarray(y_f[tgt], dt), rf,
                    ins_b, ins, tt_j, cfg_b, cfg_f, settings.broad_steps, settings.fine_steps, settings.lr)
        x, v = np.asarray(x)[:len(idx)], np.asarray(v)[:len(idx)]
        good = ok[idx]
        frac[idx[good]] = x[good]
        loss[idx[good]] = v[good]
    return frac.reshape(t_n, k, n, 3), loss.reshape(t_n, k)



def reorder(cand, order):
    """Candidates with the samples of each target permuted by ``order`` (T, k) (e.g. ranked)."""
    order = np.asarray(order)
    take = lambda a: np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)  # noqa: E731
    return dataclasses.replace(cand, frac=take(cand.frac), params=take(cand.params))
