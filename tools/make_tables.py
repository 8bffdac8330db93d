"""Regenerate ``xtaljax/data/scatterers.json`` (run by hand; needs pymatgen and xraydb).

Sources (see xtaljax/data/PROVENANCE.md):
- pymatgen ``analysis/diffraction/atomic_scattering_params.json`` (MIT): the 4-pair coefficients of
  f(s) = Z - 41.78214 s^2 sum_i a_i exp(-b_i s^2) used by pymatgen's XRDCalculator.
- xraydb (public domain data): Waasmaier & Kirfel (1995) 5-Gaussian + constant f0 for neutral atoms
  and ions; Chantler (2000) f' and f'' at the characteristic lines of the common anodes.
"""

import json
import re
from pathlib import Path

import numpy as np
import xraydb
from pymatgen.analysis.diffraction import xrd as pmg_xrd
from pymatgen.core.periodic_table import Element

# Characteristic lines (Angstrom). Kalpha1/Kalpha2 from Hoelzel et al. / ITC Table 4.2.2.1,
# the values GSAS-II and most Rietveld programs use.
LINES = {
    "CuKa1": 1.540593, "CuKa2": 1.544414, "CuKb1": 1.392250,
    "MoKa1": 0.709317, "MoKa2": 0.713607, "MoKb1": 0.632303,
    "CoKa1": 1.788996, "CoKa2": 1.792835, "CoKb1": 1.620826,
    "CrKa1": 2.289760, "CrKa2": 2.293663, "CrKb1": 2.084920,
    "FeKa1": 1.936042, "FeKa2": 1.939980, "FeKb1": 1.756610,
    "AgKa1": 0.559421, "AgKa2": 0.563813, "AgKb1": 0.497082,
}
HC_EV_A = 12398.419843320026  # h c in eV Angstrom (CODATA 2018)
Z_MAX = 98


def main() -> None:
    pmg = pmg_xrd.ATOMIC_SCATTERING_PARAMS
    db = xraydb.get_xraydb()
    wk_rows = db.tables["Waasmaier"]
    rows = db.session.execute(wk_rows.select()).fetchall() if hasattr(db, "session") else None
    wk = {r.ion: (json.loads(r.scale), json.loads(r.exponents), float(r.offset), int(r.atomic_number))
          for r in rows}

    names = [""]  # index 0: padding, every table row zero
    z = [0]
    for zz in range(1, Z_MAX + 1):
        names.append(Element.from_Z(zz).symbol)
        z.append(zz)
    ions = sorted((k for k in wk if re.fullmatch(r"[A-Z][a-z]?\d[+-]", k)),
                  key=lambda k: (wk[k][3], k))
    for ion in ions:
        names.append(ion)
        z.append(wk[ion][3])

    pmg_coeffs, wk_a, wk_b, wk_c, has_pmg, has_wk = [], [], [], [], [], []
    for name, zz in zip(names, z):
        el = re.match(r"[A-Z][a-z]?", name).group(0) if name else ""
        c = pmg.get(el)
        has_pmg.append(c is not None)
        pmg_coeffs.append(c if c is not None else [[0.0, 0.0]] * 4)
        key = name if name in wk else el
        if key in wk and name:
            a, b, off, _ = wk[key]
            has_wk.append(True)
        else:
            a, b, off = [0.0] * 5, [0.0] * 5, 0.0
            has_wk.append(False)
        wk_a.append(a)
        wk_b.append(b)
        wk_c.append(off)

    dispersion = {}
    for line, lam in LINES.items():
        energy = HC_EV_A / lam
        fp, fpp = [0.0], [0.0]
        for zz in z[1:]:
            if zz > 92:  # Chantler's tables stop at U; f', f'' left at 0 (documented)
                fp.append(0.0)
                fpp.append(0.0)
                continue
            fp.append(float(xraydb.f1_chantler(int(zz), energy)))
            fpp.append(float(xraydb.f2_chantler(int(zz), energy)))
        dispersion[line] = {"wavelength": lam, "energy_ev": energy,
                            "fp": np.round(fp, 5).tolist(), "fpp": np.round(fpp, 5).tolist()}

    out = {
        "names": names, "z": z,
        "pymatgen": {"available": has_pmg, "coeffs": pmg_coeffs},
        "waasmaier_kirfel": {"available": has_wk, "a": wk_a, "b": wk_b, "c": wk_c},
        "dispersion": dispersion,
        "lines": LINES,
    }
    path = Path(__file__).resolve().parents[1] / "xtaljax" / "data" / "scatterers.json"
    path.write_text(json.dumps(out, separators=(",", ":")))
    print(f"wrote {path} ({len(names)} scatterers, {len(LINES)} lines)")


if __name__ == "__main__":
    main()
