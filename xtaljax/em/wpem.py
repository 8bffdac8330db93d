"""Whole-pattern decomposition by Bragg-constrained expectation–maximisation (WPEM).

The measured counts ``y_j`` at ``x_j`` (2θ) are modelled as a Poisson mean

    μ_j = b_j + Δx_j Σ_k I_k Σ_l r_l [η_k C(x_j; c_kl, γ_k) + (1 − η_k) N(x_j; c_kl, σ_k)]

with a Chebyshev background ``b``, one component per reflection ``k`` of every phase with its
integrated Kα1 intensity ``I_k``, the emission lines ``l`` with fixed ratios ``r_l`` (Kα2 tied to
Kα1), a Lorentzian (Cauchy, half-width γ_k) and a Gaussian (σ_k) part mixed by η_k, and centres
tied to Bragg's law through each phase's lattice: ``c_kl = 2 asin(λ_l / 2d_k(lattice)) + zero``.

One EM iteration (:func:`em_step`, pure JAX):

* **E-step**: responsibilities of every sub-component (k, l, part) and of the background for
  every point, ``ρ = term / μ``.
* **M-step**: ``I_k = Σ_j y_j ρ_kj / Σ_l r_l`` (the Poisson-mixture update, monotone in the
  likelihood); ``η_k`` = Lorentzian share of ``I_k``; Gaussian variances from the weighted second
  moments; Cauchy half-widths by the scale-mixture EM (weights ``u = 2γ²/(γ² + d²)``). With
  ``widths="caglioti"`` (default) the per-reflection estimates are replaced by their
  weighted least-squares fit σ² = U tan²θ + V tanθ + W, γ = X/cosθ + Y tanθ (robust under
  overlap); ``"free"`` keeps one width per reflection.
* **Bragg step**: the conditional means ``m_c`` of every sub-component with their precisions
  ``P_c`` define ``Σ_c P_c (m_c − c_c(θ))²``, minimised over the lattice-family parameters of
  every phase (and the zero shift) by Gauss–Newton with the exact Jacobian (``jax.jacfwd``).
* **Background**: weighted least squares of ``y − peaks`` on the Chebyshev basis (updated from the
  residuals every iteration), or a given curve held fixed (``fixed_background``).

Convergence: relative change of the Poisson log-likelihood below ``tol`` or ``max_iter``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..core.lattice import lattice_from_parameters, reciprocal
from ..core.profiles import fcj_shifts_weights
from ..core.pattern import SimConfig, chebyshev_background, reflections_for, resolve_config
from ..core.reflections import merge_equivalents

RAD = 180.0 / np.pi


@jax.jit
def _expand_jit(template, params):
    return template.expand(params)


@jax.jit
def _peak_table_pmg(crystal, instrument, refl):
    from ..core.pattern import _peak_table

    t = _peak_table(crystal, instrument, refl, "pymatgen")
    return {"intensity": t["intensity"], "lp": t["lp"]}


class DecompositionError(ValueError):
    """Bad input for a decomposition (the message names the cause)."""


class EMState(NamedTuple):
    lattice: jax.Array  # (P, 6) free lattice parameters per phase
    zero: jax.Array  # () degrees
    intensity: jax.Array  # (K,) integrated Kα1 intensity: counts summed over the grid points (× step = counts·°)
    eta: jax.Array  # (K,)
    sigma: jax.Array  # (K,) Gaussian σ (degrees)
    gamma: jax.Array  # (K,) Cauchy half-width (degrees)
    background: jax.Array  # (nb,) Chebyshev coefficients
    loglik: jax.Array  # () Poisson log-likelihood (up to a constant)
    rel_change: jax.Array
    iteration: jax.Array
    lat_normal: jax.Array  # (Q, Q) Gauss–Newton normal matrix of the Bragg step (esd's)
    asym: jax.Array  # () FCJ axial divergence S/L = H/L (0 with asymmetry off)
    displacement: jax.Array  # () sample displacement s (mm): Δ2θ = −2 (s / R) cos θ (radians)


@dataclasses.dataclass
class PhaseInfo:
    name: str
    template: object
    params: object
    info: object
    hkl: np.ndarray  # (k_p, 3)
    multiplicity: np.ndarray  # (k_p,) number of (hkl) in the orbit (Friedel mates included)


@dataclasses.dataclass
class EMProblem:
    """Static data of a decomposition: grid, phases and their reflections, lines."""

    two_theta: np.ndarray
    phases: list
    wavelengths: np.ndarray
    line_weights: np.ndarray
    comp_phase: np.ndarray  # (K,) phase of each reflection
    hkl: np.ndarray  # (K, 3)
    multiplicity: np.ndarray  # (K,)
    lat_m: np.ndarray  # (P, 6, 6)
    lat_k: np.ndarray  # (P, 6)
    lat_free: np.ndarray  # (P, 6)
    n_background: int
    widths: str = "caglioti"
    refine_zero: bool = True
    refine_displacement: bool = False
    radius: float = 240.0  # goniometer radius R (mm), for the displacement
    sigma0: np.ndarray | None = None  # (K,) instrument Gaussian σ at the starting cell (degrees)
    gamma0: np.ndarray | None = None  # (K,) instrument Cauchy half-width
    calc0: np.ndarray | None = None  # (K,) model m|F|²·LP per reflection, normalised per phase
    search: float = 0.0  # relative half-width of the starting isotropic-strain scan
    search_steps: int = 1
    window: int = 0  # points per reflection window (the E-step works on windows); 0 = whole grid
    asymmetry: bool = False  # FCJ axial-divergence sub-components (S/L = H/L refined)
    n_fcj: int = 6
    #: the reflections behind the components: a component is a group of reflections of one phase
    #: whose d-spacings are equal for every cell of the phase's crystal family (cubic (511) and
    #: (333), tetragonal (hk0) and (kh0) outside 4/mmm...), which no decomposition can split;
    #: ``hkl``/``multiplicity`` above are the group's first reflection and the group's summed
    #: multiplicity. ``None``: one reflection per component.
    member_hkl: np.ndarray | None = None  # (R, 3)
    member_mult: np.ndarray | None = None  # (R,)
    member_comp: np.ndarray | None = None  # (R,) component of each reflection
    #: a given background (counts on the grid) held fixed; ``None``: Chebyshev, refined
    background_curve: np.ndarray | None = None

    def members(self):
        """``(hkl (R, 3), multiplicity (R,), component (R,))`` of every reflection."""
        if self.member_hkl is None:
            return self.hkl, self.multiplicity, np.arange(self.n_reflections)
        return self.member_hkl, self.member_mult, self.member_comp

    @property
    def n_reflections(self) -> int:
        return int(self.hkl.shape[0])


def coincident_groups(hkl, lat_m, lat_k, lat_free, params, n_cells: int = 3, rtol: float = 1e-9):
    """Group reflections whose d-spacings are equal for every cell of the crystal family
    (``six = lat_m @ (p * lat_free) + lat_k``): their |g|² agree on ``n_cells`` random cells of the
    family around ``params`` (±10 % on each free parameter; accidental equality on all of them
    has probability zero). Returns ``(group (n,), first (G,))``: the group of every row, numbered
    in order of first appearance, and each group's first row."""
    hkl = np.asarray(hkl, np.float64)
    if hkl.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lat_m, lat_k, free = (np.asarray(a, np.float64) for a in (lat_m, lat_k, lat_free))
    p0 = np.asarray(params, np.float64)
    rng = np.random.default_rng(0)
    q = []
    for _ in range(n_cells):
        a, b, c, al, be, ga = lat_m @ (p0 * (1.0 + 0.1 * rng.uniform(-1, 1, p0.shape)) * free) + lat_k
        ca, cb, cg = np.cos(np.radians([al, be, ga]))
        metric = np.array([[a * a, a * b * cg, a * c * cb], [a * b * cg, b * b, b * c * ca], [a * c * cb, b * c * ca, c * c]])
        q.append(np.einsum("ni,ij,nj->n", hkl, np.linalg.inv(metric), hkl))  # |g|² = hᵀ G⁻¹ h
    q = np.stack(q, 1)  # (n, n_cells)
    # candidates are the runs of near-equal |g|² on the first cell (sorted: O(n log n)); within
    # a run (almost always one row) the rows that agree on every cell form a group
    order = np.argsort(q[:, 0], kind="stable")
    q0 = q[order, 0]
    cuts = np.flatnonzero(np.diff(q0) > rtol * np.abs(q0[1:])) + 1
    label = np.full(hkl.shape[0], -1, np.int64)  # provisional group ids
    n_groups = 0
    for run in np.split(order, cuts):
        for r in np.sort(run):
            if label[r] >= 0:
                continue
            rest = run[label[run] < 0]
            label[rest[np.all(np.abs(q[rest] - q[r]) <= rtol * q[r], axis=1)]] = n_groups
            n_groups += 1
    # number the groups in order of first appearance
    first_row = np.full(n_groups, hkl.shape[0], np.int64)
    np.minimum.at(first_row, label, np.arange(hkl.shape[0]))
    rank = np.empty(n_groups, np.int64)
    rank[np.argsort(first_row, kind="stable")] = np.arange(n_groups)
    return rank[label], np.sort(first_row)


