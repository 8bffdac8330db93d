"""CIF output of a symmetric structure: cell (with esd's), space group with its operators, and
the asymmetric unit (Wyckoff representatives, occupancy, U_iso = B/8π²)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def _num(v: float, esd: float | None = None) -> str:
    """``1.23456(7)`` crystallographic notation when an esd is given."""
    if esd is None or not np.isfinite(esd) or esd <= 0:
        return f"{v:.6f}"
    digits = max(0, -int(np.floor(np.log10(esd))) + (1 if esd / 10 ** np.floor(np.log10(esd)) < 2 else 0))
    digits = min(digits, 8)
    e = int(round(esd * 10**digits))
    return f"{v:.{digits}f}({e})"


def _op_string(rot, trans) -> str:
    out = []
    for i in range(3):
        terms = []
        for j, ax in enumerate("xyz"):
            c = int(rot[i][j])
            if c == 1:
                terms.append(f"+{ax}")
            elif c == -1:
                terms.append(f"-{ax}")
            elif c != 0:
                terms.append(f"{c:+d}*{ax}")
        t = Fraction(float(trans[i]) % 1.0).limit_denominator(12)
        if t != 0:
            terms.append(f"+{t}")
        s = "".join(terms).lstrip("+")
        out.append(s or "0")
    return ",".join(out)


def write_symmetric_cif(path, name: str, info, template, params, *, lattice_esd=None, site_esd: dict | None = None,
                        extra: dict | None = None) -> None:
    """Write the structure ``template.expand(params)`` as a CIF with its space group.

    ``info``: the :class:`~xtaljax.io.spacegroups.SymmetryInfo` (symbol, operators, sites);
    ``lattice_esd``: esd's of (a, b, c, α, β, γ); ``site_esd``: {(orbit, "x"|"y"|"z"|"B"|"occ"): esd};
    ``extra``: additional ``_key value`` items (R-factors...).
    """
    m = np.asarray(template.lat_m, np.float64)
    six = m @ (np.asarray(params.lattice, np.float64) * np.asarray(template.lat_free)) + np.asarray(template.lat_k)
    lesd = [None] * 6 if lattice_esd is None else list(lattice_esd)
    x0 = np.asarray(template.x0, np.float64)
    basis = np.asarray(template.basis, np.float64)
    u = np.asarray(params.coords, np.float64) * np.asarray(template.coord_free)
    pos = x0 + np.einsum("oij,oj->oi", basis, u)
    b = np.asarray(params.b_iso, np.float64)
    occ = np.asarray(params.occupancy, np.float64)
    site_esd = site_esd or {}
    lines = [f"data_{name}", "_audit_creation_method 'xtaljax Rietveld refinement'"]
    for k, v in (extra or {}).items():
        lines.append(f"{k} {v}")
    for key, val, e in zip(("a", "b", "c", "alpha", "beta", "gamma"), six, lesd):
        lines.append(f"_cell_length_{key} {_num(val, e)}" if key in "abc" else f"_cell_angle_{key} {_num(val, e)}")
    vol = float(np.abs(np.linalg.det(_matrix(six))))
    lines += [f"_cell_volume {vol:.4f}", f"_symmetry_space_group_name_H-M '{info.symbol}'",
              f"_symmetry_Int_Tables_number {info.space_group}", f"_space_group_crystal_system {info.crystal_system}",
              "", "loop_", "_symmetry_equiv_pos_as_xyz"]
    rots, trans = info.operations
    for r, t in zip(rots, trans):
        lines.append(f"'{_op_string(r, t)}'")
    lines += ["", "loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_symmetry_multiplicity",
              "_atom_site_Wyckoff_symbol", "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z",
              "_atom_site_occupancy", "_atom_site_U_iso_or_equiv", "_atom_site_adp_type"]
    import re

    count: dict = {}
    for o, site in enumerate(info.sites):
        el = re.sub(r"[0-9.+-]+$", "", site.element)
        count[el] = count.get(el, 0) + 1
        label = f"{el}{count[el]}"
        xyz = []
        for i, ax in enumerate("xyz"):
            # the esd of a coordinate: that of the free parameter it depends on (rref basis)
            e = None
            for j in range(3):
                if abs(basis[o, i, j]) > 1e-8 and (o, "xyz"[int(np.argmax(np.abs(basis[o, :, j]) > 1e-8))]) in site_esd:
                    e = abs(basis[o, i, j]) * site_esd[(o, "xyz"[int(np.argmax(np.abs(basis[o, :, j]) > 1e-8))])]
            xyz.append(_num(pos[o, i] % 1.0, e))
        u_iso = b[o] / (8 * np.pi**2)
        e_b = site_esd.get((o, "B"))
        lines.append(f"{label} {site.element} {site.multiplicity} {site.wyckoff} {' '.join(xyz)} "
                     f"{_num(occ[o], site_esd.get((o, 'occ')))} "
                     f"{_num(u_iso, None if e_b is None else e_b / (8 * np.pi**2))} Uiso")
    from pathlib import Path

    Path(path).write_text("\n".join(lines) + "\n")


def _matrix(six):
    from ..core.lattice import lattice_from_parameters

    return np.asarray(lattice_from_parameters(*[float(v) for v in six]), np.float64)
