"""Batched gradient polishing and pattern ranking of generated candidates.

Every candidate (target × sample) is one lane of ONE jitted ``lax.scan`` of Adam steps on its
fractional coordinates (P1) and a symmetric strain of its cell (``refine_lattice``) that
minimises 1 − cos(simulated, observed) + a soft penalty on contacts shorter than
:data:`MIN_DIST` through the differentiable simulator: first with both patterns broadened by a
Gaussian (``broad_fwhm``; wide basins), then at the pattern's own resolution. A decoration
search (``swap_rounds``) tries every exchange of two atoms of different elements, on the start
and after the polish: the generator's commonest top-1 failure is the right framework with the
wrong elements on some sites. Each lane keeps its best iterate, and never ends worse than it
started. The final unbroadened loss ranks the k candidates of a target, so the pipeline's single
answer is the best-scoring candidate: this is the fast, all-candidates counterpart of the
Rietveld refinement in :mod:`.rank` (which then refines the best few with symmetry constraints).
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
from ..core.lattice import lattice_parameters
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
    #: Rounds of the decoration search (0 = off): every lane tries every exchange of two atoms
    #: of different elements and proposes the one with the lowest unbroadened loss (or none).
    #: Once on the start (the proposal is polished too, and the better of the two polished
    #: lanes kept), then ``swap_rounds`` times after the polish (the proposal gets
    #: ``fine_steps`` more steps and is kept if it ends lower).
    swap_rounds: int = 2
    #: Refine a symmetric strain of each candidate's cell along with the coordinates (in the
    #: full-resolution stage only).
    refine_lattice: bool = True

    def __post_init__(self):
        if min(self.broad_steps, self.fine_steps, self.swap_rounds) < 0 or not self.lr > 0 or not self.broad_fwhm > 0:
            raise ValueError("polish settings: --polish-steps/steps and --swap-rounds must be >= 0, lr and broad_fwhm > 0 "
                             f"(got {self.broad_steps}/{self.fine_steps} steps, {self.swap_rounds} rounds, lr {self.lr}, "
                             f"broad_fwhm {self.broad_fwhm})")


def _loss(x, lat, sp, m, yo, rf, ins, tt, cfg, min_dist: float = MIN_DIST):
    """:func:`.data.pattern_mismatch` + a soft contact penalty (minimum image): the pattern barely
    sees light atoms, so without it the fit can park them on top of others."""
    d = wrap(x[None, :, :] - x[:, None, :]) @ lat
    pair = m[:, None] * m[None, :] * (1.0 - jnp.eye(x.shape[0], dtype=x.dtype))
    r = jnp.sqrt(jnp.where(pair > 0, (d * d).sum(-1), 1.0) + 1e-12)
    clash = (pair * jnp.maximum(min_dist - r, 0.0) ** 2).sum() / 2.0
    return pattern_mismatch(x, lat, sp, m, yo, rf, ins, tt, cfg) + clash


def strained(lat, e):
    """Lattice rows ``lat`` (3, 3) under the symmetric strain ``STRAIN_SCALE * e`` (Voigt order
    xx, yy, zz, yz, xz, xy): rows ``a_i (1 + ε)``, no rotation."""
    e = STRAIN_SCALE * e
    eps = jnp.array([[e[0], e[5], e[4]], [e[5], e[1], e[3]], [e[4], e[3], e[2]]])
    return lat @ (jnp.eye(3, dtype=lat.dtype) + eps)


#: Strain per unit of the polish variable: Adam's step ``lr`` in fractional coordinates is
#: ``lr * STRAIN_SCALE`` in strain (0.002 -> 2e-4, ~0.001 Å on a 4 Å cell).
STRAIN_SCALE = 0.1


@partial(jax.jit, static_argnames=("cfg_b", "cfg_f", "steps_b", "steps_f", "lr", "cell"))
def _run(x0, lat, sp, m, yo_b, yo_f, refl, ins_b, ins_f, tt, cfg_b, cfg_f, steps_b, steps_f, lr, cell=False):
    """Adam on the coordinates (and, with ``cell``, a symmetric strain of the lattice) of every
    lane; returns ``(frac, lattice, loss)`` of each lane's best iterate, never worse than the start."""
    def lane(x, lt, s, mm, yb, yf, rf):
        def f(p, ins, cfg, yo):
            return _loss(p[0], strained(lt, p[1]) if cell else lt, s, mm, yo, rf, ins, tt, cfg)

        def stage(p, ins, cfg, yo, n, strain):
            vg = jax.value_and_grad(f)
            tx = optax.adam(lr)

            def step(carry, _):
                p, o, best, bp = carry
                v, g = vg(p, ins, cfg, yo)
                better = v < best
                best = jnp.where(better, v, best)
                bp = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, bp)
                u, o = tx.update((g[0] * mm[:, None], g[1] * strain), o, p)
                q = optax.apply_updates(p, u)
                return ((jnp.mod(q[0], 1.0), q[1]), o, best, bp), None

            (p, _, best, bp), _ = jax.lax.scan(step, (p, tx.init(p), jnp.inf, p), None, length=n)
            v = f(p, ins, cfg, yo)
            return jax.tree.map(lambda a, b: jnp.where(v < best, a, b), p, bp)

        p0 = (x, jnp.zeros(6, x.dtype))
        v0 = f(p0, ins_f, cfg_f, yf)
        # the cell moves only at full resolution: the broadened pattern's small profile mismatch
        # (Gaussian added to a pseudo-Voigt, on the grid) would pull it
        p1 = stage(p0, ins_b, cfg_b, yb, steps_b, 0.0) if steps_b else p0
        p1 = stage(p1, ins_f, cfg_f, yf, steps_f, 1.0) if steps_f else p1
        v1 = f(p1, ins_f, cfg_f, yf)
        keep = v1 <= v0  # never return a candidate worse than it came
        lat1 = strained(lt, p1[1]) if cell else lt
        return jnp.where(keep, p1[0], x), jnp.where(keep, lat1, lt), jnp.where(keep, v1, v0)

    return jax.vmap(lane)(x0, lat, sp, m, yo_b, yo_f, refl)