def build_problem(two_theta, phases: Sequence, instrument, *, n_background: int = 8, symprec: float = 0.01,
                  widths: str = "caglioti", refine_zero: bool = True, search: float = 0.0,
                  asymmetry: bool = False, n_fcj: int = 6, window_fwhm: float = 0.0,
                  refine_displacement: bool = False, fixed_background=None) -> tuple[EMProblem, EMState]:
    """Host-side set-up: symmetrise the phases, enumerate and merge their reflections in range,
    initial state from the instrument's profile terms (intensities 1, background 0).

    ``search``: before the first EM iteration every phase's cell is scaled isotropically by the
    factor in ``1 ± search`` whose Bragg positions best meet the background-subtracted pattern
    (the pattern sampled at the Kα1 positions, weighted by the phase's model intensities
    m|F|²·LP): a cell from a CIF at another temperature, or a drifted pattern of a series, starts
    within a fraction of a FWHM of its peaks. ``search=0`` keeps the given cells.

    ``window_fwhm``: each reflection's components live on a window of grid points spanning its
    Kα1 and Kα2 peaks ± ``window_fwhm`` starting FWHM (×1.5 for changes during the fit; the
    window follows the peak); the intensities are corrected for the profile area outside the
    window. The E-step then costs lines × reflections × window instead of × all points (what
    makes patterns with thousands of reflections possible). ``0`` (default) = every point for
    every peak: on Mn2O3 (lab, heavy Lorentzian tails) ±30 FWHM windows gave Rwp 3.45 % against
    3.12 % dense — the truncated tails of 110 peaks add up.

    ``asymmetry``: every line of every reflection becomes ``n_fcj`` Finger–Cox–Jephcoat
    sub-components (shifts and weights of the FCJ axial-divergence function, the same quadrature
    as the simulator's), with S/L = H/L refined by a Newton step on the log-likelihood each
    iteration, starting from the instrument's value (or 0.01).

    ``refine_displacement``: the Bragg step also refines the sample displacement s (Bragg–Brentano
    specimen height: Δ2θ = −2 (s/R) cos θ, R the instrument's goniometer radius), starting from
    the instrument's value; with ``refine_zero`` both the constant and the cos θ shift are free.

    ``fixed_background``: counts on the grid (e.g. from a background fit made elsewhere) used as
    the background and never updated; ``n_background`` is then ignored."""
    from ..io.spacegroups import symmetrize

    tt = np.asarray(two_theta, np.float64)
    if tt.ndim != 1 or tt.size < 10:
        raise DecompositionError(f"need at least 10 points, got {tt.size}")
    if widths not in ("caglioti", "free"):
        raise DecompositionError(f"widths must be 'caglioti' or 'free', got {widths!r}")
    if not phases:
        raise DecompositionError("at least one phase is needed")
    if not 0.0 <= search < 0.2:
        raise DecompositionError(f"search is a relative strain in [0, 0.2), got {search}")
    if window_fwhm < 0 or n_fcj < 2:
        raise DecompositionError(f"window_fwhm must be >= 0 and n_fcj >= 2, got {window_fwhm}, {n_fcj}")
    curve = None
    if fixed_background is not None:
        curve = np.asarray(fixed_background, np.float64)
        if curve.shape != tt.shape:
            raise DecompositionError(f"the fixed background has {curve.size} points, the pattern {tt.size}")
        if not np.all(np.isfinite(curve)) or np.any(curve < 0):
            raise DecompositionError("the fixed background must be finite and non-negative counts")
        n_background = 1
    with jax.enable_x64(True):
        inst = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64)
                                      if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, instrument)
        cfg = resolve_config(SimConfig(asymmetry="none"), inst, tt)
        out, hkls, comp_phase, mult, lat_m, lat_k, lat_free, lat0 = [], [], [], [], [], [], [], []
        m_hkl, m_mult, m_comp, n_comp = [], [], [], 0
        lam = np.asarray(inst.wavelengths, np.float64)
        for i, (name, struct) in enumerate(phases):
            try:
                template, params, info = struct if isinstance(struct, tuple) else symmetrize(
                    struct, symprec=symprec, return_info=True)
            except ValueError as err:
                raise DecompositionError(f"phase {name}: {err}") from None
            crystal = _expand_jit(template, params)
            refl = merge_equivalents(reflections_for(crystal, inst, tt, cfg, margin=0.02), info.rotations)
            m = np.asarray(refl.mask) > 0
            hkl = np.asarray(refl.hkl)[m]
            w = np.asarray(refl.mask)[m]
            # keep the reflections whose Kα1 or Kα2 peak falls in the range (with a small margin)
            g = np.linalg.norm(hkl @ np.linalg.inv(np.asarray(crystal.lattice, np.float64)).T, axis=1)
            s = np.clip(np.outer(lam, g) / 2, 0, 1)
            pos = 2 * np.degrees(np.arcsin(s))
            # keep the reflections whose Kα1 centre is on the grid (a component centred off the grid
            # could explain the edge counts with an unbounded intensity)
            inside = (pos[0] >= tt[0]) & (pos[0] <= tt[-1]) & (s[0] < 1)
            if not inside.any():
                raise DecompositionError(f"phase {name}: no reflection falls in the 2θ range {tt[0]:g}–{tt[-1]:g}° "
                                         f"at λ = {lam[0]:g} Å (wrong units or wavelength?)")
            h_in, m_in = hkl[inside], 2 * w[inside]
            grp, first = coincident_groups(h_in, template.lat_m, template.lat_k, template.lat_free, params.lattice)
            m_hkl.append(h_in)
            m_mult.append(m_in)
            m_comp.append(n_comp + grp)
            n_comp += first.size
            hkls.append(h_in[first])
            mult.append(np.bincount(grp, weights=m_in).astype(m_in.dtype))
            comp_phase.append(np.full(first.size, i))
            lat_m.append(np.asarray(template.lat_m))
            lat_k.append(np.asarray(template.lat_k))
            lat_free.append(np.asarray(template.lat_free))
            lat0.append(np.asarray(params.lattice))
            out.append(PhaseInfo(name, template, params, info, h_in, m_in))
        prob = EMProblem(two_theta=tt, phases=out, wavelengths=lam, line_weights=np.asarray(inst.line_weights, np.float64),
                         comp_phase=np.concatenate(comp_phase), hkl=np.concatenate(hkls).astype(np.float64),
                         multiplicity=np.concatenate(mult), lat_m=np.stack(lat_m), lat_k=np.stack(lat_k),
                         lat_free=np.stack(lat_free), n_background=n_background, widths=widths, refine_zero=refine_zero,
                         refine_displacement=bool(refine_displacement), radius=float(inst.radius),
                         background_curve=curve,
                         member_hkl=np.concatenate(m_hkl).astype(np.float64), member_mult=np.concatenate(m_mult),
                         member_comp=np.concatenate(m_comp))
        K = prob.n_reflections
        lines = np.asarray(_positions_jit(prob, jnp.asarray(np.stack(lat0)), jnp.asarray(float(inst.zero)),
                                          jnp.asarray(float(inst.displacement))))  # (L, K)
        pos = lines[0]
        th = np.radians(pos / 2)
        s2 = float(inst.u) * np.tan(th) ** 2 + float(inst.v) * np.tan(th) + float(inst.w)
        sig = np.sqrt(np.maximum(s2, 1e-6))
        gam = np.maximum(0.5 * (float(inst.x) / np.cos(th) + float(inst.y) * np.tan(th)), 0.5 * sig)
        steps, calc0 = 1, None
        if search > 0:
            # isotropic-strain scan: steps that move the highest-angle peak by at most 1/4 FWHM
            tmax = float(np.tan(np.radians(np.clip(pos, 0, 179.0) / 2)).max())
            ds = float(np.min(0.25 * 2.355 * sig / (2 * tmax * RAD)))
            steps = int(min(2 * np.ceil(search / max(ds, 1e-7)) + 1, 2001))
            calc0 = calculated_intensities(prob, inst, np.stack(lat0))[0]
            for i in range(len(out)):
                sel = prob.comp_phase == i
                calc0[sel] = calc0[sel] / max(calc0[sel].sum(), 1e-300)
        win = tt.size
        if window_fwhm > 0:
            span = (lines.max(axis=0) - lines.min(axis=0)) + 2 * window_fwhm * (2.355 * sig + 2 * gam)
            win = int(min(np.ceil(1.5 * span.max() / float(np.median(np.diff(tt)))) + 8, tt.size))
        prob = dataclasses.replace(prob, window=win, sigma0=sig, gamma0=gam, calc0=calc0, search=float(search),
                                   search_steps=steps, asymmetry=bool(asymmetry), n_fcj=int(n_fcj) if asymmetry else 1)
        state = EMState(lattice=jnp.asarray(np.stack(lat0)), zero=jnp.asarray(np.float64(float(inst.zero))),
                        intensity=jnp.ones(K), eta=jnp.full(K, 0.5, jnp.float64), sigma=jnp.asarray(sig),
                        gamma=jnp.asarray(gam),
                        background=jnp.ones(1) if curve is not None else jnp.zeros(n_background),
                        # strong float64 (not weak-typed), as the compiled steps return them: a
                        # weak-typed start made the SQUAREM step compile twice (+3.2 s on Mn2O3)
                        loglik=jnp.asarray(-np.inf, jnp.float64), rel_change=jnp.asarray(np.inf, jnp.float64),
                        iteration=jnp.asarray(0, jnp.int32),
                        lat_normal=jnp.zeros((int(prob.lat_free.sum()) + 2,) * 2),
                        asym=jnp.asarray(np.float64(_start_asym(inst) if asymmetry else 0.0)),
                        displacement=jnp.asarray(np.float64(float(inst.displacement))))
        return prob, state


