"""Lattice geometry. Rows of ``lattice`` are the real-space vectors a, b, c in Å.

Reciprocal vectors are crystallographic (no 2π): ``a* · a = 1``; ``|g_hkl| = 1/d_hkl``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def reciprocal(lattice):
    """Reciprocal lattice (rows a*, b*, c*) in Å⁻¹, without the 2π factor."""
    return jnp.linalg.inv(lattice).T


def volume(lattice):
    """Signed cell volume in Å³ (positive for a right-handed cell)."""
    return jnp.linalg.det(lattice)


def lattice_from_parameters(a, b, c, alpha, beta, gamma):
    """Lattice matrix from a, b, c (Å) and alpha, beta, gamma (degrees).

    pymatgen's convention (c along z, a in the xz plane), so that the matrices agree with
    ``pymatgen.core.Lattice.from_parameters``. Differentiable.
    """
    al, be, ga = (jnp.deg2rad(x) for x in (alpha, beta, gamma))
    ca, cb, cg = jnp.cos(al), jnp.cos(be), jnp.cos(ga)
    sa, sb = jnp.sin(al), jnp.sin(be)
    val = jnp.clip((ca * cb - cg) / (sa * sb), -1.0, 1.0)
    gamma_star = jnp.arccos(val)
    va = jnp.stack([a * sb, jnp.zeros_like(a), a * cb])
    vb = jnp.stack([-b * sa * jnp.cos(gamma_star), b * sa * jnp.sin(gamma_star), b * ca])
    vc = jnp.stack([jnp.zeros_like(c), jnp.zeros_like(c), c])
    return jnp.stack([va, vb, vc])


def lattice_parameters(lattice) -> np.ndarray:
    """(a, b, c, alpha, beta, gamma) in Å and degrees (host-side helper, NumPy)."""
    m = np.asarray(lattice, dtype=np.float64)
    lengths = np.linalg.norm(m, axis=1)
    a, b, c = m

    def ang(u, v):
        return np.degrees(np.arccos(np.clip(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))

    return np.array([*lengths, ang(b, c), ang(a, c), ang(a, b)])
