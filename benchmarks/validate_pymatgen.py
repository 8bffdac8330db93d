"""Validate ``xtaljax.sticks`` against pymatgen's ``XRDCalculator.get_pattern``, peak by peak.

Criterion (from the issue): every pymatgen peak with intensity >= 0.5 (of 100) is reproduced
with |Δ2θ| < 1e-4° and |ΔI| < 0.01, and there are no missing or extra peaks (every xtaljax peak
with I >= 0.5 has a pymatgen partner within 1e-4°). In addition the full peak lists (any
intensity) are compared one to one and the number of structures that match completely is
reported.

Usage::

    python benchmarks/validate_pymatgen.py                       # full run: all MP-20 subset rows,
                                                                 # 500 perov-5, 500 carbon-24, CuKa + MoKa
    python benchmarks/validate_pymatgen.py --datasets perov5 --limit-perov 50 --wavelength CuKa

Writes ``benchmarks/results/validate_pymatgen.json`` and exits non-zero if any structure fails.
The comparison itself (:func:`compare_patterns`, :func:`compare_structure`) is imported by
``tests/test_pymatgen_oracle.py``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "structures"
DATASETS = {
    "mp20": DATA / "mp_20_subset" / "mp_20_subset.csv",
    "perov5": DATA / "perov_5" / "test.csv",
    "carbon24": DATA / "carbon_24" / "test.csv",
}

TWO_THETA_RANGE = (0.0, 90.0)
MIN_INTENSITY = 0.5  # of 100: peaks at or above this must match (both ways)
TOL_2THETA = 1e-4  # degrees
TOL_INTENSITY = 0.01  # of 100


# ---------------------------------------------------------------------------------------------
# comparison (importable)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Comparison:
    """Result of comparing one xtaljax stick list with pymatgen's.

    ``ok``: the issue's criterion holds (no missing/mismatched peak among pymatgen's >= 0.5,
    no extra xtaljax peak >= 0.5). ``full_match``: additionally the complete lists (any
    intensity) have equal length and agree element by element within the same tolerances.
    ``max_d2theta``/``max_dI``: maxima over the pymatgen peaks >= ``min_intensity`` and their
    partners; ``full_max_d2theta``/``full_max_dI``: over all peaks (``nan`` if the lists differ
    in length). ``problems``: human-readable reasons, empty when ``ok``.
    """

    ok: bool
    full_match: bool
    n_ref: int
    n_test: int
    n_compared: int
    max_d2theta: float
    max_dI: float
    full_max_d2theta: float
    full_max_dI: float
    problems: list

    @property
    def reason(self) -> str:
        return "; ".join(self.problems[:5]) + (f"; ... ({len(self.problems)} problems)" if len(self.problems) > 5 else "")


def _nearest(sorted_x: np.ndarray, q: float) -> int:
    """Index of the element of ``sorted_x`` nearest to ``q`` (``-1`` if empty)."""
    if len(sorted_x) == 0:
        return -1
    j = int(np.searchsorted(sorted_x, q))
    cands = [k for k in (j - 1, j) if 0 <= k < len(sorted_x)]
    return min(cands, key=lambda k: abs(sorted_x[k] - q))


def compare_patterns(ref_x, ref_y, x, y, *, min_intensity: float = MIN_INTENSITY, tol_2theta: float = TOL_2THETA,
                     tol_intensity: float = TOL_INTENSITY) -> Comparison:
    """Compare a test stick list (``x`` 2θ, ``y`` intensity of 100) with the reference (pymatgen).

    Every reference peak with ``ref_y >= min_intensity`` needs a test peak (of any intensity)
    whose 2θ is the nearest one and within ``tol_2theta``, with ``|Δy| < tol_intensity``; every
    test peak with ``y >= min_intensity`` needs a reference peak (of any intensity) within
    ``tol_2theta``. Matching against partners of any intensity keeps a peak that sits on the
    threshold (0.4999 vs 0.5001) from being reported as missing.
    """
    ref_x, ref_y, x, y = (np.asarray(a, np.float64).ravel() for a in (ref_x, ref_y, x, y))
    ro, to = np.argsort(ref_x, kind="stable"), np.argsort(x, kind="stable")
    ref_x, ref_y, x, y = ref_x[ro], ref_y[ro], x[to], y[to]
    problems: list[str] = []
    d2t, dI = [0.0], [0.0]
    n_compared = 0
    for xi, yi in zip(ref_x, ref_y):
        if yi < min_intensity:
            continue
        n_compared += 1
        j = _nearest(x, xi)
        if j < 0 or abs(x[j] - xi) >= tol_2theta:
            near = "none" if j < 0 else f"nearest {x[j]:.6f} (Δ={x[j] - xi:+.2e})"
            problems.append(f"missing peak 2θ={xi:.6f} I={yi:.4f} ({near})")
            continue
        d2t.append(abs(x[j] - xi))
        dI.append(abs(y[j] - yi))
        if abs(y[j] - yi) >= tol_intensity:
            problems.append(f"intensity at 2θ={xi:.6f}: pymatgen {yi:.5f} vs xtaljax {y[j]:.5f}")
    for xi, yi in zip(x, y):
        if yi < min_intensity:
            continue
        j = _nearest(ref_x, xi)
        if j < 0 or abs(ref_x[j] - xi) >= tol_2theta:
            problems.append(f"extra peak 2θ={xi:.6f} I={yi:.4f}")
    ok = not problems
    if len(ref_x) == len(x):
        fd2t = float(np.max(np.abs(ref_x - x), initial=0.0))
        fdI = float(np.max(np.abs(ref_y - y), initial=0.0))
        full = ok and fd2t < tol_2theta and fdI < tol_intensity
    else:
        fd2t = fdI = float("nan")
        full = False
    return Comparison(ok=ok, full_match=full, n_ref=len(ref_x), n_test=len(x), n_compared=n_compared,
                      max_d2theta=float(max(d2t)), max_dI=float(max(dI)), full_max_d2theta=fd2t,
                      full_max_dI=fdI, problems=problems)


class PymatgenError(RuntimeError):
    """pymatgen itself could not compute the pattern (counted separately, not an xtaljax failure)."""


def pymatgen_pattern(structure, wavelength="CuKa", two_theta_range=TWO_THETA_RANGE, calc=None):
    """pymatgen's ``(x, y)``; raises :class:`PymatgenError` if pymatgen fails or returns NaN."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    calc = calc or XRDCalculator(wavelength=wavelength)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            p = calc.get_pattern(structure, two_theta_range=two_theta_range)
    except Exception as exc:  # noqa: BLE001 - any pymatgen failure is reported, not raised
        raise PymatgenError(f"{type(exc).__name__}: {exc}") from exc
    x, y = np.asarray(p.x, np.float64), np.asarray(p.y, np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise PymatgenError("non-finite pattern")
    return x, y


def xtaljax_pattern(structure, wavelength="CuKa", two_theta_range=TWO_THETA_RANGE):
    """xtaljax's ``(x, y)`` from ``xtaljax.sticks`` on the Structure itself (float64)."""
    import xtaljax

    t = xtaljax.sticks(structure, wavelength, two_theta_range)
    return np.asarray(t.two_theta, np.float64), np.asarray(t.intensity, np.float64)


def compare_structure(structure, wavelength="CuKa", two_theta_range=TWO_THETA_RANGE, *, calc=None, **tol) -> Comparison:
    """Compute both patterns for ``structure`` and compare them (raises PymatgenError if pymatgen fails)."""
    rx, ry = pymatgen_pattern(structure, wavelength, two_theta_range, calc)
    x, y = xtaljax_pattern(structure, wavelength, two_theta_range)
    return compare_patterns(rx, ry, x, y, **tol)


def format_peaks(structure, wavelength="CuKa", two_theta_range=TWO_THETA_RANGE, lo=None, hi=None) -> str:
    """Both peak lists side by side (for digging into a failure)."""
    rx, ry = pymatgen_pattern(structure, wavelength, two_theta_range)
    x, y = xtaljax_pattern(structure, wavelength, two_theta_range)
    lines = [f"{'pymatgen 2θ':>14} {'I':>10} | {'xtaljax 2θ':>14} {'I':>10}"]
    allx = sorted(set(np.round(np.concatenate([rx, x]), 6)))
    for v in allx:
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            continue
        i, j = _nearest(rx, v), _nearest(x, v)
        a = f"{rx[i]:14.6f} {ry[i]:10.5f}" if i >= 0 and abs(rx[i] - v) < 5e-7 else " " * 25
        b = f"{x[j]:14.6f} {y[j]:10.5f}" if j >= 0 and abs(x[j] - v) < 5e-7 else ""
        lines.append(f"{a} | {b}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def read_rows(name: str, limit: int = 0) -> list[dict]:
    """Rows of a CDVAE-format CSV (``limit`` 0 = all), each with ``id`` and ``cif``."""
    csv.field_size_limit(10**8)
    with open(DATASETS[name], newline="") as fh:
        rows = []
        for i, r in enumerate(csv.DictReader(fh)):
            if limit and i >= limit:
                break
            rows.append({"row": i, "id": r.get("material_id") or str(i), "cif": r["cif"], "raw": r})
    return rows


def parse_cif(cif: str):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------

def machine_info() -> dict:
    import jax
    import pymatgen.core

    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        pmg = version("pymatgen")
    except Exception:  # noqa: BLE001
        pmg = getattr(pymatgen.core, "__version__", "?")
    import xtaljax

    return {"python": platform.python_version(), "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "pymatgen": pmg, "numpy": np.__version__, "xtaljax": xtaljax.__version__,
            "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def run_dataset(name: str, rows: list[dict], structures: list, wavelength: str, progress: bool = True) -> dict:
    from pymatgen.analysis.diffraction.xrd import XRDCalculator
    from tqdm import tqdm

    calc = XRDCalculator(wavelength=wavelength)
    res = {"n_rows": len(rows), "n_structures": 0, "n_ok": 0, "n_failing": 0, "n_full_match": 0,
           "n_pymatgen_error": 0, "n_parse_error": 0, "n_peaks_compared": 0, "n_peaks_total_pymatgen": 0,
           "max_abs_d2theta": 0.0, "max_abs_dI": 0.0, "full_max_abs_d2theta": 0.0, "full_max_abs_dI": 0.0,
           "time_pymatgen_s": 0.0, "time_xtaljax_cold_s": 0.0, "time_xtaljax_warm_s": 0.0,
           "failing": [], "not_full_match": [], "pymatgen_errors": [], "parse_errors": []}
    for r, s in tqdm(list(zip(rows, structures)), desc=f"{name} {wavelength}", disable=not progress, mininterval=2):
        if isinstance(s, Exception):
            res["n_parse_error"] += 1
            res["parse_errors"].append({"id": r["id"], "row": r["row"], "reason": f"{type(s).__name__}: {s}"})
            continue
        t0 = time.perf_counter()
        try:
            rx, ry = pymatgen_pattern(s, wavelength, TWO_THETA_RANGE, calc)
        except PymatgenError as exc:
            res["n_pymatgen_error"] += 1
            res["pymatgen_errors"].append({"id": r["id"], "row": r["row"], "reason": str(exc)})
            continue
        t1 = time.perf_counter()
        res["time_pymatgen_s"] += t1 - t0
        res["n_structures"] += 1
        try:
            xtaljax_pattern(s, wavelength)  # first call: includes any compilation for a new shape bucket
            t2 = time.perf_counter()
            x, y = xtaljax_pattern(s, wavelength)  # warm
            t3 = time.perf_counter()
        except Exception as exc:  # noqa: BLE001
            res["n_failing"] += 1
            res["failing"].append({"id": r["id"], "row": r["row"], "reason": f"xtaljax raised {type(exc).__name__}: {exc}"})
            continue
        res["time_xtaljax_cold_s"] += t2 - t1
        res["time_xtaljax_warm_s"] += t3 - t2
        c = compare_patterns(rx, ry, x, y)
        res["n_peaks_compared"] += c.n_compared
        res["n_peaks_total_pymatgen"] += c.n_ref
        res["max_abs_d2theta"] = max(res["max_abs_d2theta"], c.max_d2theta)
        res["max_abs_dI"] = max(res["max_abs_dI"], c.max_dI)
        if c.n_ref == c.n_test:
            res["full_max_abs_d2theta"] = max(res["full_max_abs_d2theta"], c.full_max_d2theta)
            res["full_max_abs_dI"] = max(res["full_max_abs_dI"], c.full_max_dI)
        if c.ok:
            res["n_ok"] += 1
        else:
            res["n_failing"] += 1
            res["failing"].append({"id": r["id"], "row": r["row"], "reason": c.reason})
        if c.full_match:
            res["n_full_match"] += 1
        else:
            res["not_full_match"].append({"id": r["id"], "row": r["row"], "n_pymatgen": c.n_ref, "n_xtaljax": c.n_test,
                                          "full_max_abs_d2theta": c.full_max_d2theta, "full_max_abs_dI": c.full_max_dI})
    for k in ("time_pymatgen_s", "time_xtaljax_cold_s", "time_xtaljax_warm_s"):
        res[k] = round(res[k], 3)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mp20,perov5,carbon24", help="comma list of mp20, perov5, carbon24")
    ap.add_argument("--limit-mp20", type=int, default=0, help="first N rows (0 = all)")
    ap.add_argument("--limit-perov", type=int, default=500, help="first N test rows (0 = all)")
    ap.add_argument("--limit-carbon", type=int, default=500, help="first N test rows (0 = all)")
    ap.add_argument("--wavelength", default="CuKa,MoKa",
                    help="comma list of pymatgen wavelength names (default CuKa,MoKa; the first is the primary check)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "validate_pymatgen.json"))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    for n in names:
        if n not in DATASETS:
            ap.error(f"unknown dataset {n!r} (choose from {', '.join(DATASETS)})")
        if not DATASETS[n].exists():
            ap.error(f"dataset file missing: {DATASETS[n]}")
    limits = {"mp20": args.limit_mp20, "perov5": args.limit_perov, "carbon24": args.limit_carbon}
    wavelengths = [w.strip() for w in args.wavelength.split(",") if w.strip()]

    t_start = time.perf_counter()
    out = {"criteria": {"two_theta_range": list(TWO_THETA_RANGE), "min_intensity": MIN_INTENSITY,
                        "tol_2theta_deg": TOL_2THETA, "tol_intensity": TOL_INTENSITY,
                        "xtaljax_input": "pymatgen Structure (float64)",
                        "time_xtaljax_warm": "second xtaljax.sticks call per structure (compiled)",
                        "time_xtaljax_cold": "first call, includes jit compilation for new size buckets"},
           "machine": machine_info(), "args": vars(args), "results": {}}
    data = {}
    for n in names:
        rows = read_rows(n, limits[n])
        structs = []
        for r in rows:
            try:
                structs.append(parse_cif(r["cif"]))
            except Exception as exc:  # noqa: BLE001
                structs.append(exc)
        data[n] = (rows, structs)
    for wl in wavelengths:
        out["results"][wl] = {}
        for n in names:
            out["results"][wl][n] = run_dataset(n, *data[n], wl, progress=not args.no_progress)
    out["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    n_fail = sum(r["n_failing"] for w in out["results"].values() for r in w.values())
    out["ok"] = n_fail == 0

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1, default=float)
        fh.write("\n")

    hdr = (f"{'λ':<5} {'dataset':<9} {'n':>5} {'fail':>4} {'full':>5} {'pmgErr':>6} {'peaks≥0.5':>9} "
           f"{'max|Δ2θ|°':>10} {'max|ΔI|':>9} {'t_pmg s':>8} {'t_xj warm':>9} {'t_xj cold':>9}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for wl, per in out["results"].items():
        for n, r in per.items():
            print(f"{wl:<5} {n:<9} {r['n_structures']:>5} {r['n_failing']:>4} {r['n_full_match']:>5} "
                  f"{r['n_pymatgen_error'] + r['n_parse_error']:>6} {r['n_peaks_compared']:>9} "
                  f"{r['max_abs_d2theta']:>10.2e} {r['max_abs_dI']:>9.2e} {r['time_pymatgen_s']:>8.1f} "
                  f"{r['time_xtaljax_warm_s']:>9.1f} {r['time_xtaljax_cold_s']:>9.1f}")
            for f in r["failing"][:10]:
                print(f"    FAIL {f['id']}: {f['reason']}")
            for f in (r["pymatgen_errors"] + r["parse_errors"])[:5]:
                print(f"    pymatgen/parse error {f['id']}: {f['reason']}")
    print(f"\n{'OK' if out['ok'] else 'FAILED'}: {n_fail} failing; wrote {args.out} ({out['total_wall_s']} s)")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