def positions(prob: EMProblem, lattice, zero, displacement=0.0):
    """(L, K) peak centres (degrees 2θ) of every line and reflection: Bragg's law, plus the zero
    shift and the sample displacement's −2 (s/R) cos θ (as the simulator); pure JAX."""
    six = jnp.einsum("pij,pj->pi", jnp.asarray(prob.lat_m), lattice * jnp.asarray(prob.lat_free)) + jnp.asarray(prob.lat_k)
    recs = jnp.stack([reciprocal(lattice_from_parameters(*six[p])) for p in range(six.shape[0])])  # (P, 3, 3)
    rec = recs[jnp.asarray(prob.comp_phase)]  # (K, 3, 3)
    g = jnp.linalg.norm(jnp.einsum("ki,kij->kj", jnp.asarray(prob.hkl), rec), axis=-1)
    s = jnp.clip(jnp.asarray(prob.wavelengths)[:, None] * g[None, :] / 2, 0.0, 1.0 - 1e-12)
    return 2.0 * RAD * (jnp.arcsin(s) - displacement / prob.radius * jnp.sqrt(1.0 - s * s)) + zero


def _positions_jit(prob: EMProblem, lattice, zero, displacement=0.0):
    """:func:`positions` as one compiled call (host-side callers: run op by op it compiled
    ~40 one-op programs, ~20 ms each)."""
    f = _compiled(prob, "positions", lambda: jax.jit(lambda lat, z, s: positions(prob, lat, z, s)))
    with jax.enable_x64(True):
        return f(jnp.asarray(lattice, jnp.float64), jnp.asarray(zero, jnp.float64),
                 jnp.asarray(displacement, jnp.float64))


@functools.partial(jax.jit, static_argnums=1)
def _cheb_basis(tt, n):
    return jnp.stack([chebyshev_background(tt, jnp.eye(n, dtype=tt.dtype)[k]) for k in range(n)], 1)


def _basis(prob: EMProblem, tt):
    """(N, nb) background basis: the Chebyshev polynomials, or the fixed curve as one column
    (coefficient 1, never updated)."""
    if prob.background_curve is not None:
        return jnp.asarray(prob.background_curve)[:, None]
    return _cheb_basis(tt, prob.n_background)


def _start_asym(inst) -> float:
    sl, hl = float(inst.asym_sl), float(inst.asym_hl)
    return 0.5 * (sl + hl) if sl + hl > 0 else 0.01


def _sub_components(prob: EMProblem, st: EMState):
    """Centres (L, K), FCJ shifts (L, K, Q) and weights (L, K, Q) of every sub-component."""
    c = positions(prob, st.lattice, st.zero, st.displacement)  # (L, K)
    if not prob.asymmetry:
        return c, jnp.zeros(c.shape + (1,)), jnp.ones(c.shape + (1,))
    a = jnp.maximum(st.asym, 1e-5)
    sh, w = fcj_shifts_weights(c.ravel(), a, a, prob.n_fcj)
    return c, sh.reshape(c.shape + (-1,)), w.reshape(c.shape + (-1,))


