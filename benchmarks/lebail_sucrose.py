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
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wpem_sucrose import DATA, KEYS, LIT_CELL, load, run_wpem, sucrose_cell  # noqa: E402

STRATEGY = [["background"], ["background", "lattice", "zero"], ["background", "lattice", "zero", "profile", "asymmetry"]]


def scan_factor(pat, inst, background: int, search: float = 0.01) -> float:
    """The isotropic cell factor of WPEM's start (lower-envelope background, then the scan)."""
    import jax.numpy as jnp

    from xtaljax.em.wpem import _cheb_basis, _initial_intensities, build_problem

    prob, st0 = build_problem(pat.two_theta, [("sucrose", sucrose_cell())], inst, n_background=background,
                              window_fwhm=30.0, search=search)
    with jax.enable_x64(True):
        x = jnp.asarray(pat.two_theta)
        st = _initial_intensities(prob, st0, jnp.asarray(pat.intensity), x, jnp.asarray(np.gradient(pat.two_theta)),
                                  _cheb_basis(x, background))
    return float(np.asarray(st.lattice)[0, 0] / np.asarray(st0.lattice)[0, 0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--range", nargs=2, type=float, default=(2.0, 20.0))
    ap.add_argument("--background", type=int, default=8)
    ap.add_argument("--max-cycles", type=int, default=30)
    ap.add_argument("--skip-wpem", action="store_true", help="only the Le Bail fit")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    from xtaljax.refine.rietveld import Problem

    pat, inst = load(args.range)
    f = scan_factor(pat, inst, args.background)
    out = {"benchmark": "lebail_sucrose", "data": str(DATA / "11bmb_8716.fxye"),
           "device": {"platform": jax.devices()[0].platform, "cpu": platform.processor() or platform.machine()},
           "versions": {"jax": jax.__version__, "python": platform.python_version()},
           "settings": {"range": list(args.range), "n_points": int(len(pat.two_theta)), "n_background": args.background,
                        "lebail_strategy": STRATEGY, "max_cycles": args.max_cycles, "literature_cell": LIT_CELL,
                        "isotropic_factor_from_scan": f},
           "note": "lattices in spglib's standard setting (a and c exchanged against the literature's)"}
    for key, asym in (("wpem", False), ("wpem_asymmetry", True)):
        if args.skip_wpem:
            break
        out[key] = r = run_wpem(pat, inst, background=args.background, asymmetry=asym, progress=False)
        print(f"{key}: Rwp {r['rwp_gsas2']:.2f} %, GOF {r['gof']:.2f}, {r['wall_seconds']:.0f} s")

    t1 = time.perf_counter()
    prob = Problem(pat.two_theta, pat.intensity, pat.sigma, [("sucrose", sucrose_cell(f))], inst,
                   n_background=args.background, lebail=True)
    res = prob.refine(STRATEGY, max_cycles=args.max_cycles, progress=False)
    six, esd = res.lattice(0)
    n_rows = len(res.lebail_reflections(0)["intensity"])
    out["lebail"] = {"n_reflection_rows": n_rows, "cycles": len(res.history), "rwp_gsas2": res.rwp,
                     "rp": res.stats["rp"], "gof": res.stats["gof"], "lattice": dict(zip(KEYS, map(float, six))),
                     "lattice_esd": dict(zip(KEYS, map(float, esd))), "parameters": res.parameters(),
                     "history_rwp": [h["rwp"] for h in res.history], "wall_seconds": time.perf_counter() - t1}
    print(f"Le Bail: Rwp {res.rwp:.2f} %, GOF {res.stats['gof']:.2f}, {n_rows} rows, {len(res.history)} cycles, "
          f"{out['lebail']['wall_seconds']:.0f} s; a b c = {six[0]:.5f} {six[1]:.5f} {six[2]:.5f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
