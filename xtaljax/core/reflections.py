"""Reflection lists: enumerated on the host, padded to a capacity, masked in the kernel.

pymatgen enumerates the reciprocal-lattice points in a data-dependent sphere; that is not
differentiable and not jittable. Here the Miller indices are enumerated once on the host (NumPy)
for a reference lattice ``lattice0`` out to a radius ``g_max`` (Å⁻¹, with a margin so that a
refinement can move the lattice), padded to a bucketed capacity, and carried as data. The kernel
recomputes every position from the *current* lattice, masks reflections that fall outside the
range, and flags an overflow if the current lattice/range could need an index that was not
enumerated:

    every h with |g(L')| <= r is enumerated  if  sigma_max(L0^-1 L') * r <= g_max

(``|g0| = |g' (L0^-1 L')^T| <= sigma_max |g'|``), a bound that holds for any lattice change.

Only one Friedel half-space is kept (h > 0, or h = 0 and k > 0, or h = k = 0 and l > 0); each
row stands for the pair {h, -h}, whose powder intensity is summed exactly (also with anomalous
dispersion), so the multiplicity of a row is 2. By default no merging of coincident reflections
is done: every reflection is rendered, and coincident peaks add up on the grid differentiably.

:func:`merge_equivalents` merges the rows that a point group maps onto each other (for a
structure that keeps that symmetry, e.g. one expanded from a symmetry template: the equivalents
have the same d-spacing and the same Friedel-summed |F|²). The kept row then carries the number
of rows it stands for in ``mask`` (the kernel multiplies the intensity by it), so a refinement in
P6_3/m renders 1/6 of the peaks with identical results. Preferred orientation breaks the
equivalence (the March–Dollase factor depends on the direction of h): do not merge when it is
refined or set.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

#: Capacity buckets for the number of reflection rows.
REFLECTION_BUCKETS = tuple(sorted({int(b * 2 ** k) for k in range(5, 17) for b in (1, 1.5)}))


def capacity_bucket(n: int) -> int:
    for b in REFLECTION_BUCKETS:
        if n <= b:
            return b
    raise ValueError(f"reflection capacity overflow: {n} reflections exceed the largest capacity "
                     f"({REFLECTION_BUCKETS[-1]}); shorten the 2θ range")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Reflections:
    """A padded half-space list of Miller indices.

    Attributes:
      hkl: ``(cap, 3)`` Miller indices (stored as floats for the matmuls); padding rows are 0.
      mask: ``(cap,)`` weight of each row: 0 for padding, 1 for an enumerated row; a merged
        list (:func:`merge_equivalents`) stores the number of half-space rows a row stands for.
      lattice0: ``(3, 3)`` lattice the list was enumerated for (Å).
      g_max: ``()`` enumeration radius in Å⁻¹ (``|g| = 1/d``).
    """

    hkl: jax.Array
    mask: jax.Array
    lattice0: jax.Array
    g_max: jax.Array

    @property
    def capacity(self) -> int:
        return self.hkl.shape[-2]


def g_max_for(two_theta_max: float, wavelength_min: float) -> float:
    """Radius |g| = 2 sin(θ)/λ reached at ``two_theta_max`` (degrees) with the shortest line."""
    th = np.radians(min(float(two_theta_max), 180.0) / 2)
    return 2.0 * np.sin(th) / float(wavelength_min)


def enumerate_hkl(lattice, g_max: float, g_min: float = 0.0) -> np.ndarray:
    """All half-space Miller indices with ``g_min < |g| <= g_max`` (Å⁻¹), sorted like pymatgen
    (by |g|, then by -h, -k, -l). Host-side NumPy."""
    lat = np.asarray(lattice, dtype=np.float64)
    rec = np.linalg.inv(lat).T
    lim = np.floor(g_max * np.linalg.norm(lat, axis=1) + 1e-9).astype(int)
    if np.prod(2 * lim + 1) > 5e7:
        raise ValueError(f"reflection capacity overflow: the sphere |g| <= {g_max:.3g} Å⁻¹ holds too many "
                         "reflections for this cell; shorten the 2θ range")
    h, k, l = np.meshgrid(*(np.arange(-m, m + 1) for m in lim), indexing="ij")
    hkl = np.stack([h.ravel(), k.ravel(), l.ravel()], axis=1)
    half = (hkl[:, 0] > 0) | ((hkl[:, 0] == 0) & (hkl[:, 1] > 0)) | ((hkl[:, 0] == 0) & (hkl[:, 1] == 0) & (hkl[:, 2] > 0))
    hkl = hkl[half]
    g = np.linalg.norm(hkl @ rec, axis=1)
    keep = (g <= g_max) & (g > g_min)
    hkl, g = hkl[keep], g[keep]
    order = np.lexsort((-hkl[:, 2], -hkl[:, 1], -hkl[:, 0], g))
    return hkl[order]


def make_reflections(lattice, g_max: float, *, capacity: int | None = None, margin: float = 0.03,
                     dtype=None) -> Reflections:
    """Enumerate reflections for ``lattice`` out to ``g_max * (1 + margin)``.

    ``capacity=None`` rounds the count up to a bucket in :data:`REFLECTION_BUCKETS`; a given
    capacity smaller than the count raises ``ValueError`` ("reflection capacity overflow").
    """
    if not (np.isfinite(g_max) and g_max > 0):
        raise ValueError(f"enumeration radius must be positive, got {g_max}")
    radius = float(g_max) * (1.0 + margin)
    hkl = enumerate_hkl(lattice, radius)
    n = len(hkl)
    cap = capacity_bucket(max(n, 1)) if capacity is None else int(capacity)
    if n > cap:
        raise ValueError(f"reflection capacity overflow: {n} reflections needed, capacity is {cap}")
    dtype = dtype or jnp.zeros(()).dtype
    pad = np.zeros((cap, 3))
    pad[:n] = hkl
    mask = np.zeros(cap)
    mask[:n] = 1.0
    return Reflections(hkl=jnp.asarray(pad, dtype), mask=jnp.asarray(mask, dtype),
                       lattice0=jnp.asarray(np.asarray(lattice, np.float64), dtype),
                       g_max=jnp.asarray(radius, dtype))


def merge_equivalents(refl: Reflections, rotations) -> Reflections:
    """Merge the rows of ``refl`` related by the point-group ``rotations`` (``(n, 3, 3)`` integer
    matrices acting on fractional coordinates, as spglib returns them; Friedel's law is added).

    Each orbit keeps its first row (the pymatgen order is preserved) with ``mask`` = the number of
    rows merged into it; the capacity is re-bucketed. Exact for any crystal that has the symmetry
    (same |g| and Friedel-summed |F|² on an orbit) and no preferred orientation. Host-side.
    """
    hkl = np.rint(np.asarray(refl.hkl, np.float64)).astype(np.int64)
    w = np.asarray(refl.mask, np.float64)
    rows = np.flatnonzero(w > 0)
    if rows.size == 0:
        return refl
    rots = np.asarray(rotations, np.int64).reshape(-1, 3, 3)
    if rots.size == 0:
        raise ValueError("merge_equivalents needs at least one rotation")
    rots = np.concatenate([rots, -rots])  # Laue group (Friedel pairs are one row already)
    images = np.einsum("ni,rij->nrj", hkl[rows], rots)  # h' = h R  (row vector)
    # canonical key of each orbit: the lexicographically largest image
    flat = images.reshape(-1, 3)
    order = np.lexsort((flat[:, 2], flat[:, 1], flat[:, 0])).reshape(-1)
    rank = np.empty(len(flat), np.int64)
    rank[order] = np.arange(len(flat))
    best = np.argmax(rank.reshape(len(rows), -1), axis=1)
    keys = images[np.arange(len(rows)), best]
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    weight = np.bincount(inverse, weights=w[rows])
    keep = np.sort(first)  # first occurrence of each orbit, in list order
    n = len(keep)
    cap = capacity_bucket(max(n, 1))
    dtype = refl.hkl.dtype
    pad = np.zeros((cap, 3))
    pad[:n] = hkl[rows[keep]]
    mask = np.zeros(cap)
    mask[:n] = weight[inverse[keep]]
    return Reflections(hkl=jnp.asarray(pad, dtype), mask=jnp.asarray(mask, dtype), lattice0=refl.lattice0,
                       g_max=refl.g_max)


def stack_reflections(items: list[Reflections], capacity: int | None = None) -> Reflections:
    """Stack reflection lists to a common capacity (for ``vmap`` over a batch of crystals)."""
    cap = capacity or max(r.capacity for r in items)
    out = []
    for r in items:
        n_pad = cap - r.capacity
        if n_pad < 0:
            raise ValueError(f"reflection capacity overflow: a list has {r.capacity} rows, capacity is {cap}")
        out.append(Reflections(hkl=jnp.pad(r.hkl, ((0, n_pad), (0, 0))), mask=jnp.pad(r.mask, (0, n_pad)),
                               lattice0=r.lattice0, g_max=r.g_max))
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *out)


def coverage_ok(refl: Reflections, lattice, g_needed):
    """Traced check: True if every reflection with |g(lattice)| <= g_needed was enumerated."""
    t = jnp.linalg.solve(refl.lattice0, lattice)  # L0^-1 L'
    stretch = jnp.sqrt(jnp.max(jnp.linalg.eigvalsh(t.T @ t)))
    return stretch * g_needed <= refl.g_max