@partial(jax.jit, static_argnames=("cfg",))
def _swap_losses(x, lat, sp, m, yo, refl, pairs, ins, tt, cfg):
    """Loss of every lane (B) with atoms ``pairs[b, p]`` exchanged (B, P); pair (0, 0) is the
    lane as it is. Pairs run one after another (``lax.map``): memory of one pattern per lane."""

    def lane(x, lt, s, mm, yo, rf, pr):
        def one(p):
            i, j = p[0], p[1]
            return _loss(x.at[i].set(x[j]).at[j].set(x[i]), lt, s, mm, yo, rf, ins, tt, cfg)

        return jax.lax.map(one, pr)

    return jax.vmap(lane)(x, lat, sp, m, yo, refl, pairs)


def swap_pairs(z: np.ndarray) -> np.ndarray:
    """(T, P, 2) atom pairs of each target whose exchange changes the decoration (atoms of
    different elements), after the identity pair (0, 0); padded with (0, 0)."""
    lists = [[(0, 0)] + [(i, j) for i in range(len(zt)) for j in range(i + 1, len(zt))
                         if zt[i] > 0 and zt[j] > 0 and zt[i] != zt[j]] for zt in np.asarray(z)]
    p = max(len(a) for a in lists)
    out = np.zeros((len(lists), p, 2), np.int32)
    for t, a in enumerate(lists):
        out[t, :len(a)] = a
    return out