def _windows(prob: EMProblem, c, x):
    """(K, M) grid indices of every reflection's window, centred between its lines."""
    n, m = x.shape[0], min(prob.window or x.shape[0], x.shape[0])
    mid = 0.5 * (jnp.min(c, axis=0) + jnp.max(c, axis=0))
    start = jnp.clip(jnp.searchsorted(x, mid).astype(jnp.int32) - m // 2, 0, n - m)
    return start[:, None] + jnp.arange(m, dtype=jnp.int32)[None, :]


def _terms(prob: EMProblem, st: EMState, x):
    """Sub-component terms (counts per degree) on each reflection's window: (L, K, Q, M)
    Lorentzian and Gaussian parts of every line l, reflection k and FCJ quadrature point q
    (Q = 1 without asymmetry), and the (K, M) window indices."""
    c, sh, wq = _sub_components(prob, st)
    idx = _windows(prob, c, x)
    xw = _on_windows(idx, x)  # (K, M)
    d = xw[None, :, None, :] - (c[:, :, None] + sh)[..., None]
    r = jnp.asarray(prob.line_weights)[:, None, None, None]
    amp = st.intensity[None, :, None, None] * r * wq[..., None]
    g = st.gamma[None, :, None, None]
    sg = st.sigma[None, :, None, None]
    eta = st.eta[None, :, None, None]
    lor = g / (np.pi * (g**2 + d * d))
    gau = jnp.exp(-0.5 * (d / sg) ** 2) / (np.sqrt(2 * np.pi) * sg)
    return (c, sh, idx), d, amp * eta * lor, amp * (1 - eta) * gau


def _to_grid(idx, per_window, n):
    """Sum (K, M) window values onto the (N,) grid (a plain sum when every window is the grid)."""
    if idx.shape[1] == n:
        return jnp.sum(per_window, axis=0)
    return jnp.zeros(n, per_window.dtype).at[idx.ravel()].add(per_window.ravel())


def _on_windows(idx, grid_values):
    """(K, M) values of an (N,) grid array on every window."""
    if idx.shape[1] == grid_values.shape[0]:
        return jnp.broadcast_to(grid_values[None, :], idx.shape)
    return grid_values[idx]


def model_counts(prob: EMProblem, st: EMState, x, dx, basis):
    """(total, peaks, background) expected counts on the grid."""
    (_, _, idx), _, tl, tg = _terms(prob, st, x)
    peaks = dx * _to_grid(idx, jnp.sum(tl + tg, axis=(0, 2)), x.shape[0])
    bkg = basis @ st.background
    return bkg + peaks, peaks, bkg


def component_counts(prob: EMProblem, st: EMState, x, dx):
    """(K, M) expected counts of every component (all its lines and FCJ sub-components) on its
    window, and the (K, M) grid indices of the windows; pure JAX. Summed onto the grid they are
    the peaks of :func:`model_counts`."""
    (_, _, idx), _, tl, tg = _terms(prob, st, x)
    return jnp.sum(tl + tg, axis=(0, 2)) * _on_windows(idx, dx), idx


def _loglik(y, total):
    """Poisson log-likelihood (up to a constant); a non-positive mean (a background driven
    below zero) counts as a mean of 1e-9, so such a state never looks better."""
    mu = jnp.maximum(total, 1e-9)
    return jnp.sum(y * jnp.log(mu) - mu)


def em_step(prob: EMProblem, st: EMState, y, x, dx, basis, gn_steps: int = 2) -> EMState:
    """One EM iteration (E-step, M-step, Bragg step, background); pure JAX."""
    (c, sh, idx), d, tl, tg = _terms(prob, st, x)
    # a background polynomial below zero somewhere would make a responsibility exceed 1 (and the
    # intensities run away): the E-step sees the background clipped at 0
    bkg = jnp.maximum(basis @ st.background, 0.0)
    mu = jnp.maximum(bkg + dx * _to_grid(idx, jnp.sum(tl + tg, axis=(0, 2)), x.shape[0]), 1e-9)
    yw = _on_windows(idx, y / mu * dx)  # (K, M) y_j / μ_j × Δx_j: responsibility weight per unit of term
    wl = tl * yw[None, :, None, :]  # expected counts of each Lorentzian sub-component per point
    wg = tg * yw[None, :, None, :]
    n_l = jnp.sum(wl, axis=(0, 2, 3))  # (K,)
    n_g = jnp.sum(wg, axis=(0, 2, 3))
    rsum = jnp.sum(jnp.asarray(prob.line_weights))
    # integrated intensity: Poisson-mixture M-step (with the part of each profile outside the grid)
    xw = _on_windows(idx, x)
    cover = _coverage(st, c, xw[:, 0], xw[:, -1])  # (K,) fraction of the profile inside the window
    intensity = (n_l + n_g) / (rsum * jnp.maximum(cover, 0.5))
    eta = jnp.clip(n_l / jnp.maximum(n_l + n_g, 1e-300), 1e-3, 1 - 1e-3)
    # widths: Gaussian second moments; Cauchy by the scale-mixture EM
    d2 = d * d
    var_g = jnp.sum(wg * d2, axis=(0, 2, 3)) / jnp.maximum(n_g, 1e-300)
    u = 2.0 * st.gamma[None, :, None, None] ** 2 / (st.gamma[None, :, None, None] ** 2 + d2)
    gam2 = jnp.sum(wl * u * d2, axis=(0, 2, 3)) / jnp.maximum(n_l, 1e-300)
    sigma, gamma = _widths(prob, c[0], var_g, gam2, n_g, n_l, st, jnp.mean(dx))
    # Bragg step: conditional means (less each sub-component's FCJ shift) and their precisions
    xb = xw[None, :, None, :]
    m_l = jnp.sum(wl * u * xb, axis=3) / jnp.maximum(jnp.sum(wl * u, axis=3), 1e-300) - sh
    p_l = jnp.sum(wl * u, axis=3) / gamma[None, :, None] ** 2
    m_g = jnp.sum(wg * xb, axis=3) / jnp.maximum(jnp.sum(wg, axis=3), 1e-300) - sh
    p_g = jnp.sum(wg, axis=3) / sigma[None, :, None] ** 2
    lattice, zero, displacement, normal = _bragg(prob, st, m_l, p_l, m_g, p_g, gn_steps)
    # background: weighted least squares of (y − peaks), weights 1/max(y, 1)
    new = st._replace(intensity=intensity, eta=eta, sigma=sigma, gamma=gamma, lattice=lattice, zero=zero,
                      displacement=displacement)
    if prob.asymmetry:
        new = new._replace(asym=_asym_step(prob, new, y, x, dx, basis))
    _, peaks, _ = model_counts(prob, new, x, dx, basis)
    if prob.background_curve is None:
        w = 1.0 / jnp.maximum(y, 1.0)
        a = basis.T @ (basis * w[:, None])
        coef = jnp.linalg.solve(a + 1e-12 * jnp.trace(a) * jnp.eye(a.shape[0]), basis.T @ (w * (y - peaks)))
    else:  # a given background, held fixed
        coef = st.background
    new = new._replace(background=coef)
    total = basis @ coef + peaks  # the peaks do not depend on the background
    ll = _loglik(y, total)
    rel = jnp.abs(ll - st.loglik) / jnp.maximum(jnp.abs(ll), 1e-300)
    return new._replace(loglik=ll, rel_change=jnp.where(jnp.isfinite(st.loglik), rel, jnp.inf),
                        iteration=st.iteration + 1, lat_normal=normal)


_POSITIVE = ("intensity", "sigma", "gamma", "asym")


def _to_vector(st: EMState) -> dict:
    """The profile variables of one EM iteration in unconstrained coordinates (the lattice and
    zero are left to the Gauss–Newton Bragg step: extrapolating them can jump a cell into
    another basin)."""
    v = {k: jnp.log(jnp.maximum(getattr(st, k), 1e-300)) for k in _POSITIVE}
    e = jnp.clip(st.eta, 1e-9, 1 - 1e-9)
    v.update(eta=jnp.log(e / (1 - e)), background=st.background)
    return v


def _from_vector(st: EMState, v: dict) -> EMState:
    upd = {k: jnp.exp(v[k]) for k in _POSITIVE}
    upd.update(eta=jax.nn.sigmoid(v["eta"]), background=v["background"])
    return st._replace(**upd)


def squarem_step(prob: EMProblem, st: EMState, y, x, dx, basis) -> EMState:
    """Three EM evaluations combined by SQUAREM (Varadhan & Roland 2008, scheme S3): from
    θ0, θ1 = F(θ0), θ2 = F(θ1), r = θ1 − θ0, v = θ2 − θ1 − r, α = −‖r‖/‖v‖ (≤ −1), the
    extrapolated θ0 − 2αr + α²v of the profile variables (intensities, η, widths, asymmetry in
    log/logit coordinates; background), with θ2's lattice and zero, is passed through one more
    EM step; if that is worse than θ2 (or not finite),
    θ2's successor F(θ2) is kept instead, so the log-likelihood never decreases. Pure JAX.

    The three or four evaluations run as the body of one ``lax.while_loop`` (the input of pass k
    chosen by ``k``), so the program holds one copy of the EM step: written out (four copies
    and the fallback's), it took 3.6 s to compile against 2.1 s, at 5.2 against 6–8 ms an
    evaluation (Mn2O3, 50 components × 6,501 points, 2 CPU cores)."""
    sq = lambda tree: sum(jnp.sum(leaf * leaf) for leaf in jax.tree_util.tree_leaves(tree))  # noqa: E731
    finite = lambda tree: jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf))  # noqa: E731
                                               for leaf in jax.tree_util.tree_leaves(tree)]))
    pick = lambda c, a, b: jax.tree_util.tree_map(lambda u, v: jnp.where(c, u, v), a, b)  # noqa: E731

    def extrapolated(s1, s2):
        t0, t1, t2 = _to_vector(st), _to_vector(s1), _to_vector(s2)
        r = jax.tree_util.tree_map(lambda a, b: b - a, t0, t1)
        v = jax.tree_util.tree_map(lambda a, b, c: c - 2 * b + a, t0, t1, t2)
        alpha = jnp.minimum(-jnp.sqrt(sq(r)) / jnp.maximum(jnp.sqrt(sq(v)), 1e-300), -1.0)
        alpha = jnp.maximum(alpha, -50.0)
        ext = jax.tree_util.tree_map(lambda a, b, c: a - 2 * alpha * b + alpha**2 * c, t0, r, v)
        s_ext = _from_vector(s2, ext)
        if not prob.asymmetry:  # nothing to extrapolate (S/L is 0 and unused)
            s_ext = s_ext._replace(asym=s2.asym)
        ok_ext = finite(ext)
        return pick(ok_ext, s_ext, s2), ok_ext

    # pass 0: θ1 = F(θ0); 1: θ2 = F(θ1); 2: F(extrapolated), kept if good; 3: F(θ2) otherwise
    def body(carry):
        k, s1, s2, out, _, good = carry
        ext_in, ok_ext = extrapolated(s1, s2)
        inp = pick(k == 0, st, pick(k == 1, s1, pick(k == 2, ext_in, s2)))
        res = em_step(prob, inp, y, x, dx, basis)
        s1 = pick(k == 0, res, s1)
        s2 = pick(k == 1, res, s2)
        good_k = ok_ext & finite((res.lattice, res.zero, res.displacement, res.intensity, res.sigma, res.gamma, res.eta,
                                  res.background, res.asym)) & jnp.isfinite(res.loglik) & (res.loglik >= s2.loglik)
        good = jnp.where(k == 2, good_k, good)
        done = (k == 3) | ((k == 2) & good_k)
        return k + 1, s1, s2, pick(k >= 2, res, out), done, good

    init = (jnp.asarray(0, jnp.int32), st, st, st, jnp.asarray(False), jnp.asarray(False))
    _, _, _, out, _, good = lax.while_loop(lambda c: ~c[4], body, init)
    rel = jnp.abs(out.loglik - st.loglik) / jnp.maximum(jnp.abs(out.loglik), 1e-300)
    return out._replace(rel_change=jnp.where(jnp.isfinite(st.loglik), rel, jnp.inf),
                        iteration=st.iteration + jnp.where(good, 3, 4).astype(st.iteration.dtype))


