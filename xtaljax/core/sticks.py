"""Stick patterns (reflection tables): the public intermediate for tests, indexing and the CLI.

Computed by the same structure-factor kernel as :func:`simulate`, in float64, and merged
exactly as pymatgen's ``XRDCalculator.get_pattern`` merges them (reflections whose 2θ round to
the same multiple of 1e-5° are summed; the first one in (|g|, −h, −k, −l) order gives 2θ and d;
peaks below 1e-3 of the strongest are dropped), so that the result can be compared with
pymatgen peak by peak.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .crystal import Crystal
from .instrument import resolve_wavelength
from .pattern import structure_factors, validate_crystal
from .reflections import capacity_bucket, enumerate_hkl
from .scattering import check_model_support

TWO_THETA_TOL = 1e-5  # degrees; pymatgen's AbstractDiffractionPatternCalculator.TWO_THETA_TOL
SCALED_INTENSITY_TOL = 1e-3  # pymatgen's SCALED_INTENSITY_TOL (of 100)


@dataclasses.dataclass(frozen=True)
class StickTable:
    """Merged peaks. Arrays have one entry per peak, in ascending 2θ.

    Attributes:
      two_theta: peak positions (degrees).
      d_spacing: d (Å).
      intensity: m·|F|²·LP summed over the merged reflections (scaled so the strongest is 100
        if ``scaled``).
      multiplicity: number of reflections h (Friedel mates counted) merged into the peak.
      f2: mean |F|² (electrons²) of those reflections.
      lp: Lorentz–polarisation factor (1 + cos²2θ)/(sin²θ cosθ) at the peak.
      hkl: a representative Miller index (pymatgen's choice: the largest of the first family).
      members: for each peak, the ``(k, 3)`` Miller indices of all merged reflections (one per
        Friedel pair).
      wavelength: Å.
    """

    two_theta: np.ndarray
    d_spacing: np.ndarray
    intensity: np.ndarray
    multiplicity: np.ndarray
    f2: np.ndarray
    lp: np.ndarray
    hkl: np.ndarray
    members: list
    wavelength: float

    def __len__(self) -> int:
        return len(self.two_theta)


def reflection_table(crystal: Crystal, wavelength, two_theta_range=(0.0, 90.0), *, model: str = "pymatgen",
                     dispersion=None) -> dict:
    """Every reflection (one row per Friedel pair) in the range, unmerged, float64.

    Returns a dict of NumPy arrays: ``hkl (m,3)``, ``g``, ``d_spacing``, ``two_theta``, ``f2``
    (|F|², mean of the pair), ``lp``, ``intensity`` (= 2 |F|² LP). Sorted as pymatgen sorts.
    """
    crystal = as_float64_crystal(crystal)
    validate_crystal(crystal)
    lam = resolve_wavelength(wavelength)
    check_model_support(np.asarray(crystal.species), model)
    lo, hi = (0.0, 180.0) if two_theta_range is None else (float(two_theta_range[0]), float(two_theta_range[1]))
    if not (0 <= lo < hi <= 180):
        raise ValueError(f"2θ range must satisfy 0 <= start < stop <= 180, got {lo}..{hi}")
    min_r, max_r = (2 * np.sin(np.radians(t / 2)) / lam for t in (lo, hi))
    lattice = np.asarray(crystal.lattice, np.float64)
    hkl = enumerate_hkl(lattice, max_r)
    with jax.enable_x64(True):
        c64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.int32 if a.dtype.kind in "iu" else jnp.float64), crystal)
        disp = jnp.zeros((1, 2), jnp.float64) if dispersion is None else jnp.asarray(np.asarray(dispersion), jnp.float64)
        cap = capacity_bucket(max(len(hkl), 1))  # bucketed: one compilation per size class
        hkl_pad = np.zeros((cap, 3))
        hkl_pad[: len(hkl)] = hkl
        mask = (np.arange(cap) < len(hkl)).astype(np.float64)
        g, f2, _ = _sf64(c64, jnp.asarray(hkl_pad), jnp.asarray(mask), disp, model)
        g = np.asarray(g)[: len(hkl)]
        f2 = np.asarray(f2)[: len(hkl)]
    # pymatgen keeps points with |g| >= min_r (its sphere search is on the same |g|)
    keep = g >= min_r if min_r else np.ones(len(g), bool)
    hkl, g, f2 = hkl[keep], g[keep], f2[keep]
    theta = np.arcsin(np.clip(lam * g / 2, -1, 1))
    lp = (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))
    return {"hkl": hkl, "g": g, "d_spacing": 1.0 / g, "two_theta": np.degrees(2 * theta), "f2": f2,
            "lp": lp, "intensity": 2.0 * f2 * lp}


def as_float64_crystal(source) -> Crystal:
    """A float64 :class:`Crystal` from a Crystal, a pymatgen Structure, an ASE Atoms or a path.

    Structures and files are converted at full precision. A float32 Crystal keeps its float32
    values: symmetry-equivalent reflections then differ in 2θ by ~1e-6°, which can split a
    pymatgen-style merged peak (1e-5° bins); pass the structure itself for exact sticks.
    """
    if isinstance(source, Crystal):
        return source
    from ..io.structures import read_structure  # host-side conversion; pymatgen imported lazily

    with jax.enable_x64(True):
        return read_structure(source, dtype=jnp.float64)


_sf64 = jax.jit(structure_factors, static_argnames=("model",))


def sticks(crystal: Crystal, wavelength="CuKa", two_theta_range=(0.0, 90.0), *, scaled: bool = True,
           model: str = "pymatgen", dispersion=None) -> StickTable:
    """The stick pattern of ``crystal``, merged like pymatgen's ``XRDCalculator.get_pattern``.

    Args:
      crystal: one (unbatched) crystal, or a pymatgen ``Structure``/ASE ``Atoms``/file path
        (converted in float64, which pymatgen-exact merging needs; see ``as_float64_crystal``).
      wavelength: Å or a pymatgen name ("CuKa" = 1.54184 Å, the Kα1/Kα2 weighted mean).
      two_theta_range: (start, stop) in degrees, or ``None`` for the whole limiting sphere.
      scaled: scale intensities so the strongest peak is 100.
      model: form-factor model (``"pymatgen"`` reproduces pymatgen exactly).
    """
    t = reflection_table(crystal, wavelength, two_theta_range, model=model, dispersion=dispersion)
    lam = resolve_wavelength(wavelength)
    empty = StickTable(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0), np.zeros(0),
                       np.zeros((0, 3), int), [], lam)
    if len(t["g"]) == 0:
        return empty
    keys = np.round(t["two_theta"] / TWO_THETA_TOL).astype(np.int64)
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(int(k), []).append(i)
    order = sorted(groups)
    inten = np.array([t["intensity"][groups[k]].sum() for k in order])
    if inten.max() <= 0:
        return empty
    keep = inten / inten.max() * 100 > SCALED_INTENSITY_TOL
    rows = [groups[k] for k, kp in zip(order, keep) if kp]
    inten = inten[keep]
    first = np.array([r[0] for r in rows])
    members = [t["hkl"][r] for r in rows]
    mult = np.array([2 * len(r) for r in rows])
    f2 = np.array([t["f2"][r].mean() for r in rows])
    rep = np.array([_representative(m) for m in members]).reshape(-1, 3)
    if scaled:
        inten = inten / inten.max() * 100.0
    return StickTable(two_theta=t["two_theta"][first], d_spacing=t["d_spacing"][first], intensity=inten,
                      multiplicity=mult, f2=f2, lp=t["lp"][first], hkl=rep, members=members, wavelength=lam)


def _representative(members: np.ndarray) -> np.ndarray:
    """pymatgen's representative: the max (tuple order) of the first permutation family,
    Friedel mates included."""
    both = np.concatenate([members, -members])
    ref = np.sort(np.abs(both[0]))
    fam = [tuple(int(v) for v in h) for h in both if np.array_equal(np.sort(np.abs(h)), ref)]
    return np.array(max(fam))