def polish(cand, patterns, meta, *, settings: Polish = Polish(), batch: int = 512):
    """Polish every candidate of a :class:`.api.Candidates` against its target's observed
    pattern (``patterns`` (T, n_points) on the model grid). Returns ``(candidates, loss (T, k))``:
    the candidates with polished coordinates (and, with ``settings.refine_lattice``, lattice
    parameters); candidates whose cell is not valid get loss +inf and are left as they are."""
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
    pairs = swap_pairs(cand.z) if settings.swap_rounds else None
    params = cand.params.reshape(-1, 6)
    ok = np.all(np.isfinite(params), axis=1) & np.all(params[:, :3] > 0.5, axis=1) & \
        np.all((params[:, 3:] > 20) & (params[:, 3:] < 160), axis=1)
    lat = np.asarray(params_to_matrix(jnp.asarray(np.where(ok[:, None], params, [4, 4, 4, 90, 90, 90]), jnp.float32)))
    vol = np.abs(np.linalg.det(lat))
    ok &= vol > 1.0
    refls = [make_reflections(lat[i] if ok[i] else np.eye(3) * 4, g, margin=0.02) for i in range(len(rows))]
    cap = max(r.capacity for r in refls)
    frac = cand.frac.reshape(-1, n, 3).copy()
    lat_out = lat.copy()
    loss = np.full(len(rows), np.inf)
    dt = jnp.float32
    tt_j = jnp.asarray(tt, dt)
    cell = settings.refine_lattice
    for s in range(0, len(rows), batch):
        idx = np.arange(s, min(s + batch, len(rows)))
        pad = _pad(idx, batch) if len(rows) > batch else idx  # one compiled shape across chunks
        tgt = np.array([rows[i][0] for i in pad])
        rf = stack_reflections([refls[i] for i in pad], cap)
        lane = (jnp.asarray(species[tgt]), jnp.asarray(cand.mask[tgt], dt), jnp.asarray(y_b[tgt], dt),
                jnp.asarray(y_f[tgt], dt), rf, ins_b, ins, tt_j, cfg_b, cfg_f)

        def search(x, lt):  # every lane's best single exchange (or none): (coordinates, moved)
            losses = np.asarray(_swap_losses(x, lt, lane[0], lane[1], lane[3], rf, jnp.asarray(pairs[tgt]), ins, tt_j,
                                             cfg_f))
            best = np.argmin(losses, axis=1)  # ties keep the lane as it is (pair 0 comes first)
            xs = np.array(x)
            for b in np.flatnonzero(best > 0):
                i, j = pairs[tgt[b], best[b]]
                xs[b, [i, j]] = xs[b, [j, i]]
            return xs, best > 0

        def keep_better(moved, new, old):  # the search proposes, the polished loss decides
            take = jnp.asarray(moved & (np.asarray(new[2]) < np.asarray(old[2])))
            return tuple(jnp.where(take.reshape((-1,) + (1,) * (a.ndim - 1)), a, b) for a, b in zip(new, old))

        x0, lt0 = jnp.asarray(frac[pad], dt), jnp.asarray(lat[pad], dt)
        x, lt, v = _run(x0, lt0, *lane, settings.broad_steps, settings.fine_steps, settings.lr, cell)
        if settings.swap_rounds:
            # on the start too, both polished: a start polished with the wrong elements can settle
            # into a basin from which the exchange back no longer lowers the loss
            xs, moved = search(x0, lt0)
            if moved[:len(idx)].any():
                new = _run(jnp.asarray(xs), lt0, *lane, settings.broad_steps, settings.fine_steps, settings.lr, cell)
                x, lt, v = keep_better(moved, new, (x, lt, v))
        for _ in range(settings.swap_rounds):
            xs, moved = search(x, lt)
            if not moved[:len(idx)].any():
                break
            new = _run(jnp.asarray(xs), lt, *lane, 0, settings.fine_steps, settings.lr, cell)
            x, lt, v = keep_better(moved, new, (x, lt, v))
        x, lt, v = np.asarray(x)[:len(idx)], np.asarray(lt)[:len(idx)], np.asarray(v)[:len(idx)]
        good = ok[idx]
        frac[idx[good]] = x[good]
        lat_out[idx[good]] = lt[good]
        loss[idx[good]] = v[good]
    out = params.copy()
    if cell and ok.any():
        out[ok] = np.stack([lattice_parameters(m) for m in lat_out[ok]])
    return dataclasses.replace(cand, frac=frac.reshape(t_n, k, n, 3), params=out.reshape(t_n, k, 6)), loss.reshape(t_n, k)


def reorder(cand, order):
    """Candidates with the samples of each target permuted by ``order`` (T, k) (e.g. ranked)."""
    order = np.asarray(order)
    take = lambda a: np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)  # noqa: E731
    return dataclasses.replace(cand, frac=take(cand.frac), params=take(cand.params))