def _asym_step(prob, st, y, x, dx, basis):
    """Newton step on the Poisson log-likelihood in S/L = H/L (the other parameters fixed; the
    gradient of the observed log-likelihood, so the EM ascent property is kept by the damping:
    at most ×2 or ÷2 per iteration, within [1e-4, 0.1])."""

    def ll(a):
        total, _, _ = model_counts(prob, st._replace(asym=a), x, dx, basis)
        return _loglik(y, total)

    a0 = st.asym
    g, h = jax.jvp(jax.grad(ll), (a0,), (jnp.ones_like(a0),))
    newton = a0 - g / jnp.where(h < 0, h, -1.0)
    step = jnp.where(h < 0, newton, a0 * jnp.where(g > 0, 2.0, 0.5))
    return jnp.clip(step, jnp.maximum(0.5 * a0, 1e-4), jnp.minimum(2.0 * a0, 0.1))


def _coverage(st, c, lo, hi):
    """Share of each reflection's (Kα1) profile inside its window [lo, hi] (the window, or the
    ends of the range, cut the tails)."""

    def cdf_l(z, g):
        return 0.5 + jnp.arctan(z / g) / np.pi

    def cdf_g(z, s):
        return 0.5 * (1 + jax.scipy.special.erf(z / (np.sqrt(2) * s)))

    cc = c[0]
    fl = cdf_l(hi - cc, st.gamma) - cdf_l(lo - cc, st.gamma)
    fg = cdf_g(hi - cc, st.sigma) - cdf_g(lo - cc, st.sigma)
    return st.eta * fl + (1 - st.eta) * fg


def _widths(prob, c1, var_g, gam2, n_g, n_l, st, step):
    floor = step  # a profile narrower than the grid step is not determined by the data
    if prob.widths == "free":
        return (jnp.sqrt(jnp.maximum(var_g, floor**2)), jnp.sqrt(jnp.maximum(gam2, floor**2)))
    th = jnp.deg2rad(c1 / 2)
    t, cs = jnp.tan(th), jnp.cos(th)
    ag = jnp.stack([t * t, t, jnp.ones_like(t)], 1)
    al = jnp.stack([1 / cs, t], 1)
    wg_ = n_g / jnp.maximum(var_g, floor**2)  # strength-weighted
    wl_ = n_l / jnp.maximum(gam2, floor**2)
    cg = jnp.linalg.lstsq(ag * jnp.sqrt(wg_)[:, None], var_g * jnp.sqrt(wg_))[0]
    cl = jnp.linalg.lstsq(al * jnp.sqrt(wl_)[:, None], jnp.sqrt(jnp.maximum(gam2, 0)) * jnp.sqrt(wl_))[0]
    sigma = jnp.sqrt(jnp.maximum(ag @ cg, floor**2))
    gamma = jnp.maximum(al @ cl, floor)
    return sigma, gamma


def _bragg(prob, st, m_l, p_l, m_g, p_g, gn_steps):
    """Gauss–Newton on Σ P (m − c(θ))² over the free lattice parameters and the zero."""
    free = np.asarray(prob.lat_free) > 0
    idx = np.argwhere(free)  # (Q, 2): phase, slot
    q_lat = len(idx)

    def unpack(theta):
        lat = st.lattice.at[idx[:, 0], idx[:, 1]].set(theta[:q_lat])
        return (lat, theta[q_lat] if prob.refine_zero else st.zero,
                theta[q_lat + 1] if prob.refine_displacement else st.displacement)

    theta = jnp.concatenate([st.lattice[idx[:, 0], idx[:, 1]], st.zero[None], st.displacement[None]])
    m = jnp.concatenate([m_l.ravel(), m_g.ravel()])
    p = jnp.concatenate([p_l.ravel(), p_g.ravel()])
    p = jnp.where(jnp.isfinite(m) & jnp.isfinite(p), p, 0.0)
    m = jnp.where(p > 0, m, 0.0)

    def resid(th):
        c = jnp.broadcast_to(positions(prob, *unpack(th))[..., None], m_l.shape).ravel()  # (L, K, Q)
        return (jnp.concatenate([c, c]) - m) * jnp.sqrt(p)

    # trust region: no Kα1 centre moves by more than the smallest starting FWHM per step (a
    # Gauss–Newton step from weak, far-off responsibilities can otherwise throw the cell away)
    limit = float(np.min(2.355 * prob.sigma0)) if prob.sigma0 is not None else np.inf
    normal = jnp.zeros((q_lat + 2,) * 2)
    for _ in range(gn_steps):
        r = resid(theta)
        jac = jax.jacfwd(resid)(theta)
        if not prob.refine_zero:
            jac = jac.at[:, q_lat].set(0.0)
        if not prob.refine_displacement:
            jac = jac.at[:, q_lat + 1].set(0.0)
        normal = jac.T @ jac
        a = normal + jnp.diag(jnp.where(jnp.diag(normal) > 0, 0.0, 1.0))
        delta = jnp.linalg.solve(a, jac.T @ r)
        moved = jnp.max(jnp.abs(positions(prob, *unpack(theta - delta))[0] - positions(prob, *unpack(theta))[0]))
        theta = theta - delta * jnp.minimum(1.0, limit / jnp.maximum(moved, 1e-300))
    lat, z, disp = unpack(theta)
    return lat, jnp.asarray(z), jnp.asarray(disp), normal


