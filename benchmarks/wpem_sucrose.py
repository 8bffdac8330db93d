"""WPEM on sucrose, APS 11-BM (P2_1, heavily overlapped): does the decomposition converge?

The GSAS-II Le Bail tutorial's pattern (``../shared/data/patterns/sucrose_11bm``) with its
instrument file. WPEM needs the cell and space group only: the phase is a P2_1 cell with one
dummy atom (its intensities are not used: the EM extracts them). The cell is a room-temperature
literature cell (a 10.8654, b 8.7028, c 7.7584 Å, β 102.94°); the isotropic-strain scan
(``search``) and the EM find the data's cell. The E-step runs on per-reflection windows
(``window_fwhm``): the dense form would need reflections × 49,494 points per array.

    python benchmarks/wpem_sucrose.py --range 2 20 --out benchmarks/results/wpem_sucrose_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "patterns" / "sucrose_11bm"
#: room-temperature literature cell (a, b, c in Å, β in °)
LIT_CELL = (10.8654, 8.7028, 7.7584, 102.94)
KEYS = ("a", "b", "c", "alpha", "beta", "gamma")


def sucrose_cell(scale: float = 1.0):
    """The P2_1 literature cell (lengths × ``scale``) with one dummy atom: WPEM and Le Bail need
    only the cell and the space group."""
    from pymatgen.core import Lattice, Structure

    a, b, c, beta = LIT_CELL
    return Structure.from_spacegroup("P2_1", Lattice.monoclinic(a * scale, b * scale, c * scale, beta), ["C"],
                                     [[0.1, 0.2, 0.3]])


def load(two_theta_range):
    """The 11-BM pattern restricted to ``two_theta_range`` and its instrument file."""
    from xtaljax.io import read_instrument, read_pattern

    return read_pattern(DATA / "11bmb_8716.fxye").restrict(*two_theta_range), read_instrument(DATA / "11bmb_8716.prm")


def run_wpem(pat, inst, *, background: int = 8, window_fwhm: float = 30.0, search: float = 0.01,
             max_iter: int = 400, asymmetry: bool = False, progress: bool = True) -> dict:
    """Set-up (isotropic cell scan included) and decomposition, timed together; a results dict."""
    from xtaljax.em.wpem import build_problem, decompose

    phases = [("sucrose", sucrose_cell())]
    t0 = time.perf_counter()
    setup = build_problem(pat.two_theta, phases, inst, n_background=background, window_fwhm=window_fwhm,
                          search=search, asymmetry=asymmetry)
    t_setup = time.perf_counter() - t0
    d = decompose(pat.two_theta, pat.intensity, phases, inst, problem=setup, max_iter=max_iter, sigma=pat.sigma,
                  progress=progress)
    six, esd = d.lattice(0)
    return {"n_reflections": int(setup[0].members()[0].shape[0]), "n_components": int(setup[0].n_reflections),
            "window_points": int(setup[0].window),
            "n_iterations": int(d.n_iterations), "converged": bool(float(d.state.rel_change) < 1e-9),
            "rel_change": float(d.state.rel_change), "asymmetry": asymmetry, "asym_sl_hl": float(d.state.asym),
            "rwp_gsas2": d.stats["rwp"], "rp": d.stats["rp"], "gof": d.stats["gof"],
            "rwp_pywpem_subset": d.stats["rwp_pywpem_subset"],
            "lattice": dict(zip(KEYS, map(float, six))), "lattice_esd": dict(zip(KEYS, map(float, esd))),
            "zero": float(d.state.zero), "setup_seconds": t_setup, "wall_seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--range", nargs=2, type=float, default=(2.0, 20.0))
    ap.add_argument("--max-iter", type=int, default=400)
    ap.add_argument("--window-fwhm", type=float, default=30.0)
    ap.add_argument("--search", type=float, default=0.01)
    ap.add_argument("--background", type=int, default=8)
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    pat, inst = load(args.range)
    r = run_wpem(pat, inst, background=args.background, window_fwhm=args.window_fwhm, search=args.search,
                 max_iter=args.max_iter)
    out = {
        "benchmark": "wpem_sucrose", "data": str(DATA / "11bmb_8716.fxye"),
        "device": {"platform": jax.devices()[0].platform, "cpu": platform.processor() or platform.machine()},
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "settings": {"range": list(args.range), "n_points": int(len(pat.two_theta)), "max_iter": args.max_iter,
                     "window_fwhm": args.window_fwhm, "window_points": r.pop("window_points"), "search": args.search,
                     "n_background": args.background, "widths": "caglioti"},
        "results": r,
        "note": "the lattice is in spglib's standard setting (a and c may be exchanged against the literature's)",
    }
    print(f"sucrose {args.range[0]:g}-{args.range[1]:g} deg: {r['n_reflections']} reflections x {len(pat.two_theta)} points, "
          f"{r['n_iterations']} EM evaluations, Rwp {r['rwp_gsas2']:.2f} %, GOF {r['gof']:.2f}, {r['wall_seconds']:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
