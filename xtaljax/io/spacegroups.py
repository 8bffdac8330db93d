"""spglib → symmetry templates (host side).

``symmetrize(structure)`` finds the space group with spglib, standardises the cell (conventional
standard setting, idealised; R groups on hexagonal axes, monoclinic unique axis b), and builds a
:class:`~xtaljax.core.symmetry.SymmetryTemplate` from the group operators alone: for each orbit
representative x0 the site stabiliser {(R, t): R x0 + t ≡ x0 (mod 1)} gives the free subspace
(null space of the stacked R − I, reduced to row-echelon form so that the free coordinates read
like Wyckoff coordinates: (x, x, z) has basis columns (1, 1, 0) and (0, 0, 1)), and the distinct
images of x0 under all operators give the orbit (its size is the Wyckoff multiplicity). Why not
a Wyckoff table: the operators are exact for every setting spglib returns, and the count checks
(images = spglib's equivalent atoms) run on every call.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from ..core.crystal import Crystal, bucket
from ..core.lattice import lattice_parameters
from ..core.symmetry import (SymmetryParams, SymmetryTemplate, crystal_system, lattice_family_tables)

TOL = 1e-4


@dataclasses.dataclass(frozen=True)
class SiteInfo:
    element: str
    wyckoff: str
    multiplicity: int
    site_symmetry: str
    position: tuple
    free: tuple  # symbolic free coordinates, e.g. ("x", "x", "1/4")
    dof: int


@dataclasses.dataclass(frozen=True)
class SymmetryInfo:
    space_group: int
    symbol: str
    crystal_system: str
    lattice: tuple  # a, b, c, alpha, beta, gamma of the standard cell
    n_lattice: int
    sites: tuple
    #: point-group part of the operators of the standard setting, ``(n_ops, 3, 3)`` int (host;
    #: e.g. for :func:`xtaljax.core.reflections.merge_equivalents`); not in :meth:`to_dict`
    rotations: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    #: all operators (R, t) of the standard setting, ``(n, 3, 3)`` and ``(n, 3)`` (host; for CIF output)
    operations: tuple | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def n_free_coords(self) -> int:
        return sum(s.dof for s in self.sites)

    def to_dict(self) -> dict:
        return {"space_group": self.space_group, "symbol": self.symbol, "crystal_system": self.crystal_system,
                "lattice": dict(zip(("a", "b", "c", "alpha", "beta", "gamma"), self.lattice)),
                "lattice_free_parameters": self.n_lattice, "free_coordinates": self.n_free_coords,
                "free_parameters": self.n_lattice + self.n_free_coords,
                "sites": [dataclasses.asdict(s) for s in self.sites]}


def _wrap_diff(d):
    return d - np.round(d)


def _null_space(rots: list[np.ndarray]) -> np.ndarray:
    """Basis (3, d) of {v: (R − I) v = 0 for all R}, in reduced row-echelon form."""
    a = np.concatenate([r - np.eye(3) for r in rots], axis=0)
    _, s, vt = np.linalg.svd(a)
    rank = int(np.sum(s > 1e-8))
    ns = vt[rank:].T  # (3, d)
    d = ns.shape[1]
    if d == 0:
        return ns
    # reduced row echelon form of ns^T → nicer basis spanning the same space
    m = ns.T.copy()
    row = 0
    for col in range(3):
        if row >= d:
            break
        piv = row + int(np.argmax(np.abs(m[row:, col])))
        if abs(m[piv, col]) < 1e-8:
            continue
        m[[row, piv]] = m[[piv, row]]
        m[row] /= m[row, col]
        for r in range(d):
            if r != row:
                m[r] -= m[r, col] * m[row]
        row += 1
    m[np.abs(m) < 1e-12] = 0.0
    return m.T


def _symbolic(x0: np.ndarray, basis: np.ndarray) -> tuple:
    # each free parameter is named after its pivot axis (rref basis): (2/3, 1/3, z), (x, 2x, 1/4), ...
    names = ["xyz"[int(np.argmax(np.abs(basis[:, j]) > 1e-8))] for j in range(basis.shape[1])]
    out = []
    for i in range(3):
        terms = []
        for j in range(basis.shape[1]):
            c = basis[i, j]
            if abs(c) > 1e-8:
                terms.append(("" if abs(c - 1) < 1e-8 else ("-" if abs(c + 1) < 1e-8 else f"{c:g}")) + names[j])
        if terms:
            out.append("+".join(terms).replace("+-", "-"))
        else:
            frac = x0[i] % 1.0
            out.append(_fraction(frac))
    return tuple(out)


def _fraction(v: float) -> str:
    from fractions import Fraction

    f = Fraction(v).limit_denominator(24)
    return str(f) if abs(float(f) - v) < 1e-6 else f"{v:.6f}"


def _dataset(spglib, cell, symprec, angle_tolerance):
    """spglib dataset or None, with spglib >= 2.5 error handling (exceptions) or the older None."""
    err = getattr(spglib, "error", None)
    if err is not None and hasattr(err, "OLD_ERROR_HANDLING"):
        err.OLD_ERROR_HANDLING = False
    try:
        return spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance)
    except Exception:  # spglib.error.SpglibError
        return None


def symmetrize(structure, symprec: float = 0.01, angle_tolerance: float = -1.0, *, return_info: bool = False,
               pad_sites: int | None = None, pad_orbits: int | None = None):
    """Detect symmetry and build ``(template, params)`` (and :class:`SymmetryInfo` if asked).

    ``structure``: pymatgen ``Structure``, CIF path or :class:`Crystal`. Raises ``ValueError`` for
    disordered sites or when spglib cannot determine the symmetry at ``symprec``.
    ``template.expand(params)`` reproduces the standardised structure.
    """
    import spglib
    from pymatgen.core import Structure

    from ..core.scattering import scatterer_names
    from .structures import _scatterer_for, load_structure, to_pymatgen

    if isinstance(structure, Crystal):
        structure = to_pymatgen(structure)
    elif not isinstance(structure, Structure):
        structure = load_structure(structure)
    if symprec <= 0:
        raise ValueError(f"symprec must be positive, got {symprec}")
    if not structure.is_ordered:
        bad = next(i for i, s in enumerate(structure) if not s.is_ordered)
        raise ValueError(f"disordered site {bad} ({structure[bad].species_string}): symmetrize needs an ordered structure")
    numbers = np.array([_scatterer_for(s.specie) for s in structure])
    bvals = np.array(structure.site_properties.get("b_iso", [0.0] * len(structure)), float)
    cell = (structure.lattice.matrix, structure.frac_coords, numbers)
    ds = _dataset(spglib, cell, symprec, angle_tolerance)
    if ds is None:
        raise ValueError(f"spglib could not determine the symmetry at symprec={symprec} "
                         "(overlapping atoms or a tolerance too large/small for this structure)")
    std_lat, std_pos, std_num = ds.std_lattice, ds.std_positions, ds.std_types
    # B of each standard-cell atom: that of an input atom mapping to the same primitive atom
    b_std = np.zeros(len(std_num))
    for j, pj in enumerate(ds.std_mapping_to_primitive):
        src = np.where(ds.mapping_to_primitive == pj)[0]
        b_std[j] = bvals[src[0]] if len(src) else 0.0
    ds2 = _dataset(spglib, (std_lat, std_pos, std_num), min(symprec, 1e-3), -1)
    if ds2 is None or ds2.number != ds.number:
        raise ValueError("spglib standardisation is inconsistent at this tolerance; try another symprec")
    rots = np.asarray(ds2.rotations, float)
    trans = np.asarray(ds2.translations, float)
    system = crystal_system(ds.number)
    lat_m, lat_k, n_lat = lattice_family_tables(system)
    six = lattice_parameters(std_lat)
    p_lat = np.linalg.lstsq(lat_m[:, :n_lat], six - lat_k, rcond=None)[0]

    reps = sorted(set(int(i) for i in ds2.equivalent_atoms))
    x0s, bases, species, orbit_b, site_orbit, site_rot, site_trans, infos = [], [], [], [], [], [], [], []
    for o, rep in enumerate(reps):
        x0 = np.asarray(std_pos[rep], float)
        stab = [r for r, t in zip(rots, trans) if np.all(np.abs(_wrap_diff(r @ x0 + t - x0)) < TOL)]
        basis = _null_space(stab)
        images: list[np.ndarray] = []
        for r, t in zip(rots, trans):
            y = r @ x0 + t
            if any(np.all(np.abs(_wrap_diff(y - z)) < TOL) for z in images):
                continue
            images.append(y)
            site_orbit.append(o)
            site_rot.append(r)
            site_trans.append(t - np.floor(y + 1e-9))
        mult = int(np.sum(ds2.equivalent_atoms == rep))
        if len(images) != mult:
            raise ValueError(f"orbit of site {rep} has {len(images)} images but spglib lists {mult} equivalent atoms")
        b3 = np.zeros((3, 3))
        b3[:, : basis.shape[1]] = basis
        x0s.append(x0)
        bases.append(b3)
        species.append(int(std_num[rep]))
        orbit_b.append(b_std[rep])
        infos.append(SiteInfo(element=scatterer_names()[int(std_num[rep])], wyckoff=str(ds2.wyckoffs[rep]), multiplicity=mult,
                              site_symmetry=str(ds2.site_symmetry_symbols[rep]), position=tuple(float(v) for v in x0),
                              free=_symbolic(x0, basis), dof=int(basis.shape[1])))
    n_o, n = len(reps), len(site_orbit)
    no_pad = pad_orbits or bucket(n_o)
    n_pad = pad_sites or bucket(n)
    if no_pad < n_o or n_pad < n:
        raise ValueError(f"padding too small: {n_o} orbits / {n} sites")
    dt = jnp.zeros(()).dtype

    def pad(a, size, fill=0.0):
        a = np.asarray(a, float)
        out = np.full((size,) + a.shape[1:], fill)
        out[: len(a)] = a
        return out

    dof = np.array([i.dof for i in infos])
    coord_free = (np.arange(3)[None, :] < dof[:, None]).astype(float)
    lat_free = (np.arange(6) < n_lat).astype(float)
    template = SymmetryTemplate(
        lat_m=jnp.asarray(lat_m, dt), lat_k=jnp.asarray(lat_k, dt), lat_free=jnp.asarray(lat_free, dt),
        x0=jnp.asarray(pad(x0s, no_pad), dt), basis=jnp.asarray(pad(bases, no_pad), dt),
        coord_free=jnp.asarray(pad(coord_free, no_pad), dt),
        species=jnp.asarray(pad(species, no_pad).astype(np.int32)),
        site_orbit=jnp.asarray(pad(site_orbit, n_pad).astype(np.int32)),
        site_rot=jnp.asarray(pad(site_rot, n_pad), dt), site_trans=jnp.asarray(pad(site_trans, n_pad), dt),
        site_mask=jnp.asarray(pad(np.ones(n), n_pad), dt), space_group=jnp.asarray(int(ds.number), jnp.int32))
    params = SymmetryParams(lattice=jnp.asarray(pad(p_lat, 6), dt), coords=jnp.zeros((no_pad, 3), dt),
                            b_iso=jnp.asarray(pad(orbit_b, no_pad), dt),
                            occupancy=jnp.asarray(pad(np.ones(n_o), no_pad), dt))
    if not return_info:
        return template, params
    info = SymmetryInfo(space_group=int(ds.number), symbol=str(ds.international), crystal_system=system,
                        lattice=tuple(float(v) for v in six), n_lattice=n_lat, sites=tuple(infos),
                        rotations=np.unique(np.rint(rots).astype(int), axis=0),
                        operations=(np.rint(rots).astype(int), np.asarray(trans, float) % 1.0))
    return template, params, info


def stack_templates(pairs):
    """Pad ``[(template, params), ...]`` of possibly different space groups to common shapes and
    stack them, for ``jax.vmap(expand)``."""
    import jax

    n_o = max(t.x0.shape[0] for t, _ in pairs)
    n = max(t.site_orbit.shape[0] for t, _ in pairs)

    def pad_t(t):
        f = lambda a, size: jnp.pad(a, [(0, size - a.shape[0])] + [(0, 0)] * (a.ndim - 1))  # noqa: E731
        return dataclasses.replace(t, x0=f(t.x0, n_o), basis=f(t.basis, n_o), coord_free=f(t.coord_free, n_o),
                                   species=f(t.species, n_o), site_orbit=f(t.site_orbit, n), site_rot=f(t.site_rot, n),
                                   site_trans=f(t.site_trans, n), site_mask=f(t.site_mask, n))

    def pad_p(p):
        f = lambda a: jnp.pad(a, [(0, n_o - a.shape[0])] + [(0, 0)] * (a.ndim - 1))  # noqa: E731
        return dataclasses.replace(p, coords=f(p.coords), b_iso=f(p.b_iso), occupancy=f(p.occupancy))

    ts = [pad_t(t) for t, _ in pairs]
    ps = [pad_p(p) for _, p in pairs]
    st = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *ts)
    sp = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *ps)
    return st, sp