# ----------------------------------------------------------------------------------------------
# drivers
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Decomposition:
    """Result of :func:`decompose` for one pattern."""

    problem: EMProblem
    state: EMState
    y_obs: np.ndarray
    y_calc: np.ndarray
    background: np.ndarray
    stats: dict
    n_iterations: int
    seconds: float

    def lattice(self, i: int = 0):
        """(a, b, c, α, β, γ) and esd's of phase i (esd's from the Bragg-step normal matrix)."""
        prob, st = self.problem, self.state
        m = prob.lat_m[i]
        six = m @ (np.asarray(st.lattice[i]) * prob.lat_free[i]) + prob.lat_k[i]
        cov = self._covariance()
        free = np.argwhere(prob.lat_free > 0)
        rows = [k for k, (p, _) in enumerate(free) if p == i]
        sub = np.zeros((6, 6))
        for ka in rows:
            for kb in rows:
                sub[free[ka][1], free[kb][1]] = cov[ka, kb]
        var6 = np.diag(m @ sub @ m.T)
        return six, np.sqrt(np.clip(var6, 0, None))

    def _covariance(self):
        """Covariance of the Bragg step's parameters (free lattice parameters, zero,
        displacement) from its normal matrix, scaled by the reduced χ² of the whole fit (GSAS-II's
        convention); fixed parameters have zero rows."""
        normal = np.asarray(self.state.lat_normal)
        try:
            cov = np.linalg.pinv(normal)
        except np.linalg.LinAlgError:
            cov = np.zeros_like(normal)
        return cov * max(self.stats["reduced_chi2"], 1.0)

    def shifts(self) -> dict:
        """Zero shift (degrees) and sample displacement (mm) with esd's (None when held fixed)."""
        prob, st = self.problem, self.state
        q = int(prob.lat_free.sum())
        sd = np.sqrt(np.clip(np.diag(self._covariance()), 0, None))
        return {"zero": (float(st.zero), float(sd[q]) if prob.refine_zero else None),
                "displacement_mm": (float(st.displacement), float(sd[q + 1]) if prob.refine_displacement else None)}

    def reflections(self) -> list[dict]:
        prob, st = self.problem, self.state
        c = np.asarray(_positions_jit(prob, st.lattice, st.zero, st.displacement))[0]
        sig, gam, eta = np.asarray(st.sigma), np.asarray(st.gamma), np.asarray(st.eta)
        fwhm_g, fwhm_l = 2 * np.sqrt(2 * np.log(2)) * sig, 2 * gam
        m_hkl, _, m_comp = prob.members()
        out = []
        for k in range(prob.n_reflections):
            same = np.rint(m_hkl[m_comp == k]).astype(int)
            out.append({"phase": prob.phases[prob.comp_phase[k]].name, "h": int(prob.hkl[k, 0]), "k": int(prob.hkl[k, 1]),
                        "l": int(prob.hkl[k, 2]), "two_theta": float(c[k]), "multiplicity": int(prob.multiplicity[k]),
                        "intensity": float(st.intensity[k]), "fwhm_gauss": float(fwhm_g[k]),
                        "fwhm_lorentz": float(fwhm_l[k]), "eta": float(eta[k]),
                        # every reflection of the component (equal d in the crystal family: one peak)
                        "reflections": ";".join(" ".join(map(str, h)) for h in same)})
        return out

    def components(self):
        """``(counts (K, M), indices (K, M))``: every component's fitted counts on its window of
        grid points (the whole grid unless the E-step is windowed)."""
        prob = self.problem
        f = _compiled(prob, "components", lambda: jax.jit(lambda s, x, dx: component_counts(prob, s, x, dx)))
        with jax.enable_x64(True):
            c, idx = f(self.state, jnp.asarray(prob.two_theta), jnp.asarray(np.gradient(prob.two_theta)))
        return np.asarray(c), np.asarray(idx)

    def phase_peaks(self, components=None) -> np.ndarray:
        """(P, N) fitted peak counts of each phase on the grid (their sum plus the background is
        ``y_calc``); ``components``: :meth:`components` if already computed."""
        prob = self.problem
        c, idx = components if components is not None else self.components()
        out = np.zeros((len(prob.phases), prob.two_theta.size))
        for i in range(len(prob.phases)):
            sel = prob.comp_phase == i
            np.add.at(out[i], idx[sel].ravel(), c[sel].ravel())
        return out

    def unexplained_peaks(self, min_snr: float = 5.0) -> dict:
        """Significant peaks of the residual that no component explains (an unlisted phase, an
        impurity): :func:`xtaljax.em.residual.unexplained_peaks` with the components' Kα1
        positions, widths (η·2γ + (1 − η)·2.355σ) and intensities."""
        from .residual import unexplained_peaks

        prob, st = self.problem, self.state
        c = np.asarray(_positions_jit(prob, st.lattice, st.zero, st.displacement))  # (L, K): every line's peak
        n_lines = c.shape[0]
        eta = np.asarray(st.eta)
        fwhm = eta * 2 * np.asarray(st.gamma) + (1 - eta) * 2 * np.sqrt(2 * np.log(2)) * np.asarray(st.sigma)
        line = ["Kα1", "Kα2"] + [f"line {i + 1}" for i in range(2, n_lines)] if n_lines > 1 else [""]
        labels = [f"{prob.phases[p].name} ({' '.join(str(int(round(v))) for v in h)}){' ' + line[l] if line[l] else ''}"
                  for l in range(n_lines) for p, h in zip(prob.comp_phase, prob.hkl)]
        # integrated intensities in counts × degrees (the state's are summed over grid points)
        area = np.outer(prob.line_weights, np.asarray(st.intensity)) * float(np.median(np.diff(prob.two_theta)))
        return unexplained_peaks(prob.two_theta, self.y_obs, self.y_calc, c.ravel(), np.tile(fwhm, n_lines),
                                 area.ravel(), prob.wavelengths, min_snr=min_snr, labels=labels,
                                 peak_counts=self.y_calc - self.background)

    def weight_fractions(self, instrument) -> dict:
        """Phase fractions: ``hill_howard`` (scale of each phase from its extracted intensities
        against m|F|²·LP of the model, then Hill–Howard S·ZMV) and ``lp_quick`` (PyWPEM-style:
        Σ I/LP per phase, normalised)."""
        prob, st = self.problem, self.state
        calc, lp, zmv = calculated_intensities(prob, instrument, st.lattice)
        obs = np.asarray(st.intensity)
        scales, quick = [], []
        for i in range(len(prob.phases)):
            sel = prob.comp_phase == i
            scales.append(float(np.sum(obs[sel] * calc[sel]) / max(np.sum(calc[sel] ** 2), 1e-300)))
            quick.append(float(np.sum(obs[sel] / lp[sel])))
        hh = np.asarray(scales) * zmv
        q = np.asarray(quick)
        return {"hill_howard": (hh / hh.sum()).tolist(), "lp_quick": (q / q.sum()).tolist()}


