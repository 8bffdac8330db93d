"""Structures in and out: pymatgen ``Structure``, CIF files, ASE ``Atoms`` ⇄ :class:`Crystal`.

Host-side (pymatgen/ASE); never jitted.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..core.crystal import Crystal
from ..core.scattering import element_of, scatterer_index, scatterer_names


def _scatterer_for(sp) -> int:
    """Registry index for a pymatgen Element/Species: the ion if it is tabulated, else the element."""
    symbol = getattr(sp, "symbol", None) or str(sp)
    if symbol in ("X", "Xx") or getattr(sp, "Z", 0) in (0, None):
        raise ValueError(f"unknown element {str(sp)!r}")
    oxi = getattr(sp, "oxi_state", None)
    if oxi:
        q = int(round(oxi))
        if q == oxi and q != 0:
            name = f"{symbol}{abs(q)}{'+' if q > 0 else '-'}"
            if name in scatterer_names():
                return scatterer_index(name)
    return scatterer_index(symbol)


def from_pymatgen(structure, *, b_iso: float | dict | None = None, pad_to: int | None = None,
                  dtype=None) -> Crystal:
    """Convert a pymatgen ``Structure`` to a :class:`Crystal`.

    Partially occupied / mixed sites become one row per species at the same coordinates.
    ``b_iso``: one B (Å²) for all sites, a ``{element: B}`` dict, or ``None`` to read the site
    property ``"b_iso"`` if present (else 0, as pymatgen's XRDCalculator assumes).
    """
    try:
        from pymatgen.core import Structure
    except ImportError as exc:  # pragma: no cover - pymatgen is a dependency
        raise ImportError("pymatgen is required to read structures") from exc
    if not isinstance(structure, Structure):
        raise TypeError(f"expected a pymatgen Structure, got {type(structure).__name__}")
    if len(structure) == 0:
        raise ValueError("structure has no sites")
    frac, species, occ, bvals = [], [], [], []
    site_b = structure.site_properties.get("b_iso")
    for i, site in enumerate(structure):
        for sp, o in site.species.items():
            idx = _scatterer_for(sp)
            el = element_of(idx)
            if isinstance(b_iso, dict):
                b = float(b_iso.get(el, 0.0))
            elif b_iso is not None:
                b = float(b_iso)
            elif site_b is not None and site_b[i] is not None:
                b = float(site_b[i])
            else:
                b = 0.0
            frac.append(site.frac_coords)
            species.append(idx)
            occ.append(float(o))
            bvals.append(b)
    return Crystal.create(structure.lattice.matrix, np.array(frac), np.array(species), np.array(occ),
                          np.array(bvals), pad_to=pad_to, dtype=dtype)


def read_structure(source, *, b_iso: float | dict | None = None, pad_to: int | None = None,
                   dtype=None) -> Crystal:
    """A :class:`Crystal` from a CIF/POSCAR path, a pymatgen ``Structure`` or an ASE ``Atoms``.

    Raises ``ValueError`` with one line (file, reason) if the file cannot be read.
    """
    from pymatgen.core import Structure

    if isinstance(source, Structure):
        return from_pymatgen(source, b_iso=b_iso, pad_to=pad_to, dtype=dtype)
    if type(source).__name__ == "Atoms" and type(source).__module__.startswith("ase"):
        return from_pymatgen(ase_to_structure(source), b_iso=b_iso, pad_to=pad_to, dtype=dtype)
    if isinstance(source, (str, os.PathLike)):
        return from_pymatgen(load_structure(source), b_iso=b_iso, pad_to=pad_to, dtype=dtype)
    raise TypeError(f"cannot read a structure from {type(source).__name__}")


def load_structure(path):
    """pymatgen ``Structure`` from a file (CIF, POSCAR, ...), one-line ``ValueError`` on failure."""
    from pymatgen.core import Structure

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure.from_file(str(path))
    except Exception as exc:  # pymatgen raises many types for malformed files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: cannot read structure ({msg})") from None
    if len(s) == 0:
        raise ValueError(f"{path}: structure has no sites")
    if path.suffix.lower() == ".cif" and "b_iso" not in s.site_properties:
        b = _cif_b_iso(path, s)
        if b is not None:
            s.add_site_property("b_iso", b)
    if s.lattice.volume <= 1e-6:
        raise ValueError(f"{path}: cell volume must be positive, got {s.lattice.volume:.6g} Å^3")
    for site in s:
        for sp in site.species:
            _scatterer_for(sp)
    return s


def ase_to_structure(atoms):
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_structure(atoms)


def to_pymatgen(crystal: Crystal):
    """The pymatgen ``Structure`` of a (single, unbatched) :class:`Crystal`.

    Rows at identical coordinates are merged into one disordered site. Ions keep their charge;
    B values are stored in the ``"b_iso"`` site property.
    """
    from pymatgen.core import Lattice, Species, Structure

    mask = np.asarray(crystal.mask) > 0
    frac = np.asarray(crystal.frac, np.float64)[mask]
    spc = np.asarray(crystal.species)[mask]
    occ = np.asarray(crystal.occupancy, np.float64)[mask]
    bis = np.asarray(crystal.b_iso, np.float64)[mask]
    names = scatterer_names()
    sites: list[tuple[np.ndarray, dict, float]] = []
    for x, s, o, b in zip(frac, spc, occ, bis):
        name = names[int(s)]
        el = element_of(int(s))
        sp = el
        if name != el:
            charge = name[len(el):]
            q = int(charge[:-1]) * (1 if charge[-1] == "+" else -1)
            sp = Species(el, q)
        for xx, comp, _ in sites:
            if np.allclose(xx, x, atol=1e-8):
                comp[sp] = comp.get(sp, 0.0) + float(o)
                break
        else:
            sites.append((x, {sp: float(o)}, float(b)))
    return Structure(Lattice(np.asarray(crystal.lattice, np.float64)), [c for _, c, _ in sites],
                     [x for x, _, _ in sites], site_properties={"b_iso": [b for _, _, b in sites]})


def _cif_b_iso(path: Path, structure) -> list[float] | None:
    """Per-site B (Å²) from a CIF's ``_atom_site_B_iso_or_equiv`` or ``_atom_site_U_iso_or_equiv``
    (B = 8π²U), matched to the structure's sites by label. ``None`` if the CIF has neither."""
    from pymatgen.io.cif import CifFile

    try:
        block = next(iter(CifFile.from_file(str(path)).data.values())).data
    except Exception:
        return None
    labels = block.get("_atom_site_label")
    if labels is None:
        return None
    factor, values = 1.0, block.get("_atom_site_B_iso_or_equiv")
    if values is None:
        factor, values = 8 * np.pi**2, block.get("_atom_site_U_iso_or_equiv")
    if values is None:
        return None

    def num(v):
        try:
            return float(str(v).split("(")[0]) * factor
        except ValueError:
            return 0.0

    table = {str(lab): num(v) for lab, v in zip(labels, values)}
    return [table.get(str(getattr(site, "label", "")), 0.0) for site in structure]
