"""Sucrose, APS 11-BM: a Le Bail fit with the refinement engine against the WPEM decomposition.

The issue's comparison for the heavily overlapped P2_1 pattern (``../shared/data/patterns/
sucrose_11bm``, the GSAS-II Le Bail tutorial's data, with its instrument file): the same range,
the same instrument, the same number of background terms, in the same run:

* WPEM: ``xtaljax.em.decompose`` exactly as ``benchmarks/wpem_sucrose.py`` runs it (isotropic
  cell scan ``search=0.01``, ±30-FWHM windows), and again with FCJ asymmetry (``asymmetry=True``);
* Le Bail: ``xtaljax.refine.rietveld.Problem(..., lebail=True)`` from the literature cell scaled
  by the factor the same isotropic scan finds (a Le Bail fit, like GSAS-II's, needs a cell within
  a fraction of a peak width: the data's cell is 0.5 % below the literature cell, ~10 FWHM at
  20°), stages background → + cell, zero → + Lorentzian widths.

Both fit the intensities of every reflection freely; both report GSAS-II's wR (w = 1/σ²).

    python benchmarks/lebail_sucrose.py --range 2 20 --out benchmarks/results/lebail_sucrose_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "patterns" / "sucrose_11bm"
LIT = (10.8654, 8.7028, 7.7584, 102.94)  # room-temperature literature cell (Å, °)
STRATEGY = [["background"], ["background", "lattice", "zero"], ["background", "lattice", "zero", "profile", "asymmetry"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--range", nargs=2, type=float, default=(2.0, 20.0))
    ap.add_argument("--background", type=int, default=8)
    ap.add_argument("--max-cycles", type=int, default=30)
    ap.add_argument("--skip-wpem", action="store_true", help="only the Le Bail fit")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    from pymatgen.core import Lattice, Structure

    from xtaljax.em.wpem import build_problem, decompose
    from xtaljax.io import read_instrument, read_pattern
    from xtaljax.refine.rietveld import Problem

    pat = read_pattern(DATA / "11bmb_8716.fxye").restrict(*args.range)
    inst = read_instrument(DATA / "11bmb_8716.prm")

    def cell(f):
        a, b, c, beta = LIT
        return Structure.from_spacegroup("P2_1", Lattice.monoclinic(a * f, b * f, c * f, beta), ["C"], [[0.1, 0.2, 0.3]])

    keys = ("a", "b", "c", "alpha", "beta", "gamma")
    out = {"benchmark": "lebail_sucrose", "data": str(DATA / "11bmb_8716.fxye"),
           "device": {"platform": jax.devices()[0].platform, "cpu": platform.processor() or platform.machine()},
           "versions": {"jax": jax.__version__, "python": platform.python_version()},
           "settings": {"range": list(args.range), "n_points": int(len(pat.two_theta)), "n_background": args.background,
                        "lebail_strategy": STRATEGY, "max_cycles": args.max_cycles, "literature_cell": LIT},
           "note": "lattices in spglib's standard setting (a and c exchanged against the literature's)"}

    # the isotropic scan WPEM runs (its factor also starts the Le Bail fit)
    t0 = time.perf_counter()
    setup = build_problem(pat.two_theta, [("sucrose", cell(1.0))], inst, n_background=args.background,
                          window_fwhm=30.0, search=0.01)
    import jax.numpy as jnp

    from xtaljax.em.wpem import _cheb_basis, _initial_intensities

    with jax.enable_x64(True):
        x = jnp.asarray(pat.two_theta)
        st = _initial_intensities(setup[0], setup[1], jnp.asarray(pat.intensity), x, jnp.asarray(np.gradient(pat.two_theta)),
                                  _cheb_basis(x, args.background))
    f = float(np.asarray(st.lattice)[0, 0] / np.asarray(setup[1].lattice)[0, 0])
    out["settings"]["isotropic_factor_from_scan"] = f
    for key, asym in (("wpem", False), ("wpem_asymmetry", True)):
        if args.skip_wpem:
            break
        t0 = time.perf_counter()
        prob_em = build_problem(pat.two_theta, [("sucrose", cell(1.0))], inst, n_background=args.background,
                                window_fwhm=30.0, search=0.01, asymmetry=asym)  # set-up timed too
        d = decompose(pat.two_theta, pat.intensity, [("sucrose", cell(1.0))], inst, problem=prob_em, max_iter=400,
                      sigma=pat.sigma, progress=False)
        six, esd = d.lattice(0)
        out[key] = {"n_reflections": int(prob_em[0].n_reflections), "n_iterations": int(d.n_iterations),
                    "asymmetry": asym, "asym_sl_hl": float(d.state.asym),
                    "rwp_gsas2": d.stats["rwp"], "rp": d.stats["rp"], "gof": d.stats["gof"],
                    "lattice": dict(zip(keys, map(float, six))), "lattice_esd": dict(zip(keys, map(float, esd))),
                    "wall_seconds": time.perf_counter() - t0}
        print(f"{key}: Rwp {d.stats['rwp']:.2f} %, GOF {d.stats['gof']:.2f}, {out[key]['wall_seconds']:.0f} s")

    t1 = time.perf_counter()
    prob = Problem(pat.two_theta, pat.intensity, pat.sigma, [("sucrose", cell(f))], inst,
                   n_background=args.background, lebail=True)
    res = prob.refine(STRATEGY, max_cycles=args.max_cycles, progress=False)
    six, esd = res.lattice(0)
    n_rows = len(res.lebail_reflections(0)["intensity"])
    out["lebail"] = {"n_reflection_rows": n_rows, "cycles": len(res.history), "rwp_gsas2": res.rwp,
                     "rp": res.stats["rp"], "gof": res.stats["gof"], "lattice": dict(zip(keys, map(float, six))),
                     "lattice_esd": dict(zip(keys, map(float, esd))), "parameters": res.parameters(),
                     "history_rwp": [h["rwp"] for h in res.history], "wall_seconds": time.perf_counter() - t1}
    print(f"Le Bail: Rwp {res.rwp:.2f} %, GOF {res.stats['gof']:.2f}, {n_rows} rows, {len(res.history)} cycles, "
          f"{out['lebail']['wall_seconds']:.0f} s; a b c = {six[0]:.5f} {six[1]:.5f} {six[2]:.5f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
