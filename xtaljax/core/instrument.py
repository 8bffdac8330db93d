"""The ``Instrument`` pytree: every instrument and sample parameter one might fit.

Units and conventions (GSAS/GSAS-II conventions, so that ``.prm``/``.instprm`` values map 1:1
after the centidegree conversion):

=============== ============ ==============================================================
field           unit         meaning
=============== ============ ==============================================================
wavelengths     Å            ``(L,)`` emission lines (e.g. Cu Kα1, Kα2)
line_weights    1            ``(L,)`` relative line intensities (Kα2/Kα1 = 0.5 for Cu)
zero            ° 2θ         zero shift, added to every peak position
displacement    mm           sample displacement s: Δ2θ = −(2 s / R) cos θ (radians)
radius          mm           goniometer radius R
transparency    ° 2θ         Δ2θ = transparency · sin 2θ
polarization    1            k in P(2θ) = 1 + k cos² 2θ (k = 1 unpolarised lab; k = cos² 2θ_M
                             with a monochromator at 2θ_M; see the constructors)
u, v, w, p      °²           Gaussian variance σ² = U tan²θ + V tanθ + W + P / cos²θ
                             (FWHM_G = √(8 ln 2 σ²)); GSAS values in centideg² / 10⁴
x, y            °            Lorentzian FWHM γ = X / cosθ + Y tanθ (GSAS-II's X, Y; the
                             FullProf names are swapped); GSAS values in centideg / 100
inv_size        Å⁻¹          1/D: Scherrer size broadening γ_size = (180/π) λ / (D cosθ), K = 1
strain          1            FWHM of Δd/d: γ_strain = (180/π) 2 ε tanθ (Lorentzian)
asym_sl, asym_hl 1           Finger–Cox–Jephcoat axial divergence S/L and H/L (0 = none)
scale           1            overall scale factor
background      counts       ``(K,)`` Chebyshev coefficients over the grid mapped to [−1, 1]
po_ratio        1            March–Dollase r (1 = random powder)
po_axis         hkl          ``(3,)`` preferred-orientation direction, reciprocal-lattice hkl
dispersion      electrons    ``(S, 2)`` f′, f″ per scatterer (used by the ``"itc"`` model)
=============== ============ ==============================================================

All fields are arrays (dynamic): new values never retrace a jitted simulator. Shapes (number of
lines, background terms) are fixed per instance.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .scattering import _tables, dispersion_table, n_scatterers

#: Kα1, Kα2, Kα2/Kα1 intensity ratio for the common anodes (Å), ITC Table 4.2.2.1 values.
ANODES = {
    "Cu": (1.540593, 1.544414, 0.5),
    "Mo": (0.709317, 0.713607, 0.5),
    "Co": (1.788996, 1.792835, 0.5),
    "Cr": (2.289760, 2.293663, 0.5),
    "Fe": (1.936042, 1.939980, 0.5),
    "Ag": (0.559421, 0.563813, 0.5),
}

#: pymatgen ``XRDCalculator`` wavelength names (single line, Å): "CuKa" is the weighted mean.
PYMATGEN_WAVELENGTHS = {
    "CuKa": 1.54184, "CuKa2": 1.54439, "CuKa1": 1.54056, "CuKb1": 1.39222,
    "MoKa": 0.71073, "MoKa2": 0.71359, "MoKa1": 0.70930, "MoKb1": 0.63229,
    "CrKa": 2.29100, "CrKa2": 2.29361, "CrKa1": 2.28970, "CrKb1": 2.08487,
    "FeKa": 1.93735, "FeKa2": 1.93998, "FeKa1": 1.93604, "FeKb1": 1.75661,
    "CoKa": 1.79026, "CoKa2": 1.79285, "CoKa1": 1.78896, "CoKb1": 1.63079,
    "AgKa": 0.560885, "AgKa2": 0.563813, "AgKa1": 0.559421, "AgKb1": 0.497082,
}


def _f(x, dtype=None):
    return jnp.asarray(x, dtype or jnp.zeros(()).dtype)


def nearest_dispersion_line(wavelength: float) -> str:
    """Name of the tabulated characteristic line closest to ``wavelength`` (Å)."""
    lines = _tables()["lines"]
    return min(lines, key=lambda k: abs(lines[k] - wavelength))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Instrument:
    """Instrument, profile and sample parameters (see the module docstring for units)."""

    wavelengths: jax.Array
    line_weights: jax.Array
    zero: jax.Array
    displacement: jax.Array
    radius: jax.Array
    transparency: jax.Array
    polarization: jax.Array
    u: jax.Array
    v: jax.Array
    w: jax.Array
    p: jax.Array
    x: jax.Array
    y: jax.Array
    inv_size: jax.Array
    strain: jax.Array
    asym_sl: jax.Array
    asym_hl: jax.Array
    scale: jax.Array
    background: jax.Array
    po_ratio: jax.Array
    po_axis: jax.Array
    dispersion: jax.Array

    @classmethod
    def create(cls, wavelengths, line_weights=None, *, zero=0.0, displacement=0.0, radius=240.0,
               transparency=0.0, polarization=1.0, u=2e-4, v=-2e-4, w=5e-4, p=0.0, x=0.01, y=0.0,
               inv_size=0.0, strain=0.0, asym_sl=0.0, asym_hl=0.0, scale=1.0, background=(0.0,),
               po_ratio=1.0, po_axis=(0.0, 0.0, 1.0), dispersion=None, dtype=None) -> "Instrument":
        """Build and validate an instrument. ``dispersion=None`` takes f′, f″ at the tabulated
        line nearest the first wavelength. Default profile terms describe a generic lab
        diffractometer (FWHM ≈ 0.05–0.1° 2θ); replace them with a ``.prm``/``.instprm``."""
        lam = np.atleast_1d(np.asarray(wavelengths, dtype=np.float64))
        weights = np.ones_like(lam) if line_weights is None else np.atleast_1d(np.asarray(line_weights, np.float64))
        if lam.ndim != 1 or lam.size == 0:
            raise ValueError("wavelengths must be a non-empty 1-D list of values in Å")
        if not np.all(np.isfinite(lam)) or np.any(lam <= 0):
            raise ValueError(f"wavelength must be a positive number of Å, got {lam.tolist()}")
        if np.any(lam > 20):
            raise ValueError(f"wavelength {lam.max():g} Å is implausible for X-rays (did you give keV or nm?)")
        if weights.shape != lam.shape or np.any(weights < 0) or not np.all(np.isfinite(weights)):
            raise ValueError("line_weights must be non-negative, one per wavelength")
        if radius <= 0:
            raise ValueError("goniometer radius must be positive (mm)")
        if dispersion is None:
            dispersion = dispersion_table(nearest_dispersion_line(float(lam[0])))
        dispersion = np.asarray(dispersion, np.float64)
        if dispersion.shape != (n_scatterers(), 2):
            raise ValueError(f"dispersion must have shape ({n_scatterers()}, 2)")
        f = lambda v: _f(v, dtype)  # noqa: E731
        return cls(
            wavelengths=f(lam), line_weights=f(weights), zero=f(zero), displacement=f(displacement),
            radius=f(radius), transparency=f(transparency), polarization=f(polarization),
            u=f(u), v=f(v), w=f(w), p=f(p), x=f(x), y=f(y), inv_size=f(inv_size), strain=f(strain),
            asym_sl=f(asym_sl), asym_hl=f(asym_hl), scale=f(scale),
            background=f(np.atleast_1d(np.asarray(background, np.float64))),
            po_ratio=f(po_ratio), po_axis=f(np.asarray(po_axis, np.float64)), dispersion=f(dispersion))

    # ---- constructors for the common sources -------------------------------------------------
    @classmethod
    def lab(cls, anode: str = "Cu", *, kalpha2: bool = True, monochromator_2theta: float | None = None,
            **kw) -> "Instrument":
        """Laboratory source: Kα1 (+ Kα2 at the tabulated ratio) of ``anode``.

        ``monochromator_2theta`` (degrees): polarisation k = cos² 2θ_M of a monochromator crystal;
        ``None`` gives the unpolarised factor 1 + cos² 2θ (pymatgen's).
        """
        if anode not in ANODES:
            raise ValueError(f"unknown anode {anode!r}; choose from {sorted(ANODES)}")
        l1, l2, ratio = ANODES[anode]
        lam, wts = ([l1, l2], [1.0, ratio]) if kalpha2 else ([l1], [1.0])
        if monochromator_2theta is not None:
            kw.setdefault("polarization", float(np.cos(np.radians(monochromator_2theta)) ** 2))
        kw.setdefault("dispersion", dispersion_table(f"{anode}Ka1"))
        return cls.create(lam, wts, **kw)

    @classmethod
    def cu_kalpha(cls, **kw) -> "Instrument":
        return cls.lab("Cu", **kw)

    @classmethod
    def mo_kalpha(cls, **kw) -> "Instrument":
        return cls.lab("Mo", **kw)

    @classmethod
    def co_kalpha(cls, **kw) -> "Instrument":
        return cls.lab("Co", **kw)

    @classmethod
    def cr_kalpha(cls, **kw) -> "Instrument":
        return cls.lab("Cr", **kw)

    @classmethod
    def fe_kalpha(cls, **kw) -> "Instrument":
        return cls.lab("Fe", **kw)

    @classmethod
    def ag_kalpha(cls, **kw) -> "Instrument":
        return cls.lab("Ag", **kw)

    @classmethod
    def synchrotron(cls, wavelength: float, polarization_fraction: float = 0.99, **kw) -> "Instrument":
        """Monochromatic synchrotron beam, linearly polarised perpendicular to the scattering
        plane with fraction p: P ∝ p + (1 − p) cos² 2θ, i.e. k = (1 − p)/p."""
        if not 0 < polarization_fraction <= 1:
            raise ValueError("polarization_fraction must lie in (0, 1]")
        kw.setdefault("polarization", (1 - polarization_fraction) / polarization_fraction)
        return cls.create([wavelength], [1.0], **kw)

    @classmethod
    def from_wavelength(cls, wavelength, **kw) -> "Instrument":
        """Single line: a float in Å or a pymatgen name ("CuKa", "MoKa1", ...); "CuKa"-style
        names are single-line weighted means, as in pymatgen."""
        return cls.create([resolve_wavelength(wavelength)], [1.0], **kw)

    def replace(self, **changes) -> "Instrument":
        """Copy with some fields replaced (values cast to this instrument's dtype)."""
        changes = {k: jnp.asarray(v, getattr(self, k).dtype) for k, v in changes.items()}
        return dataclasses.replace(self, **changes)


def resolve_wavelength(wavelength) -> float:
    """A wavelength in Å from a number or a pymatgen-style name (``"CuKa"``, ``"MoKa1"``)."""
    if isinstance(wavelength, str):
        if wavelength in PYMATGEN_WAVELENGTHS:
            return PYMATGEN_WAVELENGTHS[wavelength]
        try:
            wavelength = float(wavelength)
        except ValueError:
            raise ValueError(f"unknown wavelength {wavelength!r}; use Å or one of {sorted(PYMATGEN_WAVELENGTHS)}") from None
    lam = float(wavelength)
    if not np.isfinite(lam) or lam <= 0:
        raise ValueError(f"wavelength must be a positive number of Å, got {lam}")
    return lam
