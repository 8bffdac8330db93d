"""Validate the symmetry-constrained parametrisation (``symmetrize`` → ``expand``) on all 230 space groups.

For every space group, ``--per-group`` random structures are generated with pyxtal from chosen
Wyckoff combinations (strategies cycle through "special" (special positions only, 0-dof sites
included), "mixed" (one general position + special ones) and "general"); a structure whose
spglib group (symprec 0.01) is not the requested one (an accidental supergroup) is regenerated.
Each structure is then checked (:func:`check_case`):

a  ``match``: StructureMatcher fits expand(symmetrize(s)) to the pyxtal structure, with default
   and tight (ltol=stol=1e-4, angle_tol=1e-3) tolerances;
b  ``coords``: expanded fractional coordinates = spglib's standardised positions (as sets with
   species, mod 1, within 1e-6) and lattice parameters within 1e-6;
c  ``dof``: ``info.n_free_coords`` = pyxtal's sum of ``site.wp.get_dof()`` (and the multiset of
   (multiplicity, dof) per orbit agrees);
d  ``mult``: orbit sizes = pyxtal's multiplicities = spglib's equivalent-atom counts;
e  ``perturb``: all used free coordinates + N(0, 0.02), lengths ×(1 ± 2 %), angles ± 1°; spglib
   (symprec 1e-3) finds the template's group (a supergroup is counted separately, as
   ``supergroup``; the perturbed structure must also be invariant, within 1e-8, under every
   operator of the group in spglib's database);
f  ``lattice``: number of free lattice parameters per crystal family (= pyxtal's lattice dof);
j  ``jit``: ``jax.jit(expand)`` equals eager ``expand``;
v  ``vmap``: ``jax.vmap(expand)`` over ``stack_templates`` of templates of different space groups
   (chunks of 10 groups) equals the individual expansions (mask-aware).

Usage::

    python benchmarks/validate_symmetry.py                       # 230 groups × 3 structures
    python benchmarks/validate_symmetry.py --groups 140-167 --per-group 2 --seed 1

Writes ``benchmarks/results/validate_symmetry.json`` and exits non-zero on any failure. Every
case is reproducible alone: its seed is derived from (--seed, group, index). The check functions
are imported by ``tests/test_symmetry_groups.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SYMPREC = 0.01  # symmetrize / generation check
PERTURB_SYMPREC = 1e-3
TOL_COORD = 1e-6
TOL_LATTICE = 1e-6
TOL_INVARIANT = 1e-8
EXPECTED_N_LATTICE = {"triclinic": 6, "monoclinic": 4, "orthorhombic": 3, "tetragonal": 2, "trigonal": 2,
                      "hexagonal": 2, "cubic": 1}
STRATEGIES = ("special", "mixed", "general")
SPECIES_POOL = ("Li", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K", "Ca", "Ti", "Mn", "Fe",
                "Cu", "Zn", "Ga", "Ge", "Se", "Sr", "Y", "Zr", "Sn", "Ba")
CHECKS = ("match", "coords", "dof", "mult", "perturb", "lattice", "jit")


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Generated:
    """A pyxtal structure and what pyxtal says about it."""

    space_group: int
    index: int
    seed: int
    strategy: str  # the strategy that produced it (may fall back from the requested one)
    structure: object  # pymatgen Structure
    species: list
    num_ions: list
    sites: list  # per species, Wyckoff labels asked for
    labels: list  # per generated atom site: "4a"
    multiplicities: list
    dofs: list  # site.wp.get_dof() per atom site
    lattice_dof: int
    tries: int
    rejects: list  # reasons of rejected attempts

    @property
    def dof(self) -> int:
        return int(sum(self.dofs))

    def meta(self) -> dict:
        return {"space_group": self.space_group, "index": self.index, "seed": self.seed, "strategy": self.strategy,
                "species": self.species, "num_ions": self.num_ions, "wyckoff": self.labels,
                "pyxtal_dof": self.dof, "pyxtal_lattice_dof": self.lattice_dof, "n_atoms": len(self.structure),
                "tries": self.tries, "rejects": self.rejects[:10]}


@functools.lru_cache(maxsize=None)
def _wyckoffs(sg: int):
    from pyxtal.symmetry import Group

    g = Group(sg)
    return [(int(w.multiplicity), str(w.letter), int(w.get_dof())) for w in g.Wyckoff_positions]


def choose_sites(sg: int, rng: np.random.Generator, strategy: str, max_atoms: int):
    """Wyckoff combination: ``(species, numIons, sites)`` for ``pyxtal.from_random``.

    0-dof positions are used at most once; the total number of atoms is kept <= ``max_atoms``
    where possible (a general position alone may exceed it)."""
    wps = _wyckoffs(sg)
    general, special = wps[0], wps[1:]
    picks: list[tuple[int, str, int]] = []
    if strategy == "special" and special:
        n = int(rng.integers(2, 5))
        pool = list(special)
        for _ in range(n):
            if not pool:
                break
            w = np.array([1.0 / m for m, _, _ in pool])
            i = int(rng.choice(len(pool), p=w / w.sum()))
            picks.append(pool[i])
            if pool[i][2] == 0:
                pool.pop(i)
    else:
        n_gen = 1 if strategy != "general" else int(rng.integers(1, 3))
        picks += [general] * n_gen
        n_sp = int(rng.integers(1, 3)) if strategy == "mixed" else int(rng.integers(0, 2))
        pool = list(special)
        for _ in range(n_sp):
            if not pool:
                break
            i = int(rng.integers(len(pool)))
            picks.append(pool[i])
            if pool[i][2] == 0:
                pool.pop(i)
    if len(picks) < 2:  # a single orbit often has a higher symmetry (P1 with one atom is P-1)
        picks.append(general)
    # keep the size in check: drop the largest special sites first, then extra general ones (a
    # general position of the strategies "mixed"/"general" is always kept)
    while len(picks) > 1 and sum(p[0] for p in picks) > max_atoms:
        sp = [i for i, p in enumerate(picks) if p != general]
        keep_general = strategy != "special" or not sp
        if sp and keep_general:
            picks.pop(max(sp, key=lambda i: picks[i][0]))
        elif sum(p == general for p in picks) > 1:
            picks.remove(general)
        elif sp:
            picks.pop(max(sp, key=lambda i: picks[i][0]))
        else:
            break
    order = rng.permutation(len(picks))
    picks = [picks[i] for i in order]
    n_species = int(rng.integers(1, min(3, len(picks)) + 1))
    owner = list(range(n_species)) + list(rng.integers(0, n_species, size=len(picks) - n_species))
    names = list(rng.choice(SPECIES_POOL, size=n_species, replace=False))
    species, num_ions, sites = [], [], []
    for k in range(n_species):
        mine = [p for p, o in zip(picks, owner) if o == k]
        species.append(str(names[k]))
        num_ions.append(int(sum(p[0] for p in mine)))
        sites.append([f"{p[0]}{p[1]}" for p in mine])
    return species, num_ions, sites


def spglib_number(structure, symprec: float) -> int | None:
    import spglib

    cell = (structure.lattice.matrix, structure.frac_coords, [s.specie.Z for s in structure])
    ds = spglib.get_symmetry_dataset(cell, symprec=symprec)
    return None if ds is None else int(ds.number)


def generate(sg: int, index: int, seed: int = 0, *, strategy: str | None = None, max_atoms: int = 200,
             max_tries: int = 30) -> Generated:
    """A random pyxtal structure of group ``sg`` whose spglib group (symprec 0.01 and 1e-3) is ``sg``.

    The seed of case (sg, index) is derived from ``seed`` alone, so one case can be rerun by itself.
    After 4 rejected attempts with the requested strategy, it falls back to "mixed" (a general
    position breaks accidental supergroups), and after 12 to "general"."""
    from pyxtal import pyxtal

    case_seed = int(np.random.SeedSequence([seed, sg, index]).generate_state(1)[0])
    rng = np.random.default_rng(case_seed)
    strategy = strategy or STRATEGIES[index % len(STRATEGIES)]
    rejects: list[str] = []
    for attempt in range(1, max_tries + 1):
        strat = strategy if attempt <= 4 else ("mixed" if attempt <= 12 else "general")
        species, num_ions, sites = choose_sites(sg, rng, strat, max_atoms)
        c = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                c.from_random(3, sg, species, num_ions, sites=sites, random_state=int(rng.integers(2**31)),
                              max_count=3)
            if not c.valid:
                raise RuntimeError("invalid")
            s = c.to_pymatgen()
        except Exception as e:  # noqa: BLE001 - pyxtal raises many kinds
            rejects.append(f"{strat} {sites}: pyxtal {type(e).__name__}: {str(e)[:80]}")
            continue
        got = [spglib_number(s, p) for p in (SYMPREC, PERTURB_SYMPREC)]
        if got != [sg, sg]:
            rejects.append(f"{strat} {sites}: spglib finds {got}")
            continue
        return Generated(space_group=sg, index=index, seed=case_seed, strategy=strat, structure=s, species=species,
                         num_ions=num_ions, sites=sites, labels=[site.wp.get_label() for site in c.atom_sites],
                         multiplicities=[int(site.wp.multiplicity) for site in c.atom_sites],
                         dofs=[int(site.wp.get_dof()) for site in c.atom_sites], lattice_dof=int(c.lattice.dof),
                         tries=attempt, rejects=rejects)
    raise RuntimeError(f"space group {sg}: no structure after {max_tries} tries: {rejects[-3:]}")


# ---------------------------------------------------------------------------------------------
# checks (importable)
# ---------------------------------------------------------------------------------------------

def _wrap(d):
    return d - np.round(d)


def match_sets(frac_a, spc_a, frac_b, spc_b) -> float:
    """Largest distance (fractional, mod 1) of a species-preserving one-to-one matching of two
    point sets; ``inf`` if they differ in size/composition or no bijection exists."""
    from scipy.optimize import linear_sum_assignment

    frac_a, frac_b = np.asarray(frac_a, float), np.asarray(frac_b, float)
    spc_a, spc_b = np.asarray(spc_a), np.asarray(spc_b)
    if len(frac_a) != len(frac_b) or sorted(spc_a.tolist()) != sorted(spc_b.tolist()):
        return float("inf")
    d = np.abs(_wrap(frac_a[:, None, :] - frac_b[None, :, :])).max(-1)
    d = np.where(spc_a[:, None] == spc_b[None, :], d, 10.0)
    r, c = linear_sum_assignment(d)
    return float(d[r, c].max()) if len(r) else 0.0


def _crystal_arrays(c):
    m = np.asarray(c.mask) > 0
    return np.asarray(c.lattice, float), np.asarray(c.frac, float)[m], np.asarray(c.species)[m]


def _lattice_columns_are_angles(template) -> np.ndarray:
    lat_m = np.asarray(template.lat_m)
    return np.array([np.any(np.abs(lat_m[3:, j]) > 0) for j in range(6)])


def perturb(template, params, rng: np.random.Generator, *, sigma: float = 0.02, rel: float = 0.02,
            dangle: float = 1.0):
    """Random perturbation of every used free parameter (coordinates N(0, sigma); lengths ×(1 ± rel);
    angles ± dangle degrees), redrawn until the cell is valid."""
    import jax.numpy as jnp

    from xtaljax.core.lattice import lattice_from_parameters

    n_lat = template.n_lattice
    is_angle = _lattice_columns_are_angles(template)
    lat0 = np.asarray(params.lattice, float)
    cf = np.asarray(template.coord_free, float) * (np.asarray(template.species) > 0)[:, None]
    for _ in range(100):
        lat = lat0.copy()
        for j in range(n_lat):
            lat[j] = lat[j] + rng.uniform(-dangle, dangle) if is_angle[j] else lat[j] * (1 + rng.uniform(-rel, rel))
        six = np.asarray(template.lat_m) @ (lat * np.asarray(template.lat_free)) + np.asarray(template.lat_k)
        m = np.asarray(lattice_from_parameters(*[float(v) for v in six]), float)
        if np.all(np.isfinite(m)) and np.linalg.det(m) > 1e-3 * np.prod(six[:3]):
            break
    else:
        raise RuntimeError("no valid perturbed cell")
    coords = np.asarray(params.coords, float) + sigma * rng.normal(size=cf.shape) * cf
    dt = params.coords.dtype
    return dataclasses.replace(params, lattice=jnp.asarray(lat, dt), coords=jnp.asarray(coords, dt))


def invariance_error(lattice, frac, species, rotations, translations) -> float:
    """Max over operators of the matching distance between the structure and its image."""
    worst = 0.0
    for r, t in zip(rotations, translations):
        img = frac @ np.asarray(r, float).T + np.asarray(t, float)
        worst = max(worst, match_sets(img, species, frac, species))
    return worst


def _ops_per_lattice_point(ds) -> int:
    # number of operations divided by the number of pure translations (centring)
    n_tr = sum(1 for r in ds.rotations if np.array_equal(r, np.eye(3, dtype=int)))
    return len(ds.rotations) // max(n_tr, 1)


def check_case(gen: Generated, *, rng: np.random.Generator | None = None, symprec: float = SYMPREC,
               angle_tolerance: float | None = None, n_perturb: int = 1) -> tuple[dict, tuple | None]:
    """Run checks a–f and jit on one generated structure. Returns ``(record, (template, params))``;
    ``record["checks"]`` maps check name → bool, ``record["details"]`` the measured errors and
    ``record["failures"]`` human-readable reasons. ``angle_tolerance=None``: symmetrize's default.
    Needs ``jax_enable_x64`` (1e-6 tolerances)."""
    import jax
    import jax.numpy as jnp
    import spglib
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from xtaljax.core.lattice import lattice_parameters
    from xtaljax.core.symmetry import crystal_system, expand
    from xtaljax.io import to_pymatgen
    from xtaljax.io.spacegroups import symmetrize

    if jnp.zeros(()).dtype != jnp.float64:
        raise RuntimeError("check_case needs jax_enable_x64 (1e-6 coordinate tolerances)")
    rng = rng if rng is not None else np.random.default_rng(gen.seed + 1)
    s = gen.structure
    sg = gen.space_group
    rec: dict = {**gen.meta(), "checks": {}, "details": {}, "failures": [], "timings_s": {}}
    checks, det, fails, tim = rec["checks"], rec["details"], rec["failures"], rec["timings_s"]

    def fail(name, msg):
        checks[name] = False
        fails.append(f"{name}: {msg}")

    t0 = time.perf_counter()
    try:
        kw = {} if angle_tolerance is None else {"angle_tolerance": angle_tolerance}
        template, params, info = symmetrize(s, symprec=symprec, return_info=True, **kw)
    except Exception as e:  # noqa: BLE001
        for name in CHECKS:
            checks[name] = False
        fails.append(f"symmetrize raised {type(e).__name__}: {e}")
        rec["traceback"] = traceback.format_exc(limit=4)
        return rec, None
    tim["symmetrize"] = time.perf_counter() - t0
    rec["template"] = {"space_group": info.space_group, "n_lattice": info.n_lattice,
                       "n_free_coords": info.n_free_coords, "n_sites": int(np.asarray(template.site_mask).sum()),
                       "sites": [f"{x.element} {x.multiplicity}{x.wyckoff} {x.site_symmetry} {x.free}" for x in info.sites]}
    if info.space_group != sg:
        fails.append(f"symmetrize found space group {info.space_group}, pyxtal made {sg}")

    t0 = time.perf_counter()
    crystal = expand(template, params)
    jax.block_until_ready(crystal.frac)
    tim["expand"] = time.perf_counter() - t0
    lat, frac, spc = _crystal_arrays(crystal)
    out = to_pymatgen(crystal)

    # (a) StructureMatcher, default and tight
    t0 = time.perf_counter()
    ok_default = bool(StructureMatcher().fit(s, out))
    ok_tight = bool(StructureMatcher(ltol=1e-4, stol=1e-4, angle_tol=1e-3).fit(s, out))
    det["match_default"], det["match_tight"] = ok_default, ok_tight
    checks["match"] = ok_default and ok_tight
    if not checks["match"]:
        fails.append(f"match: StructureMatcher default={ok_default} tight={ok_tight} "
                     f"(n_in={len(s)}, n_out={len(out)}, composition {s.composition.reduced_formula} vs "
                     f"{out.composition.reduced_formula})")
    tim["match"] = time.perf_counter() - t0

    # (b) direct coordinates vs spglib's standardised cell (and the input mapped by spglib's (P, p))
    numbers = [site.specie.Z for site in s]
    ds = spglib.get_symmetry_dataset((s.lattice.matrix, s.frac_coords, numbers), symprec=symprec)
    z_of = {int(k): el.Z for k, el in _species_map(crystal).items()}
    spc_z = np.array([z_of[int(v)] for v in spc])
    d_std = match_sets(frac, spc_z, ds.std_positions, ds.std_types)
    d_lat = float(np.abs(lattice_parameters(lat) - lattice_parameters(ds.std_lattice)).max())
    det["coords_max_err"], det["lattice_max_err"] = d_std, d_lat
    # spglib's x_std = P x + p applied to the raw (unidealised) input: an independent reference
    pmat, pshift = np.asarray(ds.transformation_matrix, float), np.asarray(ds.origin_shift, float)
    d_in = float("nan")
    if abs(abs(np.linalg.det(pmat)) - 1) < 1e-8:
        d_in = match_sets(np.asarray(s.frac_coords) @ pmat.T + pshift, numbers, frac, spc_z)
    det["input_coords_max_err"] = d_in
    checks["coords"] = d_std < TOL_COORD and d_lat < TOL_LATTICE and not (d_in >= TOL_COORD)
    if not checks["coords"]:
        fails.append(f"coords: max |Δx| vs spglib std {d_std:.3g}, vs transformed input {d_in:.3g}, "
                     f"max |Δ lattice| {d_lat:.3g}")

    # (c) free coordinates = pyxtal dof, per-orbit (multiplicity, dof) multisets
    real = np.asarray(template.species) > 0
    t_dof = template.dof[real]
    ours = sorted((x.multiplicity, x.dof) for x in info.sites)
    theirs = sorted(zip(gen.multiplicities, gen.dofs))
    checks["dof"] = (info.n_free_coords == gen.dof == int(t_dof.sum()) == template.n_free - template.n_lattice
                     and ours == theirs and t_dof.tolist() == [x.dof for x in info.sites])
    if not checks["dof"]:
        fail("dof", f"n_free_coords {info.n_free_coords} (template {t_dof.tolist()}) vs pyxtal {gen.dof}; "
                    f"(mult, dof) {ours} vs {theirs}")

    # (d) orbit sizes = pyxtal multiplicities = spglib equivalent-atom counts (scaled to the std cell)
    sizes = sorted(x.multiplicity for x in info.sites)
    counts = np.unique(np.asarray(ds.equivalent_atoms), return_counts=True)[1]
    scale = len(ds.std_types) / len(numbers)
    spg_counts = sorted(int(round(c * scale)) for c in counts)
    orbit_of = np.asarray(template.site_orbit)[np.asarray(template.site_mask) > 0]
    expanded_sizes = sorted(np.bincount(orbit_of).tolist())
    det["orbit_sizes"] = sizes
    general_mult = _wyckoffs(sg)[0][0]
    det["n_special_orbits"] = sum(x.multiplicity < general_mult for x in info.sites)
    det["n_zero_dof_orbits"] = sum(x.dof == 0 for x in info.sites)
    checks["mult"] = sizes == sorted(gen.multiplicities) == spg_counts == expanded_sizes
    if not checks["mult"]:
        fail("mult", f"orbit sizes {sizes}, expanded {expanded_sizes}, pyxtal {sorted(gen.multiplicities)}, "
                     f"spglib {spg_counts}")

    # (e) perturbation keeps the group; the structure is invariant under all the group's operators
    t0 = time.perf_counter()
    db = spglib.get_symmetry_from_database(int(spglib.get_symmetry_dataset((lat, frac, spc), symprec=1e-5).hall_number))
    perturb_ok, supergroups, found = True, 0, []
    worst_inv = 0.0
    for _ in range(n_perturb):
        q = perturb(template, params, rng)
        cq = expand(template, q)
        lq, fq, sq = _crystal_arrays(cq)
        inv = invariance_error(lq, fq, sq, db["rotations"], db["translations"])
        worst_inv = max(worst_inv, inv)
        dq = spglib.get_symmetry_dataset((lq, fq, sq), symprec=PERTURB_SYMPREC)
        num = None if dq is None else int(dq.number)
        found.append(num)
        if inv > TOL_INVARIANT:
            perturb_ok = False
            fails.append(f"perturb: perturbed structure breaks a group operator by {inv:.3g}")
        if num != sg:
            bigger = dq is not None and _ops_per_lattice_point(dq) > len(db["rotations"]) // max(
                1, sum(1 for r in db["rotations"] if np.array_equal(r, np.eye(3, dtype=int))))
            if bigger and inv <= TOL_INVARIANT:
                supergroups += 1
            else:
                perturb_ok = False
                fails.append(f"perturb: spglib finds {num} after perturbation (template {sg})")
    det["perturbed_groups"], det["invariance_max_err"], det["supergroups"] = found, worst_inv, supergroups
    checks["perturb"] = perturb_ok
    tim["perturb"] = time.perf_counter() - t0

    # (f) lattice family
    fam = crystal_system(sg)
    checks["lattice"] = info.n_lattice == template.n_lattice == EXPECTED_N_LATTICE[fam] == gen.lattice_dof
    if not checks["lattice"]:
        fail("lattice", f"{fam}: n_lattice {info.n_lattice}/{template.n_lattice}, expected "
                        f"{EXPECTED_N_LATTICE[fam]}, pyxtal {gen.lattice_dof}")

    # (j) jit == eager
    t0 = time.perf_counter()
    cj = _expand_jit()(template, params)
    err = max(float(np.abs(np.asarray(a, float) - np.asarray(b, float)).max())
              for a, b in zip(jax.tree_util.tree_leaves(cj), jax.tree_util.tree_leaves(crystal)))
    det["jit_max_err"] = err
    checks["jit"] = err < 1e-12
    if not checks["jit"]:
        fail("jit", f"jit vs eager max diff {err:.3g}")
    tim["jit"] = time.perf_counter() - t0
    return rec, (template, params)


def _species_map(crystal):
    """scatterer index → pymatgen Element of the expanded crystal."""
    from pymatgen.core import Element

    from xtaljax.core.scattering import element_of

    return {int(k): Element(element_of(int(k))) for k in np.unique(np.asarray(crystal.species)[np.asarray(crystal.mask) > 0])}


_JIT = None


def _expand_jit():
    global _JIT
    if _JIT is None:
        import jax

        from xtaljax.core.symmetry import expand

        _JIT = jax.jit(expand)
    return _JIT


def check_vmap(pairs) -> tuple[bool, float, str]:
    """``jax.vmap(expand)`` over ``stack_templates(pairs)`` equals each template's own expansion
    (real sites compared in order, padded rows must be masked out and zero). Returns
    ``(ok, max_err, message)``."""
    import jax

    from xtaljax.core.symmetry import expand
    from xtaljax.io.spacegroups import stack_templates

    st, sp = stack_templates(pairs)
    batched = jax.vmap(expand)(st, sp)
    worst, msgs = 0.0, []
    for i, (t, p) in enumerate(pairs):
        c = expand(t, p)
        n = int(np.asarray(c.mask).shape[0])
        bm = np.asarray(batched.mask[i])
        if not np.array_equal(bm[:n], np.asarray(c.mask)) or np.any(bm[n:] != 0):
            msgs.append(f"item {i} (group {int(t.space_group)}): mask differs")
            worst = float("inf")
            continue
        m = bm > 0
        err = float(np.abs(np.asarray(batched.lattice[i]) - np.asarray(c.lattice)).max())
        for name in ("frac", "species", "occupancy", "b_iso"):
            a = np.asarray(getattr(batched, name)[i], float)
            b = np.asarray(getattr(c, name), float)
            err = max(err, float(np.abs(a[:n][m[:n]] - b[m[:n]]).max(initial=0.0)))
            if np.any(a[~m] != 0):
                msgs.append(f"item {i}: padded {name} not zero")
        worst = max(worst, err)
    ok = worst < 1e-12 and not msgs
    if worst >= 1e-12 and not msgs:
        msgs.append(f"max diff {worst:.3g}")
    return ok, worst, "; ".join(msgs)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "pymatgen", "spglib", "pyxtal", "numpy", "xtaljax"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def parse_groups(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = (int(v) for v in part.split("-"))
            out += list(range(lo, hi + 1))
        elif part:
            out.append(int(part))
    bad = [g for g in out if not 1 <= g <= 230]
    if bad:
        raise SystemExit(f"space groups out of range: {bad}")
    return sorted(set(out))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", default="1-230", help="e.g. 1-230 or 14,15,225-230")
    ap.add_argument("--per-group", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-atoms", type=int, default=200)
    ap.add_argument("--angle-tolerance", type=float, default=None,
                    help="passed to symmetrize (default: symmetrize's own default)")
    ap.add_argument("--vmap-chunk", type=int, default=10, help="groups per vmap batch")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "validate_symmetry.json"))
    args = ap.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    from tqdm import tqdm

    groups = parse_groups(args.groups)
    t_start = time.perf_counter()
    per_group: dict[int, dict] = {}
    pairs_by_group: dict[int, tuple] = {}
    for sg in tqdm(groups, desc="space groups", file=sys.stderr):
        g = {"space_group": sg, "cases": [], "checks": {}, "generation_errors": []}
        for k in range(args.per_group):
            t0 = time.perf_counter()
            try:
                gen = generate(sg, k, args.seed, max_atoms=args.max_atoms)
            except Exception as e:  # noqa: BLE001
                g["generation_errors"].append(f"case {k}: {e}")
                continue
            t_gen = time.perf_counter() - t0
            try:
                rec, pair = check_case(gen, angle_tolerance=args.angle_tolerance)
            except Exception as e:  # noqa: BLE001
                rec, pair = {**gen.meta(), "checks": {c: False for c in CHECKS},
                             "failures": [f"check_case raised {type(e).__name__}: {e}"],
                             "traceback": traceback.format_exc(limit=6), "timings_s": {}}, None
            rec["timings_s"]["generate"] = t_gen
            rec["timings_s"]["total"] = time.perf_counter() - t0
            g["cases"].append(rec)
            if pair is not None and sg not in pairs_by_group:
                pairs_by_group[sg] = pair
            for f in rec["failures"]:
                tqdm.write(f"[sg {sg} case {k} seed {gen.seed}] {f}", file=sys.stderr)
        for c in CHECKS:
            g["checks"][c] = bool(g["cases"]) and not g["generation_errors"] and all(r["checks"].get(c, False)
                                                                                      for r in g["cases"])
        g["supergroups_after_perturbation"] = sum(r.get("details", {}).get("supergroups", 0) for r in g["cases"])
        g["time_s"] = sum(r["timings_s"].get("total", 0.0) for r in g["cases"])
        per_group[sg] = g

    # vmap across groups, in chunks of different space groups
    vmap_batches = []
    have = sorted(pairs_by_group)
    for i in range(0, len(have), max(1, args.vmap_chunk)):
        chunk = have[i:i + args.vmap_chunk]
        ok, err, msg = check_vmap([pairs_by_group[sg] for sg in chunk])
        vmap_batches.append({"groups": chunk, "ok": ok, "max_err": err, "message": msg})
        for sg in chunk:
            per_group[sg]["checks"]["vmap"] = ok
        if not ok:
            print(f"[vmap {chunk}] {msg}", file=sys.stderr)
    for sg, g in per_group.items():
        g["checks"].setdefault("vmap", False)

    all_checks = CHECKS + ("vmap",)
    n_cases = sum(len(g["cases"]) for g in per_group.values())
    totals = {
        "groups": len(groups),
        "cases": n_cases,
        "groups_passed_per_check": {c: sum(g["checks"][c] for g in per_group.values()) for c in all_checks},
        "cases_passed_per_check": {c: sum(r["checks"].get(c, False) for g in per_group.values() for r in g["cases"])
                                   for c in CHECKS},
        "groups_all_passed": sum(all(g["checks"].values()) for g in per_group.values()),
        "generation_errors": sum(len(g["generation_errors"]) for g in per_group.values()),
        "supergroups_after_perturbation": sum(g["supergroups_after_perturbation"] for g in per_group.values()),
        "regenerated_structures": sum(r["tries"] - 1 for g in per_group.values() for r in g["cases"]),
        "strategies": {s: sum(r["strategy"] == s for g in per_group.values() for r in g["cases"]) for s in STRATEGIES},
        "max_coords_err": max((r["details"].get("coords_max_err", 0.0) for g in per_group.values() for r in g["cases"]
                               if "details" in r), default=0.0),
        "time_s": time.perf_counter() - t_start,
    }
    totals["special_position_orbits"] = sum(r.get("details", {}).get("n_special_orbits", 0)
                                            for g in per_group.values() for r in g["cases"])
    totals["zero_dof_orbits"] = sum(r.get("details", {}).get("n_zero_dof_orbits", 0)
                                    for g in per_group.values() for r in g["cases"])
    failures = [{"space_group": sg, "case": r["index"], "seed": r["seed"], "failures": r["failures"]}
                for sg, g in per_group.items() for r in g["cases"] if r["failures"]]
    failures += [{"space_group": sg, "generation_errors": g["generation_errors"]}
                 for sg, g in per_group.items() if g["generation_errors"]]
    failures += [{"vmap_batch": b["groups"], "message": b["message"]} for b in vmap_batches if not b["ok"]]
    result = {
        "description": "symmetrize/expand validation over space groups with pyxtal random structures",
        "criteria": {"coords_tol": TOL_COORD, "lattice_tol": TOL_LATTICE, "symprec": SYMPREC,
                     "perturb_symprec": PERTURB_SYMPREC, "perturbation": "coords N(0,0.02); lengths x(1±2%) "
                     "uniform; angles ±1 deg uniform", "tight_matcher": {"ltol": 1e-4, "stol": 1e-4, "angle_tol": 1e-3},
                     "invariance_tol": TOL_INVARIANT},
        "args": vars(args),
        "versions": versions(),
        "platform": platform.platform(),
        "totals": totals,
        "failures": failures,
        "vmap_batches": vmap_batches,
        "groups": [per_group[sg] for sg in groups],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=_json_default))
    print(json.dumps(totals, indent=1))
    print(f"wrote {out}")
    return 1 if failures else 0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
