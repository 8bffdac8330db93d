"""X-ray atomic form factors and the scatterer registry.

Every site carries an integer *scatterer index* into one global registry
(``xtaljax/data/scatterers.json``, provenance in ``xtaljax/data/PROVENANCE.md``):

* index 0 is padding: every table row is zero, so a padded site scatters nothing and gets an
  exactly-zero gradient;
* indices 1..98 are the neutral elements H..Cf (index == Z);
* indices above 98 are ions of the Waasmaier–Kirfel table (``"O2-"``, ``"Ca2+"`` ...).

Two form-factor models (a static choice, see :class:`xtaljax.core.pattern.SimConfig`):

``"pymatgen"`` (default)
    ``f(s) = Z - 41.78214 s^2 sum_{i=1..4} a_i exp(-b_i s^2)``, ``s = sin(theta)/lambda`` in Å⁻¹,
    pymatgen's table and formula, so that sticks agree with ``XRDCalculator`` exactly. Ions use
    their element's row, as pymatgen does.
``"itc"``
    Waasmaier & Kirfel (1995): ``f0(s) = sum_{i=1..5} a_i exp(-b_i s^2) + c``, neutral atoms and
    ions, plus anomalous dispersion ``f' + i f''`` taken from the :class:`Instrument`
    (Chantler tables at the anode line; see ``Instrument.dispersion``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import jax.numpy as jnp
import numpy as np

FORM_FACTOR_MODELS = ("pymatgen", "itc")
N_NEUTRAL = 98


@lru_cache(maxsize=1)
def _tables() -> dict:
    text = resources.files("xtaljax.data").joinpath("scatterers.json").read_text()
    raw = json.loads(text)
    return {
        "names": list(raw["names"]),
        "z": np.asarray(raw["z"], dtype=np.float64),
        "pmg_available": np.asarray(raw["pymatgen"]["available"], dtype=bool),
        "pmg": np.asarray(raw["pymatgen"]["coeffs"], dtype=np.float64),  # (S, 4, 2)
        "wk_available": np.asarray(raw["waasmaier_kirfel"]["available"], dtype=bool),
        "wk_a": np.asarray(raw["waasmaier_kirfel"]["a"], dtype=np.float64),  # (S, 5)
        "wk_b": np.asarray(raw["waasmaier_kirfel"]["b"], dtype=np.float64),  # (S, 5)
        "wk_c": np.asarray(raw["waasmaier_kirfel"]["c"], dtype=np.float64),  # (S,)
        "dispersion": raw["dispersion"],
        "lines": raw["lines"],
    }


def scatterer_names() -> list[str]:
    """Names of the registry rows (index 0 is padding, ``""``)."""
    return _tables()["names"]


def n_scatterers() -> int:
    return len(_tables()["names"])


def scatterer_index(name: str) -> int:
    """Registry index of an element symbol (``"Ca"``) or ion (``"Ca2+"``).

    Raises ``ValueError`` naming the symbol if it is unknown.
    """
    names = _tables()["names"]
    try:
        return names.index(name)
    except ValueError:
        raise ValueError(f"unknown element or ion {name!r}") from None


def element_of(index: int) -> str:
    """Element symbol of a registry index (ions map to their element)."""
    name = _tables()["names"][index]
    return name.rstrip("0123456789+-")


def atomic_number(index) -> np.ndarray:
    return _tables()["z"][np.asarray(index)]


def check_model_support(species: np.ndarray, model: str) -> None:
    """Raise ``ValueError`` if some scatterer has no coefficients in ``model``."""
    if model not in FORM_FACTOR_MODELS:
        raise ValueError(f"unknown form-factor model {model!r}; choose from {FORM_FACTOR_MODELS}")
    t = _tables()
    avail = t["pmg_available"] if model == "pymatgen" else t["wk_available"]
    species = np.asarray(species).astype(int)
    bad = sorted({t["names"][i] for i in species.ravel() if i > 0 and not avail[i]})
    if bad:
        raise ValueError(f"no {model} scattering coefficients for {', '.join(bad)}")


def dispersion_table(line: str) -> np.ndarray:
    """``(n_scatterers, 2)`` array of (f', f'') in electrons at a named line (e.g. ``"CuKa1"``).

    Ions take the values of their element. Chantler's tables stop at U (Z = 92); heavier
    elements get zeros.
    """
    t = _tables()
    if line not in t["dispersion"]:
        raise ValueError(f"no dispersion table for line {line!r}; known: {sorted(t['dispersion'])}")
    d = t["dispersion"][line]
    fp = np.asarray(d["fp"], dtype=np.float64)
    fpp = np.asarray(d["fpp"], dtype=np.float64)
    z = t["z"].astype(int)
    return np.stack([fp[z], fpp[z]], axis=-1)


def form_factor(species, s2, model: str = "pymatgen"):
    """Non-dispersive form factor f0 for each (reflection, site).

    Args:
      species: ``(n,)`` int scatterer indices (0 = padding).
      s2: ``(m,)`` values of ``s^2 = (sin(theta)/lambda)^2`` in Å⁻².
      model: ``"pymatgen"`` or ``"itc"``.

    Returns:
      ``(m, n)`` form factors in electrons (exactly 0 for padding).
    """
    t = _tables()
    dt = s2.dtype
    s2 = s2[:, None]
    # explicit sums over the 4 (5) Gaussians: elementwise (m, n) terms that XLA fuses into one
    # loop, instead of an (m, n, 4) broadcast reduced over its short last axis
    if model == "pymatgen":
        coeff = jnp.asarray(t["pmg"], dt)[species]  # (n, 4, 2)
        z = jnp.asarray(t["z"], dt)[species]  # (n,)
        acc = coeff[None, :, 0, 0] * jnp.exp(-coeff[None, :, 0, 1] * s2)
        for i in range(1, coeff.shape[1]):
            acc = acc + coeff[None, :, i, 0] * jnp.exp(-coeff[None, :, i, 1] * s2)
        return z[None, :] - 41.78214 * s2 * acc
    if model == "itc":
        a = jnp.asarray(t["wk_a"], dt)[species]
        b = jnp.asarray(t["wk_b"], dt)[species]
        c = jnp.asarray(t["wk_c"], dt)[species]
        acc = a[None, :, 0] * jnp.exp(-b[None, :, 0] * s2)
        for i in range(1, a.shape[1]):
            acc = acc + a[None, :, i] * jnp.exp(-b[None, :, i] * s2)
        return acc + c[None, :]
    raise ValueError(f"unknown form-factor model {model!r}; choose from {FORM_FACTOR_MODELS}")
