"""Writing a refinement: ``result.json``, ``<phase>.cif``, ``fit.csv`` and ``fit.png``.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written file (the previous result, if any, stays as it was).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def _atomic(path: Path, writer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def result_dict(result, *, source: str = "", strategy="") -> dict:
    """The ``result.json`` content (R-factors named with their definitions, phases, parameters)."""
    prob = result.problem
    st = result.stats
    fr = result.weight_fractions()
    phases = []
    params = result.parameters()
    for i, pm in enumerate(prob.phases):
        six, esd = result.lattice(i)
        keys = ("a", "b", "c", "alpha", "beta", "gamma")
        p = result.model["phases"][i]
        crystal_sites = []
        for o, (label, site) in enumerate(zip(pm.labels, pm.info.sites)):
            pos = np.asarray(pm.template.x0[o]) + np.asarray(pm.template.basis[o]) @ (
                np.asarray(p.coords[o]) * np.asarray(pm.template.coord_free[o]))
            crystal_sites.append({"label": label, "element": site.element, "wyckoff": f"{site.multiplicity}{site.wyckoff}",
                                  "xyz": [float(v % 1.0) for v in pos], "b_iso": float(p.b_iso[o]),
                                  "occupancy": float(p.occupancy[o])})
        entry = {"name": pm.name, "space_group": f"{pm.info.symbol} (No. {pm.info.space_group})",
                 "lattice": dict(zip(keys, map(float, six))), "lattice_esd": dict(zip(keys, map(float, esd))),
                 "weight_fraction": None if prob.lebail else float(fr[i]),
                 "scale": float(result.model["scales"][i])}
        if prob.lebail:  # no structure in a Le Bail fit: the extracted reflections instead
            entry["n_reflections"] = int(len(result.lebail_reflections(i)["intensity"]))
        else:
            entry["sites"] = crystal_sites
        phases.append(entry)
    return {
        "pattern": source, "strategy": strategy, "mode": "lebail" if prob.lebail else "rietveld",
        "rwp": st["rwp"], "rp": st["rp"], "gof": st["gof"], "chi2": st["chi2"], "reduced_chi2": st["reduced_chi2"],
        "rwp_wpem": st["rwp_wpem"], "r_expected": st["r_expected"], "n_obs": prob.n_obs, "n_params": len(result.names),
        "definitions": {**st["definitions"], "weight_fraction": "Hill-Howard: S*Z*M*V / sum"},
        "range": [float(prob.two_theta[0]), float(prob.two_theta[-1])],
        "phases": phases, "parameters": params, "singular": result.singular, "at_bounds": result.at_bounds,
        "cycles": len(result.history), "seconds": result.seconds,
        "history": [{k: v for k, v in h.items()} for h in result.history],
    }


def write_outputs(result, out_dir, *, source: str = "", strategy="") -> list[Path]:
    """Write result.json, one refined CIF per phase, fit.csv and fit.png into ``out_dir``."""
    from ..io.cif import write_symmetric_cif
    from ..plotting import plot_fit

    out = Path(out_dir)
    prob = result.problem
    written = []
    d = result_dict(result, source=source, strategy=strategy)
    pos = {n: k for k, n in enumerate(result.names)}
    ticks = {}
    for i, pm in enumerate(prob.phases):
        six, esd = result.lattice(i)
        if prob.lebail:  # Le Bail: the extracted intensities, no structure to write
            t = result.lebail_reflections(i)
            path = out / f"{_safe(pm.name)}_reflections.csv"
            table = np.column_stack([t["hkl"], t["multiplicity"], t["d"], t["two_theta"], t["intensity"]])
            _atomic(path, lambda p, table=table: np.savetxt(
                p, table, delimiter=",", header="h,k,l,multiplicity,d,two_theta,intensity", comments="",
                fmt=["%d", "%d", "%d", "%d", "%.6f", "%.5f", "%.6g"]))
            written.append(path)
            ticks[pm.name] = result.reflection_positions(i)
            continue
        site_esd = {}
        for o, label in enumerate(pm.labels):
            for key in ("x", "y", "z", "B", "occ"):
                n = f"{pm.name}:{label}.{key}"
                if n in pos:
                    site_esd[(o, key)] = float(result.esd[pos[n]])
        path = out / f"{_safe(pm.name)}.cif"
        _atomic(path, lambda p, i=i, pm=pm, esd=esd, site_esd=site_esd: write_symmetric_cif(
            p, _safe(pm.name), pm.info, pm.template, result.model["phases"][i], lattice_esd=esd, site_esd=site_esd,
            extra={"_pd_proc_ls_prof_wR_factor": f"{d['rwp'] / 100:.5f}", "_pd_proc_ls_prof_R_factor": f"{d['rp'] / 100:.5f}",
                   "_refine_ls_goodness_of_fit_all": f"{d['gof']:.4f}"}))
        written.append(path)
        ticks[pm.name] = result.reflection_positions(i)
    parts = result.phase_patterns()
    cols = [prob.two_theta, prob.y_obs, result.y_calc, prob.y_obs - result.y_calc, result.background()] + parts
    header = "two_theta,y_obs,y_calc,difference,background," + ",".join(f"phase_{_safe(pm.name)}" for pm in prob.phases)
    _atomic(out / "fit.csv", lambda p: np.savetxt(p, np.column_stack(cols), delimiter=",", header=header,
                                                  comments="", fmt="%.6g"))
    written.append(out / "fit.csv")
    title = f"{', '.join(pm.name for pm in prob.phases)}: wR {d['rwp']:.2f} %, Rp {d['rp']:.2f} %, GOF {d['gof']:.2f}"
    _atomic(out / "fit.png", lambda p: plot_fit(prob.two_theta, prob.y_obs, result.y_calc, p, ticks=ticks, title=title))
    written.append(out / "fit.png")
    _atomic(out / "result.json", lambda p: Path(p).write_text(json.dumps(d, indent=1)))
    written.append(out / "result.json")
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "phase"
