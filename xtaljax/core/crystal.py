"""The ``Crystal`` pytree: one periodic structure, padded to a fixed number of sites."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .scattering import n_scatterers

#: Site-count buckets: crystals are padded up to the first bucket that fits, so that a stream
#: of structures of different sizes compiles a handful of kernels, not one per size.
SITE_BUCKETS = (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def bucket(n: int, buckets: Sequence[int] = SITE_BUCKETS) -> int:
    for b in buckets:
        if n <= b:
            return b
    return int(2 ** np.ceil(np.log2(max(n, 1))))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Crystal:
    """A periodic crystal structure with ``n`` (possibly padded) sites.

    Attributes:
      lattice: ``(3, 3)`` rows are the lattice vectors a, b, c in Å.
      frac: ``(n, 3)`` fractional coordinates.
      species: ``(n,)`` int scatterer indices (see :mod:`xtaljax.core.scattering`); 0 = padding.
      occupancy: ``(n,)`` site occupancies (0 for padding).
      b_iso: ``(n,)`` isotropic displacement parameters B in Å² (B = 8π²U).
      mask: ``(n,)`` 1.0 for real sites, 0.0 for padding.

    A partially occupied site holding several species is stored as several rows at the same
    coordinates. Padding rows are finite and inert: coordinates 0, species 0 (zero form factor),
    occupancy 0, mask 0, so they contribute nothing and receive an exactly-zero gradient.
    Batch crystals by stacking along a new leading axis (``stack``) and ``jax.vmap``.
    """

    lattice: jax.Array
    frac: jax.Array
    species: jax.Array
    occupancy: jax.Array
    b_iso: jax.Array
    mask: jax.Array

    @property
    def n_sites(self) -> int:
        return self.frac.shape[-2]

    @classmethod
    def create(cls, lattice, frac, species, occupancy=None, b_iso=None, *, pad_to: int | None = None,
               dtype=None) -> "Crystal":
        """Build (and validate) a crystal from host arrays, padding to ``pad_to`` sites.

        ``pad_to=None`` pads to the next size in :data:`SITE_BUCKETS`; ``pad_to=0`` does not pad.
        Raises ``ValueError`` with a one-line message on invalid input.
        """
        dtype = dtype or jnp.zeros(()).dtype  # float32 unless x64 is enabled
        lattice = np.asarray(lattice, dtype=np.float64)
        frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
        species = np.asarray(species).astype(np.int64).reshape(-1)
        n = frac.shape[0]
        occupancy = np.ones(n) if occupancy is None else np.asarray(occupancy, dtype=np.float64).reshape(-1)
        b_iso = np.zeros(n) if b_iso is None else np.asarray(b_iso, dtype=np.float64).reshape(-1)
        validate_host(lattice, frac, species, occupancy, b_iso)
        size = n if pad_to == 0 else (bucket(n) if pad_to is None else pad_to)
        if size < n:
            raise ValueError(f"pad_to={size} is smaller than the number of sites ({n})")
        pad = size - n

        def p(x, fill=0.0):
            return np.concatenate([x, np.full((pad,) + x.shape[1:], fill, dtype=x.dtype)])

        return cls(
            lattice=jnp.asarray(lattice, dtype),
            frac=jnp.asarray(p(frac), dtype),
            species=jnp.asarray(p(species, 0), jnp.int32),
            occupancy=jnp.asarray(p(occupancy), dtype),
            b_iso=jnp.asarray(p(b_iso), dtype),
            mask=jnp.asarray(p(np.ones(n)), dtype),
        )

    def pad(self, size: int) -> "Crystal":
        """Return the same crystal padded (or trimmed of padding) to ``size`` sites."""
        n_real = int(np.asarray(self.mask).sum())
        if size < n_real:
            raise ValueError(f"cannot pad to {size} sites: the crystal has {n_real} real sites")
        keep = np.asarray(self.mask) > 0
        return Crystal.create(np.asarray(self.lattice), np.asarray(self.frac)[keep],
                              np.asarray(self.species)[keep], np.asarray(self.occupancy)[keep],
                              np.asarray(self.b_iso)[keep], pad_to=size, dtype=self.frac.dtype)

    def astype(self, dtype) -> "Crystal":
        """Cast the floating-point fields to ``dtype``."""
        return dataclasses.replace(
            self, lattice=self.lattice.astype(dtype), frac=self.frac.astype(dtype),
            occupancy=self.occupancy.astype(dtype), b_iso=self.b_iso.astype(dtype),
            mask=self.mask.astype(dtype))


def validate_host(lattice, frac, species, occupancy, b_iso) -> None:
    """One-line ``ValueError`` for the input errors a user can make."""
    if lattice.shape != (3, 3):
        raise ValueError(f"lattice must be 3x3, got shape {lattice.shape}")
    if not np.all(np.isfinite(lattice)):
        raise ValueError("lattice contains NaN or infinite values")
    vol = float(np.linalg.det(lattice))
    if not vol > 1e-6:
        raise ValueError(f"cell volume must be positive, got {vol:.6g} Å^3 (zero, negative or left-handed cell)")
    n = frac.shape[0]
    if n == 0:
        raise ValueError("structure has no sites")
    for name, arr in (("species", species), ("occupancy", occupancy), ("b_iso", b_iso)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} entries but there are {n} sites")
    if not np.all(np.isfinite(frac)):
        raise ValueError("fractional coordinates contain NaN or infinite values")
    if not (np.all(np.isfinite(occupancy)) and np.all(np.isfinite(b_iso))):
        raise ValueError("occupancy or B_iso contains NaN or infinite values")
    if np.any(species <= 0) or np.any(species >= n_scatterers()):
        raise ValueError(f"species indices must be in 1..{n_scatterers() - 1}; got {sorted(set(species.tolist()))}")
    if np.any(occupancy < 0) or np.any(occupancy > 1 + 1e-6):
        raise ValueError("occupancies must lie in [0, 1]")


def stack(crystals: Sequence[Crystal], pad_to: int | None = None) -> Crystal:
    """Stack crystals (of any site counts) into one batched ``Crystal`` with a leading axis."""
    if not crystals:
        raise ValueError("stack() needs at least one crystal")
    n = max(int(np.asarray(c.mask).sum()) for c in crystals)
    size = pad_to or max(bucket(n), max(c.n_sites for c in crystals))
    padded = [c if c.n_sites == size else c.pad(size) for c in crystals]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *padded)


def unstack(batch: Crystal) -> list[Crystal]:
    """Inverse of :func:`stack`."""
    b = batch.lattice.shape[0]
    return [jax.tree_util.tree_map(lambda x: x[i], batch) for i in range(b)]