def calculated_intensities(prob: EMProblem, instrument, lattice):
    """Model intensities of every reflection (Kα1 line, unit scale: m|F|²·LP as the simulator
    computes them), its LP factor, and each phase's Z·M·V (cell mass × volume)."""
    from ..core.reflections import Reflections
    from ..refine.rietveld import _site_labels

    calc = np.zeros(prob.n_reflections)
    lp = np.zeros(prob.n_reflections)
    zmv = []
    m_hkl, m_mult, m_comp = prob.members()
    with jax.enable_x64(True):
        for i, ph in enumerate(prob.phases):
            sel = prob.comp_phase[m_comp] == i  # the phase's reflections; a component sums its own
            params = dataclasses.replace(ph.params, lattice=jnp.asarray(lattice[i]))
            crystal = _expand_jit(ph.template, params)
            refl = Reflections(hkl=jnp.asarray(m_hkl[sel]), mask=jnp.asarray(m_mult[sel] / 2.0),
                               lattice0=jnp.asarray(crystal.lattice), g_max=jnp.asarray(1e3))
            ins = jax.tree_util.tree_map(lambda a: jnp.asarray(a), instrument).replace(scale=jnp.asarray(1.0))
            t = _peak_table_pmg(crystal, ins, refl)
            n = int(sel.sum())
            np.add.at(calc, m_comp[sel], np.asarray(t["intensity"])[:n])
            lp[m_comp[sel]] = np.asarray(t["lp"]).reshape(-1)[:n]  # equal within a component (same 2θ)
            _, masses = _site_labels(ph.info)
            o = np.asarray(ph.template.site_orbit)
            mk = np.asarray(ph.template.site_mask) > 0
            occ = np.asarray(ph.params.occupancy)
            m_orb = np.concatenate([masses, np.zeros(len(occ) - len(masses))])
            zmv.append(float(np.sum(m_orb[o][mk] * occ[o][mk])) * float(abs(np.linalg.det(np.asarray(crystal.lattice)))))
    return calc, lp, np.asarray(zmv)


def _stats(y, yc, sigma, n_params=0):
    from ..metrics import agreement

    return agreement(y, yc, sigma, n_params)


def decompose(two_theta, y_obs, phases: Sequence, instrument, *, sigma=None, n_background: int = 8,
              max_iter: int = 400, tol: float = 1e-9, widths: str = "caglioti", refine_zero: bool = True,
              search: float = 0.0, asymmetry: bool = False, refine_displacement: bool = False,
              fixed_background=None, accelerate: bool = True, init: tuple | None = None, problem: tuple | None = None,
              progress: bool = True) -> Decomposition:
    """Decompose one pattern. ``init=(problem, state)`` warm-starts from a previous result (a
    series); ``problem=(problem, state0)`` from :func:`build_problem` reuses the set-up and the
    compiled step (a fresh start). ``accelerate``: SQUAREM extrapolation of the EM fixed point
    (:func:`squarem_step`); ``max_iter`` counts EM evaluations either way. Stops when the
    relative change of the log-likelihood over one (accelerated) step is below ``tol``."""
    t0 = time.perf_counter()
    y = np.asarray(y_obs, np.float64)
    x = np.asarray(two_theta, np.float64)
    if y.shape != x.shape:
        raise DecompositionError("2θ and intensity differ in length")
    if not np.all(np.isfinite(y)):
        raise DecompositionError("the pattern contains NaN or infinite intensities")
    if np.any(y < 0):
        raise DecompositionError(f"the pattern has {int(np.sum(y < 0))} negative intensities: WPEM needs counts "
                                 "(add the subtracted background back, or shift the pattern)")
    if init is None and problem is None:
        prob, st = build_problem(x, phases, instrument, n_background=n_background, widths=widths, refine_zero=refine_zero,
                                 search=search, asymmetry=asymmetry, refine_displacement=refine_displacement,
                                 fixed_background=fixed_background)
    else:
        prob, st = init if init is not None else problem
        if prob.two_theta.shape != x.shape or not np.allclose(prob.two_theta, x):
            raise DecompositionError("a series needs the same 2θ grid for every pattern")
    with jax.enable_x64(True):
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        dx = jnp.asarray(np.gradient(x))
        basis = _basis(prob, xj)
        if init is None:
            st = _compiled(prob, "init", lambda: jax.jit(
                lambda s, y, x, dx, b: _initial_intensities(prob, s, y, x, dx, b)))(st, yj, xj, dx, basis)
        step = _compiled_step(prob)
        fast = _compiled(prob, "squarem", lambda: jax.jit(
            lambda s, y, x, dx, b: squarem_step(prob, s, y, x, dx, b)))
        n, shown, it0 = 0, 0, int(st.iteration)
        while n < max_iter:
            if accelerate and max_iter - n >= 4:
                st = fast(st, yj, xj, dx, basis)
            else:
                st = step(st, yj, xj, dx, basis)
            n = int(st.iteration) - it0
            if progress and (n >= shown + 10 or shown == 0):
                shown = n
                print(f"  EM iteration {n:4d}: log-likelihood {float(st.loglik):.10g}  (rel. change {float(st.rel_change):.2e})",
                      file=sys.stderr, flush=True)
            if float(st.rel_change) < tol:
                break
        total, peaks, bkg = _compiled(prob, "model", lambda: jax.jit(
            lambda s, x, dx, b: model_counts(prob, s, x, dx, b)))(st, xj, dx, basis)
    sig = np.sqrt(np.maximum(y, 1.0)) if sigma is None else np.asarray(sigma, np.float64)
    yc = np.asarray(total)
    stats = _stats(y, yc, sig, n_params=_n_params(prob))
    stats.update(pywpem_subset_factors(y, yc, np.asarray(bkg)))
    return Decomposition(problem=prob, state=st, y_obs=y, y_calc=yc, background=np.asarray(bkg),
                         stats=stats, n_iterations=n, seconds=time.perf_counter() - t0)


def pywpem_subset_factors(y, yc, background, fraction: float = 0.05) -> dict:
    """Rp and Rwp as PyWPEM 2026.10 computes them: only the points whose net observed intensity
    exceeds ``fraction`` of its maximum, Poisson weights 1/y on the total intensities."""
    net = y - background
    sel = (net > fraction * np.max(net)) & (y > 0)
    if not np.any(sel):
        return {"rwp_pywpem_subset": float("nan"), "rp_pywpem_subset": float("nan"), "n_subset": 0}
    r = yc[sel] - y[sel]
    return {"rwp_pywpem_subset": float(100 * np.sqrt(np.sum(r * r / y[sel]) / np.sum(y[sel]))),
            "rp_pywpem_subset": float(100 * np.sum(np.abs(r)) / np.sum(y[sel])), "n_subset": int(sel.sum())}


def _n_params(prob: EMProblem) -> int:
    per_refl = 2 if prob.widths == "caglioti" else 4  # I, η (+ σ, γ when free)
    return (per_refl * prob.n_reflections + (5 if prob.widths == "caglioti" else 0) + int(prob.lat_free.sum())
            + int(prob.refine_zero) + int(prob.refine_displacement) + int(prob.asymmetry)
            + (prob.n_background if prob.background_curve is None else 0))


