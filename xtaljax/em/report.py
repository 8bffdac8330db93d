"""Writing decompositions: result.json, reflections.csv, fit.csv, fit.png; series.csv and series.png."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ..refine.report import _atomic


def decomposition_dict(d, instrument, source: str = "") -> dict:
    fr = d.weight_fractions(instrument)
    phases = []
    for i, ph in enumerate(d.problem.phases):
        six, esd = d.lattice(i)
        keys = ("a", "b", "c", "alpha", "beta", "gamma")
        phases.append({"name": ph.name, "space_group": f"{ph.info.symbol} (No. {ph.info.space_group})",
                       "lattice": dict(zip(keys, map(float, six))), "lattice_esd": dict(zip(keys, map(float, esd))),
                       "weight_fraction": fr["hill_howard"][i], "weight_fraction_lp_quick": fr["lp_quick"][i],
                       # reflections, and the components they form (equal d in the family: one peak)
                       "n_reflections": int(np.sum(d.problem.comp_phase[d.problem.members()[2]] == i)),
                       "n_components": int(np.sum(d.problem.comp_phase == i))})
    st = d.stats
    shifts = d.shifts()
    return {"pattern": source, "rwp": st["rwp"], "rwp_wpem": st["rwp_wpem"], "rp": st["rp"],
            "rwp_pywpem_subset": st.get("rwp_pywpem_subset"), "rp_pywpem_subset": st.get("rp_pywpem_subset"),
            "definitions": {**st["definitions"],
                            "rwp_pywpem_subset": "PyWPEM 2026.10: points with net > 5 % of max net, weights 1/y",
                            "weight_fraction": "Hill-Howard from the extracted intensities vs m|F|^2 LP of the model",
                            "weight_fraction_lp_quick": "PyWPEM-style: sum(I/LP) per phase, normalised"},
            "zero": shifts["zero"][0], "zero_esd": shifts["zero"][1],
            # sample displacement s (mm, Δ2θ = −2 (s/R) cos θ), refined with --displacement (esd null: fixed)
            "displacement_mm": shifts["displacement_mm"][0], "displacement_esd_mm": shifts["displacement_mm"][1],
            "phases": phases, "n_iterations": d.n_iterations,
            "loglik": float(d.state.loglik), "seconds": d.seconds, "widths": d.problem.widths,
            "asymmetry_sl_hl": float(d.state.asym) if d.problem.asymmetry else None,
            # residual peaks no component explains (an unlisted phase?), strongest first
            "unexplained_peaks": d.unexplained_peaks()}


#: above this many components fit.png draws each phase's summed peaks instead of every component
MAX_DRAWN_COMPONENTS = 400


def write_decomposition(d, instrument, out_dir, source: str = "", result: dict | None = None) -> list[Path]:
    """Write result.json, reflections.csv, fit.csv and fit.png; ``result``: the
    :func:`decomposition_dict` already made for ``d`` (else it is made here)."""
    from ..plotting import plot_fit
    from .wpem import _positions_jit

    out = Path(out_dir)
    rows = d.reflections()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    _atomic(out / "reflections.csv", lambda p: Path(p).write_text(buf.getvalue()))
    prob = d.problem
    c = np.asarray(_positions_jit(prob, d.state.lattice, d.state.zero, d.state.displacement))[0]
    ticks = {ph.name: np.sort(c[prob.comp_phase == i]) for i, ph in enumerate(prob.phases)}
    res = result if result is not None else decomposition_dict(d, instrument, source)
    title = f"WPEM: Rwp {res['rwp_wpem']:.2f} % (PyWPEM weights), Rp {res['rp']:.2f} %"
    counts, idx = d.components()
    phase_peaks = d.phase_peaks((counts, idx))
    curves = {}
    for i, ph in enumerate(prob.phases):
        sel = np.flatnonzero(prob.comp_phase == i)
        if counts.shape[0] <= MAX_DRAWN_COMPONENTS:  # every component on the background
            curves[ph.name] = []
            for k in sel:
                keep = counts[k] > 1e-3 * max(float(counts[k].max()), 1e-300)
                if keep.any():
                    j = idx[k][keep]
                    curves[ph.name].append((prob.two_theta[j], d.background[j] + counts[k][keep]))
        else:  # too many to draw: the phase's peaks on the background
            curves[ph.name] = [(prob.two_theta, d.background + phase_peaks[i])]
    marks = [p["two_theta"] for p in res["unexplained_peaks"]["peaks"]]
    _atomic(out / "fit.png", lambda p: plot_fit(prob.two_theta, d.y_obs, d.y_calc, p, ticks=ticks, title=title,
                                                components=curves, marks=marks))
    fit = np.column_stack([prob.two_theta, d.y_obs, d.y_calc, d.background, d.y_obs - d.y_calc, *phase_peaks])
    header = ",".join(["two_theta", "y_obs", "y_calc", "background", "difference"]
                      + [f"peaks_{ph.name}" for ph in prob.phases])
    _atomic(out / "fit.csv", lambda p: np.savetxt(p, fit, delimiter=",", fmt="%.8g", header=header, comments=""))
    _atomic(out / "result.json", lambda p: Path(p).write_text(json.dumps(res, indent=1)))
    return [out / "result.json", out / "reflections.csv", out / "fit.csv", out / "fit.png"]


def write_series(results: list, out_dir) -> list[Path]:
    """``results``: [(file, result dict or None, error or None), ...] in the given order."""
    from ..plotting import _plt

    out = Path(out_dir)
    names = sorted({p["name"] for _, r, _ in results if r for p in r["phases"]})
    header = ["index", "file", "status", "rwp", "rwp_wpem"] + [f"{n}_{k}" for n in names for k in ("a", "b", "c", "weight_fraction")]
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(header)
    for i, (f, r, err) in enumerate(results):
        if r is None:
            wr.writerow([i, f, f"error: {err}"] + [""] * (len(header) - 3))
            continue
        by = {p["name"]: p for p in r["phases"]}
        row = [i, f, "ok", r["rwp"], r["rwp_wpem"]]
        for n in names:
            p = by.get(n)
            row += ([p["lattice"]["a"], p["lattice"]["b"], p["lattice"]["c"], p["weight_fraction"]] if p else ["", "", "", ""])
        wr.writerow(row)
    _atomic(out / "series.csv", lambda p: Path(p).write_text(buf.getvalue()))

    def plot(path):
        plt = _plt()
        fig, axes = plt.subplots(2, 1, figsize=(8, 6), dpi=110, sharex=True)
        for n in names:
            idx = [i for i, (_, r, _) in enumerate(results) if r and any(p["name"] == n for p in r["phases"])]
            a = [next(p for p in results[i][1]["phases"] if p["name"] == n)["lattice"]["a"] for i in idx]
            wf = [next(p for p in results[i][1]["phases"] if p["name"] == n)["weight_fraction"] for i in idx]
            axes[0].plot(idx, a, "o-", ms=3, label=n)
            axes[1].plot(idx, wf, "o-", ms=3, label=n)
        axes[0].set_ylabel("a (Å)")
        axes[1].set_ylabel("weight fraction")
        axes[1].set_xlabel("pattern")
        axes[0].legend(frameon=False, fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    _atomic(out / "series.png", plot)
    return [out / "series.csv", out / "series.png"]
