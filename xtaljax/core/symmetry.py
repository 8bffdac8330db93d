"""Symmetry templates: free parameters → full ``Crystal``, pure JAX.

A template (built on the host by :func:`xtaljax.io.spacegroups.symmetrize`) describes a structure
with symmetry by

* a **lattice family**: the six cell parameters (a, b, c, α, β, γ) are ``M @ p + k`` for a free
  vector ``p`` (cubic: 1 entry, tetragonal/hexagonal/trigonal: 2, orthorhombic: 3, monoclinic: 4,
  triclinic: 6), with ``M`` (6, 6) and ``k`` (6,) static tables (unused columns are zero);
* **orbits** (Wyckoff sites): a representative ``x0`` and a basis ``B`` (3, 3) of the null space
  of ``R − I`` over the site-stabiliser operators (R, t) of ``x0``; the free coordinates ``u``
  move the site as ``x0 + B u``, which keeps it on its special position for any ``u``;
* **images**: for every atom of the expanded cell, the orbit it belongs to and the coset
  operator (R, t) mapping the representative onto it (plus an integer shift to wrap the
  reference position into the cell): ``x = R (x0 + B u) + t``.

No Wyckoff table is needed: the stabiliser and its cosets follow from the group operators alone,
and the number of images of each orbit equals its multiplicity by construction. Everything is a
fixed-shape array, so ``expand`` jits, differentiates and vmaps, and templates of different space
groups can be padded to a common shape and batched.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .crystal import Crystal
from .lattice import lattice_from_parameters

#: crystal family of each of the 7 crystal systems and the free lattice parameters
FAMILIES = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")


def crystal_system(space_group: int) -> str:
    """Crystal system of an ITA space-group number (1–230)."""
    n = int(space_group)
    if not 1 <= n <= 230:
        raise ValueError(f"space group number must be in 1..230, got {n}")
    for top, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                      (167, "trigonal"), (194, "hexagonal"), (230, "cubic")):
        if n <= top:
            return name
    raise AssertionError


def lattice_family_tables(system: str, *, rhombohedral: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """``(M, k, n_free)`` with (a, b, c, α, β, γ) = M[:, :n_free] @ p + k, standard settings
    (monoclinic unique axis b; trigonal and hexagonal on hexagonal axes; ``rhombohedral=True``
    for a trigonal R group on rhombohedral axes: a = b = c, α = β = γ free)."""
    m = np.zeros((6, 6))
    k = np.zeros(6)
    if system == "triclinic":
        m[:6, :6] = np.eye(6)
        return m, k, 6
    if system == "monoclinic":
        m[0, 0] = m[1, 1] = m[2, 2] = m[4, 3] = 1.0
        k[3] = k[5] = 90.0
        return m, k, 4
    if system == "orthorhombic":
        m[0, 0] = m[1, 1] = m[2, 2] = 1.0
        k[3:] = 90.0
        return m, k, 3
    if system == "tetragonal":
        m[0, 0] = m[1, 0] = m[2, 1] = 1.0
        k[3:] = 90.0
        return m, k, 2
    if system in ("trigonal", "hexagonal"):
        if rhombohedral:
            m[0, 0] = m[1, 0] = m[2, 0] = 1.0
            m[3, 1] = m[4, 1] = m[5, 1] = 1.0
            return m, k, 2
        m[0, 0] = m[1, 0] = m[2, 1] = 1.0
        k[3:5] = 90.0
        k[5] = 120.0
        return m, k, 2
    if system == "cubic":
        m[0, 0] = m[1, 0] = m[2, 0] = 1.0
        k[3:] = 90.0
        return m, k, 1
    raise ValueError(f"unknown crystal system {system!r}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SymmetryParams:
    """Free parameters of a symmetric structure (a pytree of arrays).

    Attributes:
      lattice: ``(6,)`` free lattice parameters (first ``template.n_lattice`` used; Å / degrees).
      coords: ``(n_orbits, 3)`` free coordinates u per orbit (first ``dof[i]`` used).
      b_iso: ``(n_orbits,)`` B per orbit (Å²).
      occupancy: ``(n_orbits,)`` occupancy per orbit.
    """

    lattice: jax.Array
    coords: jax.Array
    b_iso: jax.Array
    occupancy: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SymmetryTemplate:
    """Static description of a structure with symmetry (arrays, so templates can be batched).

    Attributes (n_o orbits, n sites after expansion, both possibly padded):
      lat_m, lat_k: lattice-family tables (see :func:`lattice_family_tables`).
      lat_free: ``(6,)`` 1.0 for the used entries of ``params.lattice``.
      x0: ``(n_o, 3)`` orbit representatives (fractional).
      basis: ``(n_o, 3, 3)`` free-coordinate bases (columns; unused columns zero).
      coord_free: ``(n_o, 3)`` 1.0 for used entries of ``params.coords``.
      species: ``(n_o,)`` scatterer index per orbit (0 = padding orbit).
      site_orbit: ``(n,)`` orbit index of each expanded site.
      site_rot: ``(n, 3, 3)``, site_trans: ``(n, 3)``: coset operator (incl. wrapping shift).
      site_mask: ``(n,)`` 1 for real sites.
      space_group: ``()`` ITA number (int).
    """

    lat_m: jax.Array
    lat_k: jax.Array
    lat_free: jax.Array
    x0: jax.Array
    basis: jax.Array
    coord_free: jax.Array
    species: jax.Array
    site_orbit: jax.Array
    site_rot: jax.Array
    site_trans: jax.Array
    site_mask: jax.Array
    space_group: jax.Array

    @property
    def n_lattice(self) -> int:
        return int(np.asarray(self.lat_free).sum())

    @property
    def dof(self) -> np.ndarray:
        """Free coordinates per orbit (host)."""
        return np.asarray(self.coord_free).sum(-1).astype(int)

    @property
    def n_free(self) -> int:
        """Total number of free structural parameters: lattice + coordinates."""
        m = np.asarray(self.species) > 0
        return self.n_lattice + int(self.dof[m].sum())

    def expand(self, params: SymmetryParams) -> Crystal:
        return expand(self, params)

    def lattice_parameters(self, params: SymmetryParams):
        """(a, b, c, α, β, γ) of ``params`` (Å, degrees)."""
        return self.lat_m @ (params.lattice * self.lat_free) + self.lat_k


def expand(template: SymmetryTemplate, params: SymmetryParams) -> Crystal:
    """The full :class:`Crystal` of ``params`` (pure JAX; jit/grad/vmap-safe).

    Any value of ``params`` gives a structure with at least the template's symmetry: the lattice
    satisfies its family's constraints exactly and every site stays on its special position.
    """
    _check_shapes(template, params)
    six = template.lat_m @ (params.lattice * template.lat_free) + template.lat_k
    lattice = lattice_from_parameters(*six)
    u = params.coords * template.coord_free
    pos = template.x0 + jnp.einsum("oij,oj->oi", template.basis, u)  # (n_o, 3)
    o = template.site_orbit
    frac = jnp.einsum("nij,nj->ni", template.site_rot, pos[o]) + template.site_trans
    mask = template.site_mask * (template.species[o] > 0)
    return Crystal(lattice=lattice, frac=frac * mask[:, None], species=jnp.where(mask > 0, template.species[o], 0),
                   occupancy=params.occupancy[o] * mask, b_iso=params.b_iso[o] * mask, mask=mask)


def _check_shapes(template: SymmetryTemplate, params: SymmetryParams) -> None:
    """Shapes are static (known under jit too): a one-line ValueError on a mismatch."""
    n_o = template.x0.shape[-2]
    expect = {"lattice": (6,), "coords": (n_o, 3), "b_iso": (n_o,), "occupancy": (n_o,)}
    for name, shape in expect.items():
        got = tuple(jnp.shape(getattr(params, name)))
        if got != shape:
            raise ValueError(f"params.{name} has shape {got}, the template needs {shape}")


def project_lattice(template: SymmetryTemplate, six) -> jax.Array:
    """Least-squares projection of (a, b, c, α, β, γ) onto the template's lattice family: the free
    vector p minimising |M p + k − six| (e.g. cubic: a = mean(a, b, c)). Returns ``(6,)``."""
    m = template.lat_m * template.lat_free[None, :]
    return jnp.linalg.pinv(m) @ (jnp.asarray(six) - template.lat_k)
