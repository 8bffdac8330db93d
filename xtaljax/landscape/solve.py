"""Multi-start structure solution with a known space group, Wyckoff sites and cell.

A template structure (pymatgen ``Structure`` or CIF path) fixes the space group, the occupied
Wyckoff orbits, their species and the cell; it is symmetrised with
:func:`xtaljax.io.spacegroups.symmetrize` (spglib standard setting) exactly as in
:func:`.recover.load_target`. Its coordinates are **not** used as a start: every start draws the
free Wyckoff coordinates ``u`` of each orbit uniformly in ``[0, 1)`` (seeded), and all starts run
as lanes of ONE vmapped, jitted ``lax.scan`` of Adam steps — the runner of :mod:`.recover`
(:func:`.recover._runner`) on the ``"wyckoff"`` lane template (:func:`.recover._lane_templates`),
so every iterate keeps the full symmetry. The loss is one metric of :mod:`.metrics` between the
simulated and the given pattern (default: cosine after a Gaussian broadening of 0.3°, which
widens the basin of each peak). Each start keeps its best iterate; results are ranked by that loss.

Broadening: the observed pattern is convolved on the host with the Gaussian of
:func:`.metrics.gaussian_broaden`; the simulated one gets the same Gaussian folded into the
instrument profile (``w += fwhm² / (8 ln 2)``, exact for the Gaussian part of the pseudo-Voigt)
instead of broadening inside the loss: it costs nothing per step. (This was first done because
the metric's in-graph ``jnp.convolve`` segfaulted intermittently in XLA's CPU
``convolution_kernel`` in float64 inside the vmapped Adam ``scan``, jaxlib 0.10.2;
:func:`.metrics.gaussian_broaden` is now a sum of shifted copies and no longer uses it.)

The cell is fixed by default (the lattice variables are frozen by moving the family's lattice
parameters into the constant ``lat_k``); ``refine_lattice=True`` also refines the family's
lattice parameters from the template cell.

Optionally (``reference=``) every result is matched against a known structure with
:func:`.recover.match_all` (pymatgen ``StructureMatcher``), for benchmarks and tests.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..core.instrument import Instrument
from ..core.lattice import lattice_parameters
from .metrics import METRICS, gaussian_kernel
from .recover import (_crystal, _lane_templates, _lattice_scale, _runner, _structure, default_instrument, load_target,
                      match_all)


@dataclasses.dataclass
class SolveResult:
    """Multi-start result. ``ranked``: one dict per start, best (lowest loss) first, with ``loss``,
    ``start`` (lane index), ``structure`` (pymatgen ``Structure``, standard setting), ``free``
    (list per orbit with free coordinates: ``(element, u mod 1)``), ``sites`` (per orbit:
    ``(element, representative fractional position mod 1)``), ``lattice`` (a, b, c, α, β, γ)
    and, with a reference, ``matched``/``rms``. Arrays are indexed by start."""

    ranked: list
    losses: np.ndarray  # (n_starts,) best loss of each start
    start_losses: np.ndarray  # (n_starts,) loss of each random start
    stage1_losses: np.ndarray  # (n_starts,) best loss of the (broadened) main run
    free_coords: np.ndarray  # (n_starts, orbits, 3) best iterate's u (unused entries 0)
    coord_free: np.ndarray  # (orbits, 3) 1 where u is a free coordinate
    matched: np.ndarray | None  # (n_starts,) bool, only with ``reference``
    rms: np.ndarray | None
    overflow: np.ndarray  # (n_starts,) the cell left the enumerated reflections (refine_lattice)
    space_group: int
    timings: dict

    @property
    def best(self) -> dict:
        return self.ranked[0]

    @property
    def success_rate(self) -> float | None:
        return None if self.matched is None else float(np.mean(self.matched))


def _check_int(name, v):
    if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def solve(two_theta, y_obs, template_structure, *, n_starts: int = 64, steps: int = 300, metric: str = "cosine",
          broaden_fwhm: float = 0.3, lr: float = 0.01, seed: int = 0, refine_lattice: bool = False,
          instrument: Instrument | None = None, symprec: float = 0.01, reference=None,
          matcher: dict | None = None, polish_steps: int = 100, mesh=None) -> SolveResult:
    """Solve the free Wyckoff coordinates of ``template_structure`` against ``(two_theta, y_obs)``.

    ``two_theta`` (degrees, increasing, uniform when ``broaden_fwhm > 0``) and ``y_obs`` are 1-D of
    equal length; ``instrument`` defaults to :func:`.recover.default_instrument` (Cu Kα1) and
    must describe the measurement. ``n_starts`` random starts × ``steps`` Adam steps (cosine-decay
    schedule from ``lr``) in one jitted ``vmap``. ``reference``: optional known structure to
    match every result against. ``polish_steps`` (with ``broaden_fwhm > 0``): a second vmapped
    Adam run (``lr / 5``) from every start's best iterate on the unbroadened pattern; ``losses``
    are then those unbroadened losses (``stage1_losses``: the broadened ones).
    ``mesh`` (a :func:`xtaljax.parallel.batch_mesh`): the starts are split over its devices
    (padded to a multiple of the device count); the same lanes, the same results.
    Raises a one-line ``ValueError`` on bad input.
    """
    n_starts = _check_int("n_starts", n_starts)
    steps = _check_int("steps", steps)
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    tt = np.asarray(two_theta, np.float64)
    y = np.asarray(y_obs, np.float64)
    if tt.ndim != 1 or y.ndim != 1:
        raise ValueError(f"two_theta and y_obs must be 1-D, got shapes {tt.shape} and {y.shape}")
    if tt.size < 2:
        raise ValueError(f"the pattern needs at least 2 points, got {tt.size}")
    if tt.size != y.size:
        raise ValueError(f"two_theta has {tt.size} points but y_obs has {y.size}")
    if not (np.all(np.isfinite(tt)) and np.all(np.isfinite(y))):
        raise ValueError("two_theta and y_obs must be finite (no NaN/inf)")
    if not np.all(np.diff(tt) > 0):
        raise ValueError("two_theta must be strictly increasing")
    if not np.any(y != 0):
        raise ValueError("y_obs is all zero")

    timings = {}
    t0 = time.perf_counter()
    if not broaden_fwhm >= 0:
        raise ValueError(f"broaden_fwhm must be >= 0, got {broaden_fwhm}")
    inst0 = inst = instrument or default_instrument()
    polish_steps = 0 if polish_steps == 0 else _check_int("polish_steps", polish_steps)
    y_fit = y
    if broaden_fwhm > 0:
        step = float(np.median(np.diff(tt)))
        if np.ptp(np.diff(tt)) > 1e-6 * step:
            raise ValueError("broaden_fwhm needs a uniform 2theta grid")
        # observed: the metric's Gaussian convolution on the host; simulated: the same Gaussian
        # folded into the profile (sigma^2 += f^2 / (8 ln 2), exact for the Gaussian component)
        y_fit = np.convolve(y, gaussian_kernel(step, float(broaden_fwhm)), mode="same")
        inst = inst.replace(w=inst.w + float(broaden_fwhm) ** 2 / (8.0 * np.log(2.0)))
    target = load_target(template_structure, two_theta=tt, instrument=inst, symprec=symprec)
    tpl, b, occ, cell = _lane_templates(target)["wyckoff"]
    dt = target.crystal.frac.dtype
    six0 = lattice_parameters(np.asarray(target.standard.lattice, np.float64))
    coord_free = np.asarray(tpl.coord_free, np.float64)
    # drop the given coordinates: x0 -> its part outside the span of the free basis columns, so
    # u is the orbit's coordinate itself (not an offset from the template structure's value)
    basis = np.asarray(tpl.basis, np.float64) * coord_free[:, None, :]
    x0 = np.asarray(tpl.x0, np.float64)
    x0 = x0 - np.einsum("oij,oj->oi", basis, np.einsum("oij,oj->oi", np.linalg.pinv(basis), x0))
    tpl = dataclasses.replace(tpl, x0=jnp.asarray(x0, dt))
    if coord_free.sum() == 0 and not refine_lattice:
        raise ValueError(f"{target.name}: the template has no free Wyckoff coordinates; nothing to solve")
    if refine_lattice:
        m = np.asarray(tpl.lat_m, np.float64) * np.asarray(tpl.lat_free, np.float64)[None, :]
        p0 = np.linalg.pinv(m) @ (six0 - np.asarray(tpl.lat_k, np.float64))
        s = _lattice_scale(m, p0)
        q_init = p0 / s
    else:  # frozen cell: the six parameters become constants, the lattice variables get no gradient
        tpl = dataclasses.replace(tpl, lat_free=jnp.zeros_like(tpl.lat_free), lat_k=jnp.asarray(six0, dt))
        s, q_init = np.ones(6), np.zeros(6)

    rng = np.random.default_rng(seed)
    u0 = rng.uniform(0.0, 1.0, (n_starts,) + coord_free.shape) * coord_free[None]
    q0 = np.broadcast_to(q_init, (n_starts, 6))
    bc = lambda x: jnp.broadcast_to(x, (n_starts,) + jnp.shape(x))  # noqa: E731
    lanes = (jax.tree_util.tree_map(bc, tpl), bc(jnp.asarray(s, dt)), bc(jnp.asarray(b, dt)), bc(jnp.asarray(occ, dt)),
             jax.tree_util.tree_map(bc, cell))
    q0j, u0j = jnp.asarray(q0, dt), jnp.asarray(u0, dt)
    run = _runner(((metric, ()),), tt.tobytes(), target.config, steps, float(lr))
    y_t = jnp.asarray(y_fit, dt)
    # every iterate keeps the template's symmetry: the Laue-merged reflection list is exact
    args = (lanes, q0j, u0j, target.instrument, jnp.asarray(tt, dt), target.reflections_sym, y_t)
    timings["prepare_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    compiled = _compiled(run, args, mesh)
    timings["compile_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    _, _, q, u, hist, best, ovf = compiled(*args)
    hist = np.asarray(jax.block_until_ready(hist))
    timings["optimise_s"] = time.perf_counter() - t1
    timings["lane_steps_per_s"] = float(n_starts * steps / timings["optimise_s"])
    stage1 = np.asarray(best, np.float64)
    if broaden_fwhm > 0 and polish_steps > 0:
        # polish every start's best iterate against the unbroadened pattern with the given
        # instrument (removes the small bias of the profile-folded broadening)
        t1 = time.perf_counter()
        target0 = load_target(template_structure, two_theta=tt, instrument=inst0, symprec=symprec)
        run2 = _runner(((metric, ()),), tt.tobytes(), target0.config, int(polish_steps), float(lr) * 0.2)
        args2 = (lanes, q, u, target0.instrument, jnp.asarray(tt, dt), target0.reflections_sym, jnp.asarray(y, dt))
        _, _, q, u, _, best, ovf2 = _compiled(run2, args2, mesh)(*args2)
        ovf = jnp.logical_or(ovf, ovf2)
        best = jax.block_until_ready(best)
        timings["polish_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    crystals = jax.jit(jax.vmap(_crystal))(lanes, q, u)
    best = np.asarray(best, np.float64)
    u_np = np.asarray(u, np.float64) * coord_free[None]
    matched = rms = None
    if reference is not None:
        ref = load_target(reference, two_theta=tt, instrument=inst, symprec=symprec)
        mres = match_all(crystals, ref, matcher)
        matched, rms, structs = mres["matched"], mres["rms"], mres["structures"]
    else:
        host = jax.tree_util.tree_map(np.asarray, crystals)
        structs = [_structure(jax.tree_util.tree_map(lambda x: x[i], host)) for i in range(n_starts)]
    lat_host = np.asarray(crystals.lattice, np.float64)
    species = _orbit_elements(tpl)
    order = np.argsort(np.where(np.isfinite(best), best, np.inf), kind="stable")
    ranked = []
    for i in order:
        free = [(species[o], np.mod(u_np[i, o, coord_free[o] > 0], 1.0)) for o in range(coord_free.shape[0])
                if coord_free[o].sum() > 0 and species[o] is not None]
        sites = [(species[o], np.mod(x0[o] + basis[o] @ u_np[i, o], 1.0)) for o in range(coord_free.shape[0])
                 if species[o] is not None]
        entry = {"loss": float(best[i]), "start": int(i), "structure": structs[i], "free": free, "sites": sites,
                 "lattice": lattice_parameters(lat_host[i])}
        if matched is not None:
            entry["matched"], entry["rms"] = bool(matched[i]), float(rms[i])
        ranked.append(entry)
    timings["rank_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    return SolveResult(ranked=ranked, losses=best, start_losses=hist[:, 0].astype(np.float64),
                       stage1_losses=stage1, free_coords=u_np,
                       coord_free=coord_free, matched=matched, rms=rms, overflow=np.asarray(ovf),
                       space_group=int(np.asarray(tpl.space_group)), timings=timings)


def _compiled(run, args, mesh):
    """``run(lanes, q0, u0, *shared)`` compiled for ``args``, on one device or (``mesh``) split
    over the mesh's devices: returns a callable of the same ``args`` with per-lane outputs."""
    if mesh is None:
        return run.lower(*args).compile()
    from ..parallel import _unpad, replicate, shard_leading, sharded_vmap

    n = int(np.shape(args[1])[0])
    fn = sharded_vmap(run, mesh, 3, len(args) - 3, already_batched=True)
    placed, pad = shard_leading(tuple(args[:3]), mesh)
    shared = replicate(tuple(args[3:]), mesh)
    exe = fn.lower(*placed, *shared).compile()

    def call(*a):
        p, _ = shard_leading(tuple(a[:3]), mesh)
        out = exe(*p, *replicate(tuple(a[3:]), mesh))
        return _unpad(out, n) if pad else out

    return call


def _orbit_elements(tpl):
    """Element symbol per template orbit (None for padding orbits)."""
    from ..core.scattering import element_of

    return [element_of(int(z)) if int(z) > 0 else None for z in np.asarray(tpl.species)]