def _scan_lattice(prob, st, net, x):
    """Scale the phases' cell lengths by factors (1 + s), s on a grid in ±search, that maximise
    Σ_k w_k net(2θ_k(s)) over each phase's reflections (w: model intensities, normalised per
    phase); pure JAX. Greedy over phases, strongest match first; the points within a FWHM of
    a placed phase's peaks are taken out of ``net`` before the next phase is scanned, so a minor
    phase does not lock onto a major phase's peaks."""
    if prob.search == 0 or prob.calc0 is None:
        return st
    n_ph = len(prob.phases)
    s_grid = jnp.linspace(-prob.search, prob.search, prob.search_steps)
    shift = positions(prob, st.lattice, st.zero, st.displacement)[0] - positions(prob, st.lattice, 0.0)[0]
    c1 = positions(prob, st.lattice, 0.0)[0]  # (K,) Kα1 Bragg angles at s = 0 (no zero, no displacement)
    sin0 = jnp.sin(jnp.deg2rad(c1 / 2))
    # d → d(1+s): sin θ → sin θ / (1+s)
    pos = 2 * RAD * jnp.arcsin(jnp.clip(sin0[None, :] / (1 + s_grid[:, None]), 0, 1 - 1e-12)) + shift[None, :]  # (S, K)
    onehot = jnp.asarray(np.eye(n_ph)[prob.comp_phase].T)  # (P, K)
    w = jnp.asarray(prob.calc0)
    half = 2.355 * jnp.asarray(prob.sigma0)  # a FWHM either side
    placed = jnp.zeros(n_ph, bool)
    scale = jnp.zeros(n_ph)
    for _ in range(n_ph):
        val = jnp.interp(pos, x, net, left=0.0, right=0.0) * w[None, :]  # (S, K)
        score = val @ onehot.T  # (S, P)
        best = jnp.max(score, axis=0)
        p = jnp.argmax(jnp.where(placed, -jnp.inf, best))
        s_p = s_grid[jnp.argmax(score[:, p])]
        placed = placed.at[p].set(True)
        scale = scale.at[p].set(s_p)
        if n_ph > 1:
            c_p = 2 * RAD * jnp.arcsin(jnp.clip(sin0 / (1 + s_p), 0, 1 - 1e-12)) + shift
            near = (jnp.abs(x[None, :] - c_p[:, None]) < half[:, None]) & (onehot[p][:, None] > 0)
            net = jnp.where(jnp.any(near, axis=0), 0.0, net)
    lm = np.asarray(prob.lat_m)
    length = jnp.asarray((np.abs(lm[:, :3, :]).sum(axis=1) > 0) & (np.asarray(prob.lat_free) > 0))  # (P, 6)
    lattice = jnp.where(length, st.lattice * (1 + scale[:, None]), st.lattice)
    return st._replace(lattice=lattice)


def _initial_intensities(prob, st, y, x, dx, basis):
    """Background from a clipped Chebyshev fit (lower envelope), the isotropic-strain scan of
    every phase's cell (:func:`_scan_lattice`), intensities from the net counts under each peak."""
    n = prob.n_background
    pinv = jnp.linalg.pinv(basis)  # the 20 clipped least-squares fits share one factorisation

    def clip_fit(_, yb):
        return jnp.minimum(y, basis @ (pinv @ yb))

    if prob.background_curve is not None:  # the given background
        coef = jnp.ones(1)
    else:
        yb = lax.fori_loop(0, 19, clip_fit, y)
        coef = pinv @ yb
    fit = basis @ coef
    net = jnp.maximum(y - fit, 0.0)
    st = _scan_lattice(prob, st, net, x)
    c = positions(prob, st.lattice, st.zero, st.displacement)[0]
    idx = jnp.clip(jnp.searchsorted(x, c), 0, x.shape[0] - 1)
    height = net[idx]
    fwhm = 2.355 * st.sigma
    intensity = jnp.maximum(height * fwhm, 1e-3 * jnp.max(net) * jnp.mean(dx))
    return st._replace(intensity=intensity, background=coef[:n])


_STEP_CACHE: dict = {}


def _problem_key(prob: EMProblem) -> str:
    """Digest of everything a compiled EM program reads from ``prob`` (its arrays become
    constants of the program): equal problems — the same phases, grid and settings built again,
    e.g. one ``decompose`` call per file — share their compiled programs."""
    import hashlib

    h = hashlib.sha1()
    for f in dataclasses.fields(prob):
        v = getattr(prob, f.name)
        if f.name == "phases":
            h.update(repr([p.name for p in v]).encode())
        elif isinstance(v, np.ndarray):
            h.update(f"{f.name}{v.dtype}{v.shape}".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        else:
            h.update(f"{f.name}={v!r}".encode())
    return h.hexdigest()


def _compiled(prob: EMProblem, name: str, make):
    key = (_problem_key(prob), name)
    if key not in _STEP_CACHE:
        _STEP_CACHE[key] = make()
    return _STEP_CACHE[key]


def _compiled_step(prob: EMProblem):
    key = (_problem_key(prob), "step")
    if key not in _STEP_CACHE:
        _STEP_CACHE[key] = jax.jit(lambda st, y, x, dx, basis: em_step(prob, st, y, x, dx, basis))
    return _STEP_CACHE[key]


def decompose_batch(two_theta, y_batch, phases, instrument, *, n_iter: int = 100, n_background: int = 8,
                    widths: str = "caglioti", refine_zero: bool = True, search: float = 0.0,
                    asymmetry: bool = False, refine_displacement: bool = False, fixed_background=None,
                    problem: tuple | None = None,
                    chunk: int | None = 16,
                    track: bool = False, mesh=None):
    """Decompose many patterns on one grid with one compiled program (``vmap`` over patterns, a
    fixed number of EM iterations). Returns ``(problem, states)`` with a leading batch axis.
    ``problem=(problem, state0)`` reuses a set-up (and its compiled program). ``chunk``: patterns
    per vmapped call (the E-step holds lines × reflections × points per pattern; on a CPU a
    200-pattern call needed 15 GB); ``None`` = all at once (accelerators). ``track=True`` (a
    series in order): each chunk starts from the lattices and zero its predecessor reached on
    its last pattern, so a cell that drifts by more than the capture range of one EM run (about
    a FWHM at the highest angle) is followed; the first chunk starts from the given cells.
    ``mesh`` (a :func:`xtaljax.parallel.batch_mesh`): each chunk's patterns are split over its
    devices (chunk rounded up to a multiple of the device count); same per-pattern numerics."""
    x = np.asarray(two_theta, np.float64)
    yb = np.asarray(y_batch, np.float64)
    if yb.ndim != 2 or yb.shape[1] != x.size:
        raise DecompositionError(f"y_batch must be (batch, {x.size})")
    if not np.all(np.isfinite(yb)) or np.any(yb < 0):
        bad = np.flatnonzero(~np.all(np.isfinite(yb) & (yb >= 0), axis=1))
        raise DecompositionError(f"pattern(s) {bad.tolist()} contain NaN or negative values")
    prob, st0 = problem or build_problem(x, phases, instrument, n_background=n_background, widths=widths,
                                         refine_zero=refine_zero, search=search, asymmetry=asymmetry,
                                         refine_displacement=refine_displacement, fixed_background=fixed_background)
    if prob.two_theta.shape != x.shape or not np.allclose(prob.two_theta, x):
        raise DecompositionError("the given problem was built on another 2θ grid")
    with jax.enable_x64(True):
        key = (_problem_key(prob), "batch", n_iter)
        if key not in _STEP_CACHE:
            xj = jnp.asarray(x)
            dx = jnp.asarray(np.gradient(x))
            basis = _basis(prob, xj)

            def run(y, st0):
                st = _initial_intensities(prob, st0, y, xj, dx, basis)
                return lax.fori_loop(0, n_iter, lambda i, s: em_step(prob, s, y, xj, dx, basis), st)

            _STEP_CACHE[key] = jax.jit(jax.vmap(run, in_axes=(0, None)))
        fn = _STEP_CACHE[key]
        n = yb.shape[0]
        size = n if not chunk else min(int(chunk), n)
        if mesh is not None:  # split each chunk over the mesh's devices (see xtaljax.parallel)
            from ..parallel import replicate, round_up, shard_leading, sharded_vmap
            size, on_mesh = round_up(size, mesh), sharded_vmap(fn, mesh, 1, 1, already_batched=True)
            fn = lambda b, s: on_mesh(shard_leading(b, mesh)[0], replicate(s, mesh))  # noqa: E731
        parts = []
        start_state = st0
        for start in range(0, n, size):
            block = yb[start:start + size]
            pad = size - block.shape[0]
            if pad:  # same shape every call: one compilation
                block = np.concatenate([block, np.repeat(block[-1:], pad, axis=0)])
            out = fn(jnp.asarray(block), start_state)
            if track:
                last = size - pad - 1
                start_state = st0._replace(lattice=out.lattice[last], zero=out.zero[last],
                                           displacement=out.displacement[last])
            parts.append(jax.tree_util.tree_map(lambda a: a[: size - pad], out))
        states = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *parts)
    return prob, states
