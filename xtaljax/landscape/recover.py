"""Gradient-descent recovery of distorted structures (optax Adam, vmapped over all starts).

One structure is symmetrised (:func:`xtaljax.io.spacegroups.symmetrize`, spglib standard setting);
the **primitive cell** of its standard cell (:func:`primitive_cell`; the standard cell itself
for a P lattice) is the **truth** and ``simulate(truth)`` the target pattern. Each distortion
(:mod:`.distort`) of the truth is the start of one run in each parametrisation; every run is
simulated in that primitive cell (:func:`reduce_cell` after the expansion):

* ``"free"``: P1 — every atom of the primitive cell (its standard-cell fractional coordinates)
  plus the six parameters (a, b, c, α, β, γ) of the standard cell.
* ``"family"``: P1 coordinates, lattice restricted to the true crystal family (the template's
  ``lat_m``/``lat_k`` tables, :func:`xtaljax.core.symmetry.lattice_family_tables`); the start's
  cell is projected onto the family (:func:`xtaljax.core.symmetry.project_lattice`, least squares).
* ``"wyckoff"``: the full symmetry template: family lattice parameters and the free Wyckoff
  coordinates u of each orbit (``x = R (x0 + B u) + t``); the start is the least-squares
  projection of the distorted coordinates onto the template (all images of each orbit in the
  primitive cell). These lanes use the Laue-merged reflection list (``Target.reflections_sym``).

All three are written as one map ``(template, q, u) → Crystal`` — the P1 cases use a trivial
template (one orbit per site, basis I) — so every (parametrisation, metric, distortion) of one
structure is one *lane* of a ``vmap``-ed, jitted ``lax.scan`` of Adam steps (two groups: the P1
lanes with the full reflection list, the Wyckoff lanes with the merged one; on a CPU the lanes
run in chunks of one metric each, the chunk's metric picked by ``lax.switch``; unchunked, a
lane's metric is a one-hot weight), so the metrics share the compiled body; one compilation per
structure shape. Lattice variables are preconditioned: the optimiser sees lengths relative to
their starting value and angles in radians (``p = q · s``), coordinates are fractional, so one
learning rate fits all.

Optimiser: ``optax.adam`` with a cosine-decay schedule (to 5 % of ``lr``) for a fixed number of
steps; non-finite gradient entries are zeroed. Every run keeps its **best iterate** (lowest loss
seen), which is what is matched and whose distance to the truth is reported (``best_loss``,
``dist_final``); the last iterate's loss is ``final_loss``. Runs whose cell left the enumerated
reflections at any step are flagged in ``overflow`` (their patterns may miss peaks).

Matching: pymatgen ``StructureMatcher(ltol, stol, angle_tol)`` (defaults ``ltol=0.2``,
``stol=0.3``, ``angle_tol=5``: pymatgen's own defaults, also the usual CSP-benchmark values for
"same structure") between the final and the true structure, and its ``get_rms_dist`` (RMS
displacement normalised by (V/N)^(1/3), pymatgen's convention) for matched pairs. Also reported:
the known-correspondence RMS displacement in Å (:func:`.distort.displacement_rms`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..core.crystal import Crystal
from ..core.instrument import Instrument
from ..core.lattice import lattice_parameters
from ..core.pattern import SimConfig, reflections_for, resolve_config, simulate
from ..core.reflections import merge_equivalents
from ..core.symmetry import SymmetryParams, SymmetryTemplate, expand
from .distort import DistortionSpec, displacement_rms, distort
from .metrics import METRICS, get_metric

PARAMETRISATIONS = ("free", "family", "wyckoff")
DEFAULT_TWO_THETA = (10.0, 80.0, 0.05)  # start, stop (inclusive), step in degrees
MATCHER_DEFAULTS = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}


def default_grid() -> np.ndarray:
    a, b, s = DEFAULT_TWO_THETA
    return np.round(np.arange(a, b + s / 2, s), 10)


def default_instrument() -> Instrument:
    """Cu Kα1 only, the generic lab profile of :meth:`Instrument.create` (FWHM ≈ 0.05–0.1°)."""
    return Instrument.lab("Cu", kalpha2=False)


# ----------------------------------------------------------------------------------------------
# the target structure
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    """A symmetrised true structure and everything the runs share (host objects and arrays)."""

    name: str
    template: SymmetryTemplate
    params: SymmetryParams
    info: object  # SymmetryInfo
    crystal: Crystal  # the truth: the primitive cell of the standard cell (see ``cell``)
    structure: object  # pymatgen Structure of ``crystal``
    instrument: Instrument
    two_theta: np.ndarray
    config: SimConfig
    reflections: object
    pattern: jax.Array
    #: ``(P, P⁻¹, keep)``: the primitive cell of the standard (conventional) cell that
    #: ``template`` expands to: lattice ``P @ L``, fractional coordinates ``x[keep] @ P⁻¹``
    #: (:func:`reduce_cell`; ``P = I`` and every row kept for a primitive lattice or
    #: ``load_target(primitive=False)``)
    cell: tuple = None
    standard: Crystal | None = None  # the standard (conventional) cell of the truth
    #: ``reflections`` with the rows related by the space group's Laue class merged (exact for
    #: every structure the symmetry template can express: the Wyckoff lanes)
    reflections_sym: object = None

    @property
    def n_sites(self) -> int:
        return int(np.asarray(self.crystal.mask).sum())


#: primitive basis of each centred standard setting (spglib's; rows: primitive vectors in
#: conventional fractional coordinates; R: hexagonal axes, obverse)
_CENTRING = {
    "A": ((1, 0, 0), (0, 0.5, -0.5), (0, 0.5, 0.5)),
    "B": ((0.5, 0, -0.5), (0, 1, 0), (0.5, 0, 0.5)),
    "C": ((0.5, -0.5, 0), (0.5, 0.5, 0), (0, 0, 1)),
    "I": ((-0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.5, 0.5, -0.5)),
    "F": ((0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)),
    "R": ((2 / 3, 1 / 3, 1 / 3), (-1 / 3, 1 / 3, 1 / 3), (-1 / 3, -2 / 3, 1 / 3)),
}


def primitive_cell(symbol: str, crystal: Crystal, tol: float = 1e-4):
    """``(P, keep)`` of a standard-setting crystal with Hermann–Mauguin ``symbol``: ``P`` (3, 3)
    maps the conventional lattice to a primitive one (``L_p = P @ L``) and ``keep`` lists one
    site row per lattice-translation class (the sites of the primitive cell). The identity and
    every real row for a primitive (P) lattice. Raises ``ValueError`` if the sites do not fall
    into classes of equal size ``det(P)⁻¹`` (the structure is not centred as its symbol says)."""
    mask = np.asarray(crystal.mask) > 0
    rows = np.flatnonzero(mask)
    letter = str(symbol).strip()[:1].upper()
    if letter not in _CENTRING:
        return np.eye(3), rows
    p = np.asarray(_CENTRING[letter], np.float64)
    x = np.asarray(crystal.frac, np.float64)[rows] @ np.linalg.inv(p)
    keep, seen = [], []
    for i, xi in zip(rows, x):
        if any(np.all(np.abs((xi - xj + 0.5) % 1.0 - 0.5) < tol) for xj in seen):
            continue
        seen.append(xi)
        keep.append(i)
    ratio = int(round(1.0 / abs(np.linalg.det(p))))
    if len(keep) * ratio != rows.size:
        raise ValueError(f"{symbol}: {rows.size} sites do not reduce to a primitive cell of 1/{ratio} "
                         f"the volume ({len(keep)} translation classes)")
    return p, np.asarray(keep, np.int64)


def reduce_cell(crystal: Crystal, cell) -> Crystal:
    """The primitive-cell crystal of a conventional ``crystal`` (traced; ``cell = (P, P⁻¹, keep)``,
    see :attr:`Target.cell`). Coordinates are not wrapped: the result is differentiable and
    equals the conventional structure exactly."""
    p, p_inv, keep = cell
    return Crystal(lattice=p @ crystal.lattice, frac=crystal.frac[keep] @ p_inv, species=crystal.species[keep],
                   occupancy=crystal.occupancy[keep], b_iso=crystal.b_iso[keep], mask=crystal.mask[keep])


def load_target(structure, *, name: str | None = None, space_group: int | None = None, two_theta=None,
                instrument: Instrument | None = None, config: SimConfig | None = None, symprec: float = 0.01,
                margin: float = 0.15, primitive: bool = True) -> Target:
    """Symmetrise ``structure`` (pymatgen ``Structure`` or CIF path) and simulate its pattern.

    The template expands to spglib's standard (conventional) cell; with ``primitive`` (default)
    the truth, the runs and the reflection list are in its primitive cell (:func:`primitive_cell`;
    the same as the standard cell for a P lattice): 1/2 (A, B, C, I), 1/3 (R) or 1/4 (F) of the
    atoms and of the reflections, so a gradient step costs 1/4 to 1/16 of the conventional one.
    The MP-20 files hold primitive cells too, so distortions act on the cell the data gives.

    ``space_group``: the group the study must use; a ``ValueError`` if spglib finds another one
    (e.g. asking for Fm-3m on a structure that is only P4/mmm). ``margin``: relative reflection
    enumeration margin — runs whose cell strays further are flagged ``overflow``.
    """
    from ..io.spacegroups import symmetrize
    from ..io.structures import load_structure, to_pymatgen

    if not isinstance(structure, (str, bytes)) and not hasattr(structure, "__fspath__"):
        label = name or getattr(structure, "formula", "structure")
    else:
        label = name or str(structure)
        structure = load_structure(structure)
    if space_group is not None and not 1 <= int(space_group) <= 230:
        raise ValueError(f"space group must be in 1..230, got {space_group}")
    template, params, info = symmetrize(structure, symprec=symprec, return_info=True)
    if space_group is not None and int(space_group) != info.space_group:
        raise ValueError(f"{label}: structure has space group {info.space_group} ({info.symbol}), "
                         f"not the requested {int(space_group)}")
    inst = instrument or default_instrument()
    tt = default_grid() if two_theta is None else np.asarray(two_theta, np.float64)
    standard = jax.jit(expand)(template, params)
    dt = standard.frac.dtype
    if primitive:
        p, keep = primitive_cell(info.symbol, standard)
    else:
        p, keep = np.eye(3), np.arange(standard.frac.shape[0])
    cell = (jnp.asarray(p, dt), jnp.asarray(np.linalg.inv(p), dt), jnp.asarray(keep, jnp.int32))
    crystal = reduce_cell(standard, cell)
    cfg = resolve_config(config, inst, tt)
    if cfg.species_slots is None:  # every lane keeps the truth's elements: form factors per element
        cfg = dataclasses.replace(cfg, species_slots=int(np.unique(np.asarray(crystal.species)).size))
    refl = _trim(reflections_for(crystal, inst, tt, cfg, margin=margin))
    refl_sym = _trim(merge_equivalents(refl, _rotations_in(p, info.rotations)))
    y = simulate(crystal, inst, tt, refl, cfg)
    return Target(name=label, template=template, params=params, info=info, crystal=crystal,
                  structure=to_pymatgen(crystal), instrument=inst, two_theta=tt, config=cfg, reflections=refl,
                  pattern=y, cell=cell, standard=standard, reflections_sym=refl_sym)


def _trim(refl, multiple: int = 16):
    """``refl`` with its padding cut to the next multiple of ``multiple`` rows (the capacity
    buckets of :mod:`xtaljax.core.reflections` pad by up to 50 %; every row costs the same in a
    gradient step, and a study compiles once per structure anyway)."""
    n = int(np.count_nonzero(np.asarray(refl.mask)))
    cap = max(multiple, -(-n // multiple) * multiple)
    if cap >= refl.capacity:
        return refl
    return dataclasses.replace(refl, hkl=refl.hkl[:cap], mask=refl.mask[:cap])


def _rotations_in(p, rotations) -> np.ndarray:
    """The point-group ``rotations`` (standard-cell fractional coordinates, spglib's) in the
    primitive basis ``L_p = P L``: ``R_p = P⁻ᵀ R Pᵀ`` (integer for the lattice's own point group)."""
    p = np.asarray(p, np.float64)
    r = np.einsum("ij,njk,kl->nil", np.linalg.inv(p.T), np.asarray(rotations, np.float64), p.T)
    ri = np.rint(r)
    if np.max(np.abs(r - ri), initial=0.0) > 1e-6:
        raise ValueError("a point-group operation is not integral in the primitive basis")
    return ri.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# lanes: (template, lattice scale, B, occupancy) per parametrisation, starts per distortion
# ----------------------------------------------------------------------------------------------

def _lattice_scale(lat_m, p0):
    """Preconditioner s per free lattice parameter: |p0| for lengths, 180/π for angles."""
    lat_m = np.asarray(lat_m)
    s = np.ones(6)
    for j in range(6):
        rows = np.nonzero(np.abs(lat_m[:, j]) > 0)[0]
        if rows.size == 0:
            continue
        s[j] = abs(p0[j]) if rows.max() <= 2 else 180.0 / math.pi
        if s[j] == 0:
            s[j] = 1.0
    return s


def _pad_rows(a, n):
    a = np.asarray(a)
    return np.concatenate([a, np.zeros((n - a.shape[0],) + a.shape[1:], a.dtype)]) if a.shape[0] < n else a


def _lane_templates(target: Target):
    """``{mode: (template, b_iso, occupancy, cell)}``, all with the standard template's number of
    site rows, so every lane of a structure has the same shapes.

    The Wyckoff lanes expand the symmetry template to the standard cell and keep its primitive
    cell's rows (``target.cell``). The P1 lanes have one orbit per atom of the primitive cell
    (rows beyond it are padding) whose free coordinates are its conventional fractional
    coordinates, ``x_p = x_c P⁻¹``: the same reduction then gives the primitive crystal."""
    t, p = target.template, target.params
    c = target.crystal
    n = np.asarray(t.site_orbit).shape[0]
    n_p = c.frac.shape[0]
    dt = c.frac.dtype
    cell_p, cell_pinv, keep = target.cell
    mask = _pad_rows(np.asarray(c.mask), n)
    eye = np.broadcast_to(np.eye(3), (n, 3, 3))
    p1 = dict(x0=np.zeros((n, 3)), basis=eye, coord_free=np.repeat(mask[:, None], 3, 1),
              species=_pad_rows(np.asarray(c.species), n), site_orbit=np.arange(n, dtype=np.int32), site_rot=eye,
              site_trans=np.zeros((n, 3)), site_mask=mask)
    free_lat = dict(lat_m=np.eye(6), lat_k=np.zeros(6), lat_free=np.ones(6))
    fam_lat = dict(lat_m=np.asarray(t.lat_m), lat_k=np.asarray(t.lat_k), lat_free=np.asarray(t.lat_free))
    wy = dict(x0=_pad_rows(t.x0, n), basis=_pad_rows(t.basis, n), coord_free=_pad_rows(t.coord_free, n),
              species=_pad_rows(t.species, n), site_orbit=np.asarray(t.site_orbit), site_rot=np.asarray(t.site_rot),
              site_trans=np.asarray(t.site_trans), site_mask=np.asarray(t.site_mask))

    def mk(lat, sites):
        arrs = {**lat, **sites}
        return SymmetryTemplate(**{k: jnp.asarray(v, jnp.int32 if k in ("species", "site_orbit") else dt)
                                   for k, v in arrs.items()}, space_group=jnp.asarray(int(t.space_group), jnp.int32))

    cell_p1 = (cell_p, cell_pinv, jnp.arange(n_p, dtype=jnp.int32))
    cell_wy = (cell_p, cell_pinv, jnp.asarray(keep, jnp.int32))
    b_p1, occ_p1 = _pad_rows(np.asarray(c.b_iso), n), _pad_rows(np.asarray(c.occupancy), n)
    b_wy, occ_wy = _pad_rows(p.b_iso, n), _pad_rows(p.occupancy, n)
    return {"free": (mk(free_lat, p1), b_p1, occ_p1, cell_p1), "family": (mk(fam_lat, p1), b_p1, occ_p1, cell_p1),
            "wyckoff": (mk(fam_lat, wy), b_wy, occ_wy, cell_wy)}


def _project_coords(template: SymmetryTemplate, frac, n_rows: int, rows=None) -> np.ndarray:
    """Least-squares free coordinates u (n_rows, 3) of the template closest to P1 ``frac``
    (standard-cell coordinates of the template's site rows): for every image n of orbit o,
    R_n B_o u_o ≈ wrap(x_n − R_n x0_o − t_n). ``rows``: use only these site rows (the primitive
    cell's; default all)."""
    x0 = np.asarray(template.x0, np.float64)
    basis = np.asarray(template.basis, np.float64)
    free = np.asarray(template.coord_free, np.float64)
    orb = np.asarray(template.site_orbit)
    rot = np.asarray(template.site_rot, np.float64)
    trans = np.asarray(template.site_trans, np.float64)
    smask = np.asarray(template.site_mask) > 0
    if rows is not None:
        only = np.zeros_like(smask)
        only[np.asarray(rows)] = True
        smask = smask & only
    u = np.zeros((n_rows, 3))
    for o in range(x0.shape[0]):
        d = int(free[o].sum())
        sel = np.nonzero(smask & (orb == o))[0]
        if d == 0 or sel.size == 0:
            continue
        a_rows, b_rows = [], []
        for s in sel:
            r = rot[s]
            resid = frac[s] - r @ x0[o] - trans[s]
            a_rows.append(r @ basis[o][:, :d])
            b_rows.append(resid - np.round(resid))
        sol = np.linalg.lstsq(np.concatenate(a_rows), np.concatenate(b_rows), rcond=None)[0]
        u[o, :d] = sol
    return u


def _six(lattice) -> np.ndarray:
    return lattice_parameters(np.asarray(lattice, np.float64))


def make_starts(target: Target, lattices, fracs):
    """Per parametrisation: ``(q (n, 6), u (n, rows, 3), s (6,))`` starts from distorted
    ``lattices (n, 3, 3)`` and ``fracs (n, sites, 3)`` of ``target.crystal`` (its primitive
    cell, same site order). Lattice parameters are those of the standard cell ``P⁻¹ L``."""
    lanes = _lane_templates(target)
    rows = np.asarray(target.template.site_orbit).shape[0]
    p, p_inv, keep = (np.asarray(a) for a in target.cell)
    p, p_inv = p.astype(np.float64), p_inv.astype(np.float64)
    x_true = np.asarray(target.crystal.frac, np.float64) @ p  # standard-cell coordinates of the kept rows
    mask = np.asarray(target.crystal.mask)[:, None]
    out = {}
    six0 = _six(p_inv @ np.asarray(target.crystal.lattice, np.float64))
    for mode, (tpl, _, _, _) in lanes.items():
        m = np.asarray(tpl.lat_m, np.float64) * np.asarray(tpl.lat_free, np.float64)[None, :]
        k = np.asarray(tpl.lat_k, np.float64)
        pinv = np.linalg.pinv(m)
        s = _lattice_scale(m, pinv @ (six0 - k))
        qs, us = [], []
        for lat, frac in zip(lattices, fracs):
            qs.append(pinv @ (_six(p_inv @ np.asarray(lat, np.float64)) - k) / s)  # free: the six; family: projection
            # standard-cell coordinates, each atom on the primitive-lattice image nearest its truth
            x = np.asarray(frac, np.float64) @ p
            x = x - np.rint((x - x_true) @ p_inv) @ p
            if mode == "wyckoff":
                full = np.zeros((rows, 3))
                full[keep] = x
                us.append(_project_coords(tpl, full, rows, keep))
            else:
                us.append(_pad_rows(x * mask, rows))
        out[mode] = (np.stack(qs), np.stack(us), s)
    return out


# ----------------------------------------------------------------------------------------------
# the vmapped optimiser
# ----------------------------------------------------------------------------------------------

def _crystal(lane, q, u):
    """The (primitive-cell) crystal of one lane ``(template, s, b, occ, cell[, w])`` at ``(q, u)``."""
    template, s, b, occ, cell = lane[:5]
    return reduce_cell(expand(template, SymmetryParams(lattice=q * s, coords=u, b_iso=b, occupancy=occ)), cell)


#: lanes per vmap on a CPU (see ``recover(lane_chunk=)``)
LANE_CHUNK_CPU = 50


@functools.lru_cache(maxsize=32)
def _runner(metric_key: tuple, tt_key: bytes, config: SimConfig, steps: int, lr: float, groups: tuple | None = None,
            chunk: int | None = None):
    """Jitted ``run(lanes, q0, u0, inst, tt, refl, target_y) -> (q_last, u_last, q_best, u_best,
    losses (L, steps + 1), best_loss (L,), overflow (L,))``; one compilation per shape.

    A lane is ``(template, s, b, occ, cell, w)`` with ``w`` one weight per metric of
    ``metric_key`` (one-hot: the lane's metric).

    ``groups``: ``((lanes, reflection-list index), ...)`` consecutive lane groups, each its own
    ``vmap`` with ``refl[index]`` (``refl`` is then a tuple of lists: the Wyckoff lanes use the
    Laue-merged list). Without ``chunk`` every metric is evaluated on each lane's pattern and the
    lane's own kept (one ``vmap`` for lanes of all metrics). ``chunk``: lanes per ``vmap``; every
    group must hold a whole number of chunks and **every chunk lanes of one metric** (the caller
    pads, see :func:`recover`). The chunks of a group run one after the other through
    ``lax.map`` (compiled once), which keeps a step's working set in cache on a CPU (50 lanes:
    5,700 against 3,050 lane-steps/s), and each chunk computes only its own metric (a
    ``lax.switch`` on the chunk's metric outside the ``vmap``; evaluating all three metrics on
    every lane cost 25 % of a step)."""
    tt = np.frombuffer(tt_key, np.float64)
    metrics = [get_metric(name, tt, **dict(opts)) for name, opts in metric_key]
    import optax

    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))

    def lane_loss(q, u, lane, inst, tt_j, refl, y_t, k):
        crystal = _crystal(lane, q, u)
        y, info = simulate(crystal, inst, tt_j, refl, config, return_info=True)
        if len(metrics) == 1:
            return metrics[0].loss(y, y_t), info["overflow"]
        if k is not None:  # the chunk's metric (not batched: a real branch)
            return jax.lax.switch(k, [m.loss for m in metrics], y, y_t), info["overflow"]
        w = lane[5]
        loss = sum(jnp.where(w[j] > 0, m.loss(y, y_t), 0.0) for j, m in enumerate(metrics))
        return loss, info["overflow"]

    def run_one(lane, q0, u0, inst, tt_j, refl, y_t, k=None):
        vg = jax.value_and_grad(lambda qu: lane_loss(qu[0], qu[1], lane, inst, tt_j, refl, y_t, k), has_aux=True)
        state0 = opt.init((q0, u0))
        inf = jnp.asarray(jnp.inf, q0.dtype)

        def step(carry, i):
            qu, st, ovf, best, best_qu = carry
            (val, o), g = vg(qu)
            # best iterate so far (the value belongs to the parameters before this update)
            better = val < best
            best_qu = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), qu, best_qu)
            best = jnp.where(better, val, best)
            g = jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), g)
            upd, st = opt.update(g, st, qu)
            # the last pass only evaluates the final iterate (its update is dropped): one compiled
            # body instead of the step plus a separate forward pass (less to compile)
            qu = jax.tree_util.tree_map(lambda new, old: jnp.where(i < steps, new, old), optax.apply_updates(qu, upd), qu)
            return (qu, st, ovf | o, best, best_qu), val

        init = ((q0, u0), state0, jnp.asarray(False), inf, (q0, u0))
        (qu, _, ovf, best, best_qu), hist = jax.lax.scan(step, init, jnp.arange(steps + 1))
        return qu[0], qu[1], best_qu[0], best_qu[1], hist, best, ovf

    axes = (0, 0, 0, None, None, None, None)
    if groups is None:
        return jax.jit(jax.vmap(run_one, in_axes=axes))
    one = jax.vmap(run_one, in_axes=axes)
    one_k = jax.vmap(run_one, in_axes=axes + (None,))
    if chunk:
        for n_group, _ in groups:
            if n_group % int(chunk):
                raise ValueError(f"a group of {n_group} lanes is not a whole number of chunks of {chunk}")

    def run_groups(lanes, q0, u0, inst, tt_j, refls, y_t):
        outs, off = [], 0
        for n_group, i in groups:
            refl = refls[i]
            take = lambda x, off=off, n=n_group: x[off:off + n]  # noqa: E731
            args = (jax.tree_util.tree_map(take, lanes), take(q0), take(u0))
            if not chunk or int(chunk) == n_group and len(metrics) == 1:
                outs.append(one(*args, inst, tt_j, refl, y_t))
            else:  # equal chunks one after the other (lax.map: compiled once), one metric each
                size = int(chunk)
                head = jax.tree_util.tree_map(lambda x: x.reshape((n_group // size, size) + x.shape[1:]), args)

                def body(a, refl=refl):
                    k = jnp.argmax(a[0][5][0]) if len(metrics) > 1 else None  # the chunk's metric
                    return one_k(*a, inst, tt_j, refl, y_t, k)

                res = jax.lax.map(body, head)
                outs.append(jax.tree_util.tree_map(lambda x: x.reshape((n_group,) + x.shape[2:]), res))
            off += n_group
        return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *outs)

    return jax.jit(run_groups)


def chunk_layout(n_segments: int, segment: int, chunk: int | None):
    """Chunk size ``c`` and lane order for ``n_segments`` consecutive segments of ``segment`` lanes
    (a segment: one parametrisation and metric) run in chunks of at most ``chunk`` lanes, each
    chunk inside one segment: ``c = ⌈segment / ⌈segment / chunk⌉⌉`` and every segment padded to a
    multiple of ``c`` by repeating its last lane. Returns ``(c, order, real)``: ``order`` indexes
    the lanes of the padded layout, ``real`` the positions in it of the original lanes (in their
    order). ``chunk=None``: no chunks and no padding (``c = None``)."""
    idx = np.arange(n_segments * segment).reshape(n_segments, segment)
    if not chunk:
        flat = idx.reshape(-1)
        return None, flat, np.arange(flat.size)
    c = -(-segment // -(-segment // int(chunk)))
    padded = -(-segment // c) * c
    order = np.concatenate([idx, np.repeat(idx[:, -1:], padded - segment, axis=1)], axis=1)
    real = (np.arange(n_segments)[:, None] * padded + np.arange(segment)[None, :]).reshape(-1)
    return c, order.reshape(-1), real


@dataclasses.dataclass
class RecoveryResult:
    """Arrays indexed ``[parametrisation, metric, distortion]`` (orders in ``modes``/``metrics``)."""

    name: str
    modes: tuple
    metrics: tuple
    start_loss: np.ndarray
    final_loss: np.ndarray  # loss of the last iterate
    best_loss: np.ndarray  # lowest loss seen (the iterate that is matched and reported)
    loss_history: np.ndarray  # [..., steps + 1] (every step, then the final value)
    start_matched: np.ndarray  # the start already matches the truth (StructureMatcher)
    matched: np.ndarray  # the best iterate matches the truth
    rms: np.ndarray  # StructureMatcher normalised RMS (NaN when not matched)
    dist_start: np.ndarray  # known-correspondence RMS displacement to the truth, Å
    dist_final: np.ndarray
    overflow: np.ndarray
    final_structures: list  # [mode][metric][distortion] pymatgen Structures
    timings: dict
    #: the matching still running in a worker process (``recover(executor=)``); see :meth:`wait`
    _pending: object = dataclasses.field(default=None, repr=False)

    def wait(self) -> "RecoveryResult":
        """Complete a result whose matching was handed to an executor (no-op otherwise)."""
        if self._pending is not None:
            job, self._pending = self._pending, None
            self._complete(job.result())
        return self

    def _complete(self, res: dict) -> None:
        shape = self.best_loss.shape
        n_m, n_k, n_d = shape
        self.matched = res["matched"].reshape(shape)
        self.rms = res["rms"].reshape(shape)
        self.start_matched = np.repeat(res["start_matched"].reshape(n_m, 1, n_d), n_k, axis=1)
        structs = res["structures"]
        if structs is not None:
            self.final_structures = [[[structs[(i * n_k + j) * n_d + d] for d in range(n_d)] for j in range(n_k)]
                                     for i in range(n_m)]
        self.timings["match_s"] += res["seconds"]

    def summary(self) -> dict:
        self.wait()
        out = {}
        for i, mode in enumerate(self.modes):
            out[mode] = {}
            for j, met in enumerate(self.metrics):
                out[mode][met] = {"match_rate": float(self.matched[i, j].mean()),
                                  "start_match_rate": float(self.start_matched[i, j].mean()),
                                  "median_start_loss": float(np.median(self.start_loss[i, j])),
                                  "median_final_loss": float(np.median(self.final_loss[i, j])),
                                  "median_best_loss": float(np.median(self.best_loss[i, j])),
                                  "improved_fraction": float(np.mean(self.final_loss[i, j] < self.start_loss[i, j])),
                                  "median_dist_start": float(np.median(self.dist_start[i, j])),
                                  "median_dist_final": float(np.median(self.dist_final[i, j])),
                                  "overflow_fraction": float(self.overflow[i, j].mean())}
        return out


def recover(target: Target, n_distortions: int = 8, spec: DistortionSpec | None = None, *,
            modes=PARAMETRISATIONS, metrics=("cosine", "mse", "entropy"), metric_options: dict | None = None,
            steps: int = 500, lr: float = 0.005, seed: int = 0, matcher: dict | None = None,
            keep_structures: bool = False, lane_chunk="auto", executor=None) -> RecoveryResult:
    """Distort ``target`` ``n_distortions`` times and run Adam for ``steps`` steps from every
    start in every parametrisation of ``modes`` for every metric of ``metrics`` (one vmapped
    call), then match each result to the truth.

    ``metric_options``: keyword options for :func:`.metrics.get_metric` (``broaden_fwhm``,
    ``gamma``, ``dtw_points``), the same for all metrics. ``lane_chunk``: lanes per ``vmap``
    (``"auto"``: :data:`LANE_CHUNK_CPU` on a CPU, all lanes of a reflection list at once on an
    accelerator; ``None``: no split). Chunks hold one metric each; each (parametrisation,
    metric) segment of distortions is padded to whole chunks (:func:`chunk_layout`; the count is
    ``timings["padding_lanes"]``). ``executor``: a ``concurrent.futures`` executor (a process
    pool) to hand the StructureMatcher work to, so that it overlaps the next structure's
    compilation and optimisation; the result is then completed by :meth:`RecoveryResult.wait`
    (``matched``, ``rms``, ``start_matched`` are ``None`` until then). Raises ``ValueError`` for ``steps < 1``,
    unknown modes/metrics, or invalid distortion sigmas.
    """
    import time

    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    modes, metrics = tuple(modes), tuple(metrics)
    for m in modes:
        if m not in PARAMETRISATIONS:
            raise ValueError(f"unknown parametrisation {m!r}; choose from {', '.join(PARAMETRISATIONS)}")
    if not modes or not metrics:
        raise ValueError("need at least one parametrisation and one metric")
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
    spec = (spec or DistortionSpec()).validate()
    timings = {}
    t0 = time.perf_counter()
    c = target.crystal
    lats, fracs = distort(np.asarray(c.lattice), np.asarray(c.frac), n_distortions, spec, seed=seed,
                          mask=np.asarray(c.mask))
    starts = make_starts(target, lats, fracs)
    lanes_t = _lane_templates(target)
    dt = c.frac.dtype
    # lanes ordered [mode, metric, distortion]
    tpls, ss, bs, occs, cells, ws, q0s, u0s = [], [], [], [], [], [], [], []
    for mode in modes:
        tpl, b, occ, cell = jax.tree_util.tree_map(np.asarray, lanes_t[mode])  # host copies, stacked below
        q, u, s = starts[mode]
        for j, _ in enumerate(metrics):
            for d in range(n_distortions):
                tpls.append(tpl)
                ss.append(s)
                bs.append(b)
                occs.append(occ)
                cells.append(cell)
                ws.append(np.eye(len(metrics))[j])
                q0s.append(q[d])
                u0s.append(u[d])
    # stacked on the host (jnp.stack of 450 device arrays per leaf took 9 s)
    stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.asarray(np.stack(a)), *xs)  # noqa: E731
    lanes = (stack(tpls), jnp.asarray(np.stack(ss), dt), jnp.asarray(np.stack(bs), dt),
             jnp.asarray(np.stack(occs), dt), stack(cells), jnp.asarray(np.stack(ws), dt))
    q0 = jnp.asarray(np.stack(q0s), dt)
    u0 = jnp.asarray(np.stack(u0s), dt)
    opts = tuple(sorted((metric_options or {}).items()))
    metric_key = tuple((m, opts) for m in metrics)
    if lane_chunk == "auto":  # on a CPU, vmaps of a few dozen lanes keep a step's arrays in cache
        lane_chunk = LANE_CHUNK_CPU if jax.default_backend() == "cpu" else None
    elif lane_chunk is not None and (isinstance(lane_chunk, bool) or int(lane_chunk) != lane_chunk or lane_chunk < 1):
        raise ValueError(f"lane_chunk must be a positive integer, 'auto' or None, got {lane_chunk!r}")
    # the optimiser runs the P1 lanes (free, family) with the full reflection list, then the
    # Wyckoff lanes with the Laue-merged one, each (mode, metric) segment of distortions in
    # chunks of one metric (padded, see chunk_layout); results come back in [mode, metric,
    # distortion] order
    n_k, n_d = len(metrics), n_distortions
    p1 = [i for i, m in enumerate(modes) if m != "wyckoff"]
    wy = [i for i, m in enumerate(modes) if m == "wyckoff"]
    segs = [i * n_k + j for i in p1 + wy for j in range(n_k)]  # segment order of the run
    chunk, seg_order, real = chunk_layout(len(segs), n_d, lane_chunk)
    seg_of = np.asarray(segs)[seg_order // n_d]
    order = (seg_of * n_d + seg_order % n_d).astype(np.int64)
    per_seg = seg_order.size // len(segs)
    pos = np.empty(n_d * len(modes) * n_k, np.int64)  # where each lane's run is in the run order
    pos[order[real]] = real
    groups = tuple((len(ix) * n_k * per_seg, k) for ix, k in ((p1, 0), (wy, 1)) if ix)
    run = _runner(metric_key, np.asarray(target.two_theta, np.float64).tobytes(), target.config, int(steps), float(lr),
                  groups=groups, chunk=chunk)
    tt_j = jnp.asarray(target.two_theta, dt)
    timings["prepare_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    perm = jnp.asarray(order)
    args = (jax.tree_util.tree_map(lambda x: x[perm], lanes), q0[perm], u0[perm], target.instrument, tt_j,
            (target.reflections, target.reflections_sym), target.pattern)
    lowered = run.lower(*args)
    timings["lower_s"] = time.perf_counter() - t1
    compiled = lowered.compile()
    timings["compile_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    outs = jax.block_until_ready(compiled(*args))
    q_last, u_last, q, u, hist, best, ovf = jax.tree_util.tree_map(lambda x: x[jnp.asarray(pos)], outs)
    hist = np.asarray(hist)
    best = np.asarray(best)
    timings["optimise_s"] = time.perf_counter() - t1
    timings["lanes"] = int(q0.shape[0])
    timings["padding_lanes"] = int(order.size - q0.shape[0])
    timings["lane_steps_per_s"] = float(q0.shape[0] * steps / timings["optimise_s"])

    t2 = time.perf_counter()
    to_host = lambda tree: jax.tree_util.tree_map(np.asarray, tree)  # noqa: E731
    crystals = to_host(jax.jit(jax.vmap(_crystal))(lanes, q, u))
    crystals0 = to_host(jax.jit(jax.vmap(_crystal))(lanes, q0, u0))
    shape = (len(modes), len(metrics), n_distortions)
    lat_f, frac_f = np.asarray(crystals.lattice, np.float64), np.asarray(crystals.frac, np.float64)
    lat_s, frac_s = np.asarray(crystals0.lattice, np.float64), np.asarray(crystals0.frac, np.float64)
    mask = np.asarray(c.mask)
    lat_t, frac_t = np.asarray(c.lattice, np.float64), np.asarray(c.frac, np.float64)
    d_start = np.array([displacement_rms(lat_s[i], frac_s[i], lat_t, frac_t, mask) for i in range(len(q0s))])
    d_final = np.array([displacement_rms(lat_f[i], frac_f[i], lat_t, frac_t, mask) for i in range(len(q0s))])
    # starts do not depend on the metric: match those of the first metric of each mode
    first = np.array([i * len(metrics) * n_distortions + d for i in range(len(modes)) for d in range(n_distortions)])
    job = (crystals, jax.tree_util.tree_map(lambda x: x[first], crystals0), to_host(c), matcher, keep_structures)
    timings["post_s"] = time.perf_counter() - t2  # crystals to the host, known-correspondence distances
    timings["match_s"] = 0.0  # StructureMatcher seconds (in a worker when ``executor`` is given), see _complete
    result = RecoveryResult(name=target.name, modes=modes, metrics=metrics, start_loss=hist[:, 0].reshape(shape),
                            final_loss=hist[:, -1].reshape(shape), best_loss=best.reshape(shape),
                            loss_history=hist.reshape(shape + (-1,)), start_matched=None, matched=None, rms=None,
                            dist_start=d_start.reshape(shape), dist_final=d_final.reshape(shape),
                            overflow=np.asarray(ovf).reshape(shape), final_structures=None, timings=timings)
    if executor is None:
        result._complete(_match_job(*job))
    else:
        result._pending = executor.submit(_match_job, *job)
    return result


def _match_job(crystals, starts, truth, matcher, keep_structures):
    """StructureMatcher work of one :func:`recover` (host arrays only, so that it can run in a
    worker process): the best iterates and the starts against the truth."""
    import time

    t0 = time.perf_counter()
    mres = _match_host(crystals, truth, matcher)
    sres = _match_host(starts, truth, matcher)
    return {"matched": mres["matched"], "rms": mres["rms"], "start_matched": sres["matched"],
            "structures": mres["structures"] if keep_structures else None, "seconds": time.perf_counter() - t0}


def match_all(crystals: Crystal, target: Target, matcher: dict | None = None) -> dict:
    """StructureMatcher fit + normalised RMS of each crystal of a batch against the truth.
    Returns ``{"matched" (B,) bool, "rms" (B,) float (NaN if no match), "structures"}``."""
    return _match_host(jax.tree_util.tree_map(np.asarray, crystals),
                       jax.tree_util.tree_map(np.asarray, target.crystal), matcher)


def _match_host(host: Crystal, truth: Crystal, matcher: dict | None = None) -> dict:
    from ..io.matching import ReferenceMatcher

    kw = {**MATCHER_DEFAULTS, **(matcher or {})}
    b = host.lattice.shape[0]
    matched = np.zeros(b, bool)
    rms = np.full(b, np.nan)
    structs = []
    ref = ReferenceMatcher(_structure(truth), **kw)  # the truth reduced once (see xtaljax.io.matching)
    for i in range(b):
        ci = jax.tree_util.tree_map(lambda x: x[i], host)
        ok_cell = np.all(np.isfinite(ci.lattice)) and np.linalg.det(ci.lattice.astype(np.float64)) > 1e-6 \
            and np.all(np.isfinite(ci.frac))
        if not ok_cell:
            structs.append(None)
            continue
        s = _structure(ci)
        structs.append(s)
        ok, r = ref.match(s)
        matched[i] = ok
        if r is not None:
            rms[i] = r
    return {"matched": matched, "rms": rms, "structures": structs}


def _structure(crystal):
    """pymatgen ``Structure`` of one host-side crystal for matching: one site per real row, the
    element of its scatterer (ionic charges dropped), coordinates wrapped into [0, 1). Unlike
    :func:`xtaljax.io.structures.to_pymatgen` it never merges rows, so atoms that an optimisation
    pushed onto each other stay two sites (and such a structure simply fails to match)."""
    from pymatgen.core import Lattice, Structure

    from ..core.scattering import element_of

    keep = np.asarray(crystal.mask) > 0
    frac = np.mod(np.asarray(crystal.frac, np.float64)[keep], 1.0)
    species = [element_of(int(z)) for z in np.asarray(crystal.species)[keep]]
    return Structure(Lattice(np.asarray(crystal.lattice, np.float64)), species, frac)
