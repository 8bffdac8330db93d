"""Seeded structure distortions (host side, NumPy).

Protocol (after Segal et al. 2026, who distort MP-20 structures by lattice and fractional-coordinate
noise). For a structure with lattice ``L`` (rows a, b, c, Å) and fractional coordinates ``x``:

* **lattice strain** (``sigma_lattice``, dimensionless): a random symmetric strain
  ``ε = (G + Gᵀ)/2`` with ``G_ij ~ N(0, sigma_lattice²)`` (so diagonal entries have standard deviation
  ``sigma_lattice`` and off-diagonals ``sigma_lattice/√2``), applied as ``L' = L (I + ε)``: lengths
  change by about ``sigma_lattice`` relative, angles by about ``sigma_lattice`` radians. Fractional
  coordinates are kept, so atoms move with the cell.
* **coordinate noise** (``sigma_coords``): Gaussian displacements of every atom, independently.
  ``coords_unit="angstrom"`` (default): Cartesian ``Δr ~ N(0, sigma_coords² I₃)`` in Å, converted
  exactly to fractional with the (undistorted) cell, ``Δx = Δr L⁻¹``; ``coords_unit="fractional"``:
  ``Δx ~ N(0, sigma_coords²)`` per fractional coordinate directly. Coordinates are wrapped into [0, 1).
* ``mode``: ``"lattice"``, ``"coords"`` or ``"both"``; a mode uses only its sigmas, which must then be
  > 0 (``ValueError`` otherwise).

Every distortion ``i`` of a set is drawn from ``numpy.random.default_rng([seed, i])``, so a
distortion does not depend on how many others are drawn.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MODES = ("lattice", "coords", "both")


@dataclasses.dataclass(frozen=True)
class DistortionSpec:
    """What to draw. See the module docstring."""

    sigma_lattice: float = 0.02
    sigma_coords: float = 0.1
    mode: str = "both"
    coords_unit: str = "angstrom"

    def validate(self) -> "DistortionSpec":
        if self.mode not in MODES:
            raise ValueError(f"distortion mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.coords_unit not in ("angstrom", "fractional"):
            raise ValueError(f"coords_unit must be 'angstrom' or 'fractional', got {self.coords_unit!r}")
        if self.mode in ("lattice", "both") and not (np.isfinite(self.sigma_lattice) and self.sigma_lattice > 0):
            raise ValueError(f"sigma_lattice must be > 0, got {self.sigma_lattice}")
        if self.mode in ("coords", "both") and not (np.isfinite(self.sigma_coords) and self.sigma_coords > 0):
            raise ValueError(f"sigma_coords must be > 0, got {self.sigma_coords}")
        return self


def random_strain(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Symmetric ``(3, 3)`` strain ``(G + Gᵀ)/2`` with ``G_ij ~ N(0, sigma²)``."""
    g = rng.normal(0.0, sigma, (3, 3))
    return 0.5 * (g + g.T)


def distort_one(lattice, frac, spec: DistortionSpec, rng: np.random.Generator):
    """One distortion ``(lattice', frac')`` of ``lattice (3, 3)`` and ``frac (n, 3)``."""
    lattice = np.asarray(lattice, np.float64)
    frac = np.asarray(frac, np.float64)
    new_lat = lattice
    new_frac = frac
    if spec.mode in ("lattice", "both"):
        eps = random_strain(rng, spec.sigma_lattice)
        new_lat = lattice @ (np.eye(3) + eps)
        if np.linalg.det(new_lat) <= 0:
            raise ValueError(f"sigma_lattice={spec.sigma_lattice} is so large that a strained cell collapsed")
    if spec.mode in ("coords", "both"):
        if spec.coords_unit == "angstrom":
            dr = rng.normal(0.0, spec.sigma_coords, frac.shape)
            dx = dr @ np.linalg.inv(lattice)
        else:
            dx = rng.normal(0.0, spec.sigma_coords, frac.shape)
        new_frac = (frac + dx) % 1.0
    return new_lat, new_frac


def distort(lattice, frac, n: int, spec: DistortionSpec | None = None, *, seed: int = 0, mask=None):
    """``n`` seeded distortions: ``(lattices (n, 3, 3), fracs (n, m, 3))``.

    ``mask`` (m,): rows with mask 0 (padding) are returned unchanged. Raises ``ValueError`` for
    ``n < 1`` or invalid sigmas (one line).
    """
    spec = (spec or DistortionSpec()).validate()
    n = int(n)
    if n < 1:
        raise ValueError(f"number of distortions must be >= 1, got {n}")
    frac = np.asarray(frac, np.float64)
    keep = np.ones(frac.shape[0], bool) if mask is None else np.asarray(mask) > 0
    lats, fracs = [], []
    for i in range(n):
        rng = np.random.default_rng([int(seed), i])
        lat_i, frac_i = distort_one(lattice, frac, spec, rng)
        lats.append(lat_i)
        fracs.append(np.where(keep[:, None], frac_i, frac))
    return np.stack(lats), np.stack(fracs)


def displacement_rms(lat_a, frac_a, lat_b, frac_b, mask=None) -> float:
    """Known-correspondence structural distance (Å): root-mean-square over real atoms i of
    ``|x_a,i L_a − x_b,i L_b|`` where ``x_a − x_b`` is first wrapped to [−½, ½) (each atom compared
    with the nearest periodic image of its own counterpart, in fractional terms) and the mean
    fractional shift is removed (an origin shift changes nothing physical). Includes the effect of
    the lattice change through the mean cell (atoms far from the origin move more under strain).
    """
    lat_a, lat_b = np.asarray(lat_a, np.float64), np.asarray(lat_b, np.float64)
    fa, fb = np.asarray(frac_a, np.float64), np.asarray(frac_b, np.float64)
    keep = np.ones(fa.shape[0], bool) if mask is None else np.asarray(mask) > 0
    fa, fb = fa[keep], fb[keep]
    d = fa - fb
    d = d - np.round(d)
    d = d - d.mean(0)
    fb_aligned = fa - d  # counterpart of each atom of a, next to it
    ra = fa @ lat_a
    rb = fb_aligned @ lat_b
    # the cells differ: compare around the centroid so that a uniform strain is not an origin effect
    diff = (ra - ra.mean(0)) - (rb - rb.mean(0))
    return float(np.sqrt(np.mean(np.sum(diff ** 2, axis=1))))
