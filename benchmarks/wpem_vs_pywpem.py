"""WPEM head-to-head on the Mn2O3 lab pattern: PyWPEM (PyPI ``pyxplore``) against ``xtaljax decompose``.

Same data (``shared/data/patterns/mn2o3_lab_xray``: ``intensity.csv``, ``Mn2O3.cif``), same
machine, same run. PyWPEM pins an old numpy, so it runs in its own virtual environment
(``benchmarks/.venv-pywpem`` by default, made with ``python -m venv`` + ``pip install pyxplore``
and reused when present) through a driver script written into a scratch folder (PyWPEM writes its
files into the working directory). The driver follows PyWPEM's tutorial 1 (Bin-Cao/PyWPEM,
``tutorials/1basic_opt/1st.ipynb``, MIT) call for call:

    intensity_csv = pd.read_csv('intensity.csv', header=None)
    var = WPEM.BackgroundFit(intensity_csv, lowAngleRange=17, poly_n=13, bac_split=16, bac_num=300)
    # copy ConvertedDocuments/bac.csv and no_bac_intensity.csv into the working directory
    latt, AtomCoordinates, des = WPEM.CIFpreprocess(filepath='Mn2O3.cif', two_theta_range=(15, 75))
    # copy output_xrd/Mn2O3HKL.csv to peak0.csv
    WPEM.XRDfit([1.540593, 1.544414], var, [latt], 'no_bac_intensity.csv', 'intensity.csv', 'bac.csv',
                subset_number=11, low_bound=20, up_bound=70, bta=0.85, iter_max=50, asy_C=0,
                InitializationEpoch=0)

(``iter_max`` from ``--pywpem-iterations``.) Then xtaljax runs in this process through its
command-line entry point, twice (cold: first call, includes JIT compilation; warm: second call
in the same process). Both fitted curves are scored under the same named definitions:

* ``wR_all_w1/max(y,1)``: 100·√(Σ w (yo − yc)² / Σ w yo²), w = 1/max(yo, 1), every point (the
  GSAS-II wR formula with PyWPEM's old Poisson weights; ``xtaljax.metrics.rwp_wpem``), and
  ``Rp_all``: 100·Σ|yo − yc| / Σ yo, every point.
* ``pywpem_2026.10_subset``: :func:`xtaljax.em.wpem.pywpem_subset_factors` — only the points
  whose net intensity (yo − background) exceeds 5 % of its maximum, weights 1/yo. The point set
  depends on the background, so it is given with each program's own background and with one
  common background (PyWPEM's ``BackgroundFit`` curve) for both.

PyWPEM's final curve (``DecomposedComponents/fitting_profile.csv``) is its peaks on an
*updated* background (``upbackground.csv``): after the EM loop XRDfit (MODEL='REFINEMENT') moves
the background at every point by the residual clipped to ±Var (Var = the rms scatter that
``BackgroundFit`` returns; 341 counts here), so residuals within ±Var vanish and larger ones
shrink by Var — its reported Rp/Rwp score that curve. The peaks on ``BackgroundFit``'s own
background (the curve its per-iteration R-factors score) are scored too (``pre_update``).

    python benchmarks/wpem_vs_pywpem.py                      # full: PyWPEM 50 iterations (~8-12 min)
    python benchmarks/wpem_vs_pywpem.py --skip-pywpem        # xtaljax half only
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "patterns" / "mn2o3_lab_xray"
A_TUTORIAL = 9.40863  # PyWPEM tutorial 1's refined a (Å)

DRIVER = r'''
"""PyWPEM tutorial 1 workflow (written and run by benchmarks/wpem_vs_pywpem.py)."""
import glob, json, os, shutil, sys, time, traceback
T0 = time.perf_counter()
cfg = json.load(open(sys.argv[1]))
out = {"stage": "import"}

def dump():
    out["total_seconds_in_driver"] = time.perf_counter() - T0
    with open(cfg["result"], "w") as f:
        json.dump(out, f, indent=1, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))

try:
    import matplotlib
    matplotlib.use("Agg")
    import numpy as np
    import pandas as pd
    t = time.perf_counter()
    from PyXplore import WPEM
    from PyXplore.EMBraggOpt.EMBraggSolver import WPEMsolver
    out["import_seconds"] = time.perf_counter() - t

    # record what XRDfit's solver returns (Rp, Rwp, iterations, stop flag, lattices); behaviour unchanged
    _orig = WPEMsolver.cal_output_result
    def _capture(self):
        res = _orig(self)
        out["solver"] = dict(zip(["Rp", "Rwp", "iterations", "stop_flag", "lattice"], res))
        return res
    WPEMsolver.cal_output_result = _capture

    out["stage"] = "BackgroundFit"
    t = time.perf_counter()
    intensity_csv = pd.read_csv("intensity.csv", header=None)
    var = WPEM.BackgroundFit(intensity_csv, lowAngleRange=17, poly_n=13, bac_split=16, bac_num=300)
    out["background_fit_seconds"] = time.perf_counter() - t
    out["var"] = float(np.asarray(var)) if np.ndim(var) == 0 else np.asarray(var).tolist()
    out["var_type"] = type(var).__name__
    # tutorial step 3: copy bac.csv and no_bac_intensity.csv from ConvertedDocuments to the root
    for name in ("bac.csv", "no_bac_intensity.csv"):
        shutil.copy2(os.path.join("ConvertedDocuments", name), name)

    out["stage"] = "CIFpreprocess"
    t = time.perf_counter()
    latt, AtomCoordinates, des = WPEM.CIFpreprocess(filepath="Mn2O3.cif", two_theta_range=tuple(cfg["cif_range"]))
    out["cif_preprocess_seconds"] = time.perf_counter() - t
    out["lattice_start"] = [float(v) for v in latt]
    hkl = sorted(glob.glob(os.path.join("output_xrd", "*HKL.csv")))
    if not hkl:
        raise FileNotFoundError("CIFpreprocess wrote no output_xrd/*HKL.csv")
    shutil.copy2(hkl[0], "peak0.csv")  # tutorial step 5
    peaks = pd.read_csv("peak0.csv")
    out["hkl_file"] = hkl[0]
    out["n_reflections"] = int(len(peaks))
    out["peak0_columns"] = list(map(str, peaks.columns))
    out["peak0"] = peaks.astype(object).values.tolist()

    out["stage"] = "XRDfit"
    t = time.perf_counter()
    durtime, ini_CL = WPEM.XRDfit(
        cfg["wavelength"], var, [latt], "no_bac_intensity.csv", "intensity.csv", "bac.csv",
        subset_number=11, low_bound=20, up_bound=70, bta=0.85, iter_max=cfg["iter_max"], asy_C=0,
        InitializationEpoch=0)
    out["xrdfit_seconds"] = time.perf_counter() - t
    out["durtime"] = durtime
    out["lattice"] = [np.asarray(c, float).tolist() for c in ini_CL]
    out["stage"] = "done"
except BaseException as exc:  # noqa: BLE001 - reported to the parent, then a nonzero exit
    out["error"] = f"{type(exc).__name__}: {exc}"
    out["traceback"] = traceback.format_exc()
    dump()
    sys.exit(1)
dump()
'''


# ----------------------------------------------------------------------------- PyWPEM side

def _versions(py: str) -> dict:
    code = ("import json, sys, importlib.metadata as m\n"
            "v = {'python': sys.version.split()[0]}\n"
            "for n in ('pyxplore', 'numpy', 'scipy', 'pandas', 'tensorflow', 'pymatgen'):\n"
            "    try: v[n] = m.version(n)\n"
            "    except Exception: v[n] = None\n"
            "print(json.dumps(v))")
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"cannot read versions in {py}: {r.stderr.strip().splitlines()[-1:] }")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ensure_venv(venv: Path, log: Path) -> str:
    """Create (or reuse) the PyWPEM venv; return its python. Raises RuntimeError on failure."""
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating {venv} (python -m venv) ...", file=sys.stderr, flush=True)
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"python -m venv {venv} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    chk = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('pyxplore'))"],
                         capture_output=True, text=True)
    if chk.returncode != 0:
        print(f"pip install pyxplore into {venv} (takes minutes: tensorflow) ...", file=sys.stderr, flush=True)
        with open(log, "w") as f:
            r = subprocess.run([str(py), "-m", "pip", "install", "pyxplore"], stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
            raise RuntimeError(f"pip install pyxplore failed (exit {r.returncode}): {tail}; log {log}")
    return str(py)


def _read_xy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    a = np.loadtxt(path, delimiter=",", ndmin=2)
    return a[:, 0], a[:, 1]


def run_pywpem(args, work: Path) -> dict:
    out: dict = {"venv": str(args.pywpem_venv)}
    py = ensure_venv(Path(args.pywpem_venv), work / "pip_install.log")
    out["versions"] = _versions(py)
    scratch = work / "pywpem_run"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    shutil.copy2(args.pattern, scratch / "intensity.csv")
    shutil.copy2(args.cif, scratch / "Mn2O3.cif")
    (work / "pywpem_driver.py").write_text(DRIVER)
    cfg = {"iter_max": args.pywpem_iterations, "wavelength": [1.540593, 1.544414], "cif_range": [15, 75],
           "result": str(scratch / "driver_result.json")}
    (work / "pywpem_config.json").write_text(json.dumps(cfg))
    env = dict(os.environ, MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    log = work / "pywpem_stdout.log"
    print(f"running PyWPEM ({args.pywpem_iterations} EM iterations) in {scratch}; log {log}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            r = subprocess.run([py, str(work / "pywpem_driver.py"), str(work / "pywpem_config.json")], cwd=scratch,
                               env=env, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = None
    out["wall_seconds_total"] = time.perf_counter() - t0
    out["scratch_dir"] = str(scratch)
    out["log"] = str(log)
    res_path = scratch / "driver_result.json"
    drv = json.loads(res_path.read_text()) if res_path.exists() else {}
    if rc is None:
        raise RuntimeError(f"PyWPEM did not finish within --timeout {args.timeout} s (stage {drv.get('stage')}); log {log}")
    if rc != 0:
        raise RuntimeError(f"PyWPEM exited {rc} at stage {drv.get('stage')}: {drv.get('error', 'no driver result')}; log {log}")
    out["driver"] = {k: v for k, v in drv.items() if k not in ("peak0", "traceback")}
    out["reflections_peak0"] = {"columns": drv.get("peak0_columns"), "rows": drv.get("peak0")}
    for k in ("import_seconds", "background_fit_seconds", "cif_preprocess_seconds", "xrdfit_seconds",
              "total_seconds_in_driver"):
        out[k] = drv.get(k)
    sol = drv.get("solver", {})
    out["reported"] = {"Rp": sol.get("Rp"), "Rwp": sol.get("Rwp"), "iterations": sol.get("iterations"),
                       "stop_flag": sol.get("stop_flag"),
                       "definition": "PyWPEM 2026.10 calculate_r_factors on its final curve with the updated "
                                     "background: points with net > 5 % of max net, weights 1/y"}
    lat = drv.get("lattice") or []
    out["a"] = float(lat[0][0]) if lat else None
    out["n_reflections"] = drv.get("n_reflections")
    # per-iteration printed lines (pre-update background) and the post-update line
    text = log.read_text(errors="replace")
    it = re.findall(r"Rp:([0-9.]+) \| Rwp:([0-9.]+)", text)
    post = re.findall(r"After update the background :\s+Rp = ([0-9.]+) \| Rwp = ([0-9.]+)", text)
    out["last_iteration_printed"] = ({"Rp": float(it[-1][0]), "Rwp": float(it[-1][1]),
                                      "definition": "subset definition, BackgroundFit background (before the update)"}
                                     if it else None)
    out["after_background_update_printed"] = ({"Rp": float(post[-1][0]), "Rwp": float(post[-1][1])} if post else None)
    lat_lines = re.findall(r"\[array\(\[\s*([0-9.]+),", text)
    out["a_per_iteration"] = [float(v) for v in lat_lines]
    # curves
    dc = scratch / "DecomposedComponents"
    curves = {}
    if (dc / "fitting_profile.csv").exists():
        x, yc = _read_xy(dc / "fitting_profile.csv")
        curves["two_theta"], curves["final"] = x, yc
        if (dc / "upbackground.csv").exists():
            _, bup = _read_xy(dc / "upbackground.csv")
            curves["background_updated"] = bup
        if (scratch / "ConvertedDocuments" / "bac.csv").exists():
            xb, b0 = _read_xy(scratch / "ConvertedDocuments" / "bac.csv")
            curves["background_fit"] = np.interp(x, xb, b0)
        if "background_updated" in curves and "background_fit" in curves:
            curves["pre_update"] = curves["background_fit"] + (curves["final"] - curves["background_updated"])
    out["_curves"] = curves
    out["curve_files"] = {"final": str(dc / "fitting_profile.csv"), "background_updated": str(dc / "upbackground.csv"),
                          "background_fit": str(scratch / "ConvertedDocuments" / "bac.csv")}
    return out


# ----------------------------------------------------------------------------- xtaljax side

def run_xtaljax(args, work: Path) -> dict:
    import jax

    t = time.perf_counter()
    import xtaljax
    import xtaljax.em.report as report
    import xtaljax.em.wpem as wpem_mod
    import xtaljax.metrics as metrics_mod
    from xtaljax import cli as cli_mod
    from xtaljax.cli import main as cli_main
    import_seconds = time.perf_counter() - t
    code = {}  # the source actually imported (the working tree may hold uncommitted edits)
    for m in (cli_mod, wpem_mod, report, metrics_mod):
        f = Path(m.__file__)
        code[str(f.relative_to(REPO)) if f.is_relative_to(REPO) else str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]

    captured: list = []
    orig = report.write_decomposition

    def capture(d, instrument, out_dir, source="", **kw):  # keep the Decomposition for scoring the curve
        captured.append(d)
        return orig(d, instrument, out_dir, source, **kw)

    extra = shlex.split(args.xtaljax_args or "")
    runs = []
    # the CLI keeps compiled programs in a persistent cache: start from an empty one, so "cold" is
    # a first run on a machine; the new-process runs below measure a later run with it filled
    cache = work / "jax_cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["XTALJAX_CACHE_DIR"] = str(cache)
    report.write_decomposition = capture  # cmd_decompose imports it from the module at call time
    try:
        for label in ("cold", "warm"):
            outdir = work / f"xtaljax_{label}"
            argv = ["decompose", str(args.pattern), "--phase", f"Mn2O3={args.cif}", "--wavelength", "CuKa",
                    "--out", str(outdir), *extra]
            captured.clear()
            buf = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(buf):
                rc = cli_main(argv)
            wall = time.perf_counter() - t0
            sys.stderr.write(buf.getvalue())
            runs.append({"label": label, "argv": argv, "rc": rc, "wall_seconds": wall, "outdir": str(outdir),
                         "d": captured[-1] if captured else None})
            if rc != 0:
                raise RuntimeError(f"xtaljax decompose exited {rc} ({label} run)")
    finally:
        report.write_decomposition = orig

    # whole new processes (interpreter start and imports included, as PyWPEM's total is): with the
    # cache the cold run filled, and with an empty one
    processes = {}
    for label, cache_dir in (("new_process_cached", cache), ("new_process_empty_cache", work / "jax_cache_empty")):
        shutil.rmtree(work / "jax_cache_empty", ignore_errors=True)
        argv = ["decompose", str(args.pattern), "--phase", f"Mn2O3={args.cif}", "--wavelength", "CuKa",
                "--out", str(work / f"xtaljax_{label}"), *extra]
        env = {**os.environ, "XTALJAX_CACHE_DIR": str(cache_dir)}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", "import sys; from xtaljax.cli import main; sys.exit(main(sys.argv[1:]))",
                               *argv], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"xtaljax decompose exited {proc.returncode} ({label}): {proc.stderr[-2000:]}")
        r = json.loads((work / f"xtaljax_{label}" / "result.json").read_text())
        processes[label] = {"wall_seconds": wall, "rwp_wpem": r["rwp_wpem"], "a": r["phases"][0]["lattice"]["a"],
                            "cache_entries_before": None if label != "new_process_cached" else len(list(cache.iterdir()))}

    res = json.loads((Path(runs[0]["outdir"]) / "result.json").read_text())
    res_warm = json.loads((Path(runs[1]["outdir"]) / "result.json").read_text())
    fit_csv = Path(runs[0]["outdir"]) / "fit.csv"
    d = runs[0]["d"]
    curves = {}
    fit_check = None
    if fit_csv.exists():  # columns two_theta,y_obs,y_calc,background[,difference], one header line
        with open(fit_csv) as f:
            head = [h.strip().lstrip("#").strip() for h in f.readline().split(",")]
        a = np.loadtxt(fit_csv, delimiter=",", skiprows=1, ndmin=2)
        col = {h: a[:, i] for i, h in enumerate(head)}
        curves = {"two_theta": col["two_theta"], "obs": col["y_obs"], "final": col["y_calc"]}
        if "background" in col:
            curves["background"] = col["background"]
        curve_source = str(fit_csv)
        if d is not None and np.asarray(d.y_calc).shape == curves["final"].shape:
            fit_check = {"max_abs_diff_fit_csv_vs_in_process_y_calc": float(np.max(np.abs(curves["final"] - d.y_calc))),
                         "max_abs_diff_background": (float(np.max(np.abs(curves["background"] - d.background)))
                                                     if "background" in curves else None)}
    elif d is not None:
        curves = {"two_theta": np.asarray(d.problem.two_theta), "obs": np.asarray(d.y_obs),
                  "final": np.asarray(d.y_calc), "background": np.asarray(d.background)}
        curve_source = "in-process Decomposition (decompose writes no fit.csv)"
    else:
        curve_source = None
    if d is not None and "background" not in curves:
        curves["background"] = np.asarray(d.background)
    ph = res["phases"][0]
    return {
        "versions": {"xtaljax": getattr(xtaljax, "__version__", None), "jax": jax.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "source_sha256_16": code,
        "argv": runs[0]["argv"], "extra_args": extra, "import_seconds": import_seconds,
        "wall_seconds_cold": runs[0]["wall_seconds"], "wall_seconds_warm": runs[1]["wall_seconds"],
        "wall_seconds_new_process_cached": processes["new_process_cached"]["wall_seconds"],
        "wall_seconds_new_process_empty_cache": processes["new_process_empty_cache"]["wall_seconds"],
        "new_processes": processes,
        "timing_definitions": {
            "cold": "first decompose call in this process (CLI main, in-process), empty compilation cache: "
                    "XLA compiles every program",
            "warm": "second call in the same process: compiled programs reused from memory",
            "new_process_cached": "a new Python process running the CLI (interpreter start and imports included), "
                                  "compiled programs loaded from the persistent cache the cold run filled",
            "new_process_empty_cache": "a new Python process with an empty cache: a first run on a machine"},
        "jax_persistent_cache_dir": jax.config.jax_compilation_cache_dir,
        "reported": {k: res.get(k) for k in ("rwp", "rwp_wpem", "rp", "rwp_pywpem_subset", "rp_pywpem_subset",
                                                "n_iterations")},
        "reported_definitions": res.get("definitions"),
        "reported_warm": {k: res_warm.get(k) for k in ("rwp_wpem", "rp", "n_iterations")},
        "a": ph["lattice"]["a"], "a_esd": ph["lattice_esd"]["a"], "a_warm": res_warm["phases"][0]["lattice"]["a"],
        "zero": res.get("zero"), "n_reflections": ph.get("n_reflections"), "n_components": ph.get("n_components"),
        "seconds_in_decompose": res.get("seconds"),
        "outdir": runs[0]["outdir"], "curve_source": curve_source, "fit_csv_check": fit_check, "_curves": curves,
    }


def run_xtaljax_same_background(args, work: Path, bac: str, obs_x, obs_y) -> dict:
    """``xtaljax decompose`` with PyWPEM's BackgroundFit curve held fixed (``--background-file``),
    with Caglioti and with free per-component widths: the peaks of both programs on one
    background, scored like PyWPEM's ``pre_update`` curve."""
    from xtaljax.cli import main as cli_main

    out = {"background_file": bac}
    for label, extra in (("caglioti_widths", []), ("free_widths", ["--widths", "free"])):
        outdir = work / f"xtaljax_pywpem_background_{label}"
        argv = ["decompose", str(args.pattern), "--phase", f"Mn2O3={args.cif}", "--wavelength", "CuKa",
                "--background-file", bac, "--max-iter", "1000", *extra, "--out", str(outdir)]
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            rc = cli_main(argv)
        wall = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"xtaljax decompose exited {rc} ({label}, fixed background)")
        res = json.loads((outdir / "result.json").read_text())
        a = np.loadtxt(outdir / "fit.csv", delimiter=",", skiprows=1, ndmin=2)
        yo = _on_grid(a[:, 0], obs_x, obs_y)
        out[label] = {"argv": argv, "wall_seconds": wall, "n_iterations": res["n_iterations"],
                      "a": res["phases"][0]["lattice"]["a"], "a_esd": res["phases"][0]["lattice_esd"]["a"],
                      "scores": score(yo, a[:, 2], a[:, 3])}
    return out


# ----------------------------------------------------------------------------- scoring

def score(yo, yc, background=None) -> dict:
    from xtaljax import metrics
    from xtaljax.em.wpem import pywpem_subset_factors

    s = {"wR_all_w1/max(y,1)": metrics.rwp_wpem(yo, yc), "Rp_all": metrics.rp(yo, yc), "n_all": int(yo.size)}
    if background is not None:
        f = pywpem_subset_factors(yo, yc, background)
        s.update({"pywpem_2026.10_subset_Rwp": f["rwp_pywpem_subset"], "pywpem_2026.10_subset_Rp": f["rp_pywpem_subset"],
                  "n_subset": f["n_subset"]})
    return s


def _on_grid(x_ref, x, v):
    idx = {round(float(t), 6): i for i, t in enumerate(x)}
    sel = [idx.get(round(float(t), 6)) for t in x_ref]
    if any(i is None for i in sel):
        return None
    return np.asarray(v)[sel]


def compare(obs_x, obs_y, xj: dict | None, pw: dict | None) -> dict:
    out: dict = {"definitions": {
        "wR_all_w1/max(y,1)": "100*sqrt(sum w (yo-yc)^2 / sum w yo^2), w = 1/max(yo,1), all points of the common grid",
        "Rp_all": "100*sum|yo-yc| / sum yo, all points of the common grid",
        "pywpem_2026.10_subset_*": "xtaljax.em.wpem.pywpem_subset_factors(yo, yc, background): points with "
                                   "yo-background > 5 % of its max, Rwp weights 1/yo, Rp over the same points",
        "own_background": "each program's own background decides the subset (PyWPEM: its updated background for "
                          "'final', BackgroundFit's for 'pre_update'; xtaljax: its Chebyshev background)",
        "common_background": "PyWPEM's BackgroundFit background (ConvertedDocuments/bac.csv) decides the subset "
                             "for both programs: same points"}}
    grid = obs_x
    if pw and pw.get("_curves", {}).get("two_theta") is not None:
        grid = np.asarray(pw["_curves"]["two_theta"])
    if xj and xj.get("_curves", {}).get("two_theta") is not None:
        gx = np.asarray(xj["_curves"]["two_theta"])
        keep = {round(float(t), 6) for t in gx}
        grid = np.asarray([t for t in grid if round(float(t), 6) in keep])
    yo = _on_grid(grid, obs_x, obs_y)
    out["common_grid"] = {"n": int(grid.size), "two_theta_min": float(grid.min()), "two_theta_max": float(grid.max())}
    common_bkg = None
    if pw and "background_fit" in pw.get("_curves", {}):
        c = pw["_curves"]
        common_bkg = _on_grid(grid, c["two_theta"], c["background_fit"])
    if pw and pw.get("_curves"):
        c = pw["_curves"]
        for name, bkey in (("final", "background_updated"), ("pre_update", "background_fit")):
            if name not in c:
                continue
            yc = _on_grid(grid, c["two_theta"], c[name])
            own = _on_grid(grid, c["two_theta"], c[bkey]) if bkey in c else None
            out[f"pywpem_{name}"] = {"own_background": score(yo, yc, own)}
            if common_bkg is not None:
                out[f"pywpem_{name}"]["common_background"] = score(yo, yc, common_bkg)
    if xj and xj.get("_curves"):
        c = xj["_curves"]
        yc = _on_grid(grid, c["two_theta"], c["final"])
        own = _on_grid(grid, c["two_theta"], c["background"]) if "background" in c else None
        out["xtaljax"] = {"own_background": score(yo, yc, own)}
        if common_bkg is not None:
            out["xtaljax"]["common_background"] = score(yo, yc, common_bkg)
    return out


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", default=str(DATA / "intensity.csv"))
    ap.add_argument("--cif", default=str(DATA / "Mn2O3.cif"))
    ap.add_argument("--pywpem-venv", default=str(REPO / "benchmarks" / ".venv-pywpem"))
    ap.add_argument("--pywpem-iterations", type=int, default=50)
    ap.add_argument("--skip-pywpem", action="store_true", help="run only the xtaljax half (quick check)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for the PyWPEM subprocess")
    ap.add_argument("--xtaljax-args", default="",
                    help="extra `xtaljax decompose` options, one string (shlex-split); write it with '=', "
                         "e.g. --xtaljax-args='--asymmetry --max-iter 400'")
    ap.add_argument("--workdir", help="scratch folder (default: a new one under the system temp dir)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "wpem_vs_pywpem.json"))
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="wpem_vs_pywpem_"))
    work.mkdir(parents=True, exist_ok=True)
    obs = np.loadtxt(args.pattern, delimiter=",", ndmin=2)
    obs_x, obs_y = obs[:, 0], obs[:, 1]

    import jax

    dev = jax.devices()[0]
    def git(*a):
        try:
            r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30)
            return r.stdout.rstrip("\n") if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    result: dict = {
        "benchmark": "wpem_vs_pywpem",
        "git": {"head": git("rev-parse", "HEAD"),
                "uncommitted_xtaljax_files": (git("status", "--porcelain", "--", "xtaljax") or "").splitlines()},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": {"platform": dev.platform, "device_kind": dev.device_kind, "n_devices": jax.device_count(),
                   "cpu": platform.machine(), "n_cpus": os.cpu_count(),
                   "note": "1/5/15-min load averages below: the machine is shared, other jobs inflate both wall times"},
        "platform": platform.platform(),
        "data": {"pattern": str(args.pattern), "cif": str(args.cif), "n_points": int(obs_x.size),
                 "two_theta": [float(obs_x.min()), float(obs_x.max())]},
        "settings": {
            "pywpem_iterations": args.pywpem_iterations, "skip_pywpem": args.skip_pywpem, "timeout_s": args.timeout,
            "pywpem_calls": {
                "BackgroundFit": "intensity_csv (pd.read_csv(header=None)), lowAngleRange=17, poly_n=13, bac_split=16, "
                                 "bac_num=300 (defaults otherwise: LFctg=0.5, window_length=17, polyorder=3, "
                                 "bac_var_type='constant')",
                "CIFpreprocess": "filepath='Mn2O3.cif', two_theta_range=(15, 75)",
                "XRDfit": "wavelength=[1.540593, 1.544414], Var=var, Lattice_constants=[latt], 'no_bac_intensity.csv', "
                          "'intensity.csv', 'bac.csv', subset_number=11, low_bound=20, up_bound=70, bta=0.85, "
                          f"iter_max={args.pywpem_iterations}, asy_C=0, InitializationEpoch=0 (defaults otherwise: "
                          "two_theta_range=None, MODEL='REFINEMENT', cpu=4, lock_num=2, iter_limit=0.05)",
                "source": "Bin-Cao/PyWPEM tutorials/1basic_opt/1st.ipynb"},
            "xtaljax_args": args.xtaljax_args, "workdir": str(work)},
        "reference": {"a_tutorial": A_TUTORIAL,
                      "pywpem_tutorial": "Rwp 2.12 %, Rp 1.01 %, a = 9.40863 Å (2025-07 version, 24 reflections)",
                      "data_readme_rerun": "PyWPEM 2026.10.16, 50 iterations: Rwp 1.948 %, Rp 1.177 %, a = 9.41065 Å, "
                                           "~12 min on 2 cores"},
        "results": {}, "errors": {},
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    load = lambda: list(os.getloadavg()) if hasattr(os, "getloadavg") else None  # noqa: E731
    result["device"]["loadavg"] = {"start": load()}
    from xtaljax.bench import CpuMeter

    # per half: CPU time of other processes (other_cpu_s) and hypervisor steal; the wall times
    # of both programs are only comparable when those stay near 0
    acct = result["device"]["cpu_accounting"] = {}
    meter = CpuMeter()
    pw = None
    if args.skip_pywpem:
        result["results"]["pywpem"] = {"skipped": True}
    else:
        try:
            pw = run_pywpem(args, work)
        except Exception as exc:  # noqa: BLE001 - one line, and the xtaljax half still runs
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"wpem_vs_pywpem: PyWPEM failed: {msg}", file=sys.stderr)
            result["errors"]["pywpem"] = msg
    result["device"]["loadavg"]["after_pywpem"] = load()
    if not args.skip_pywpem:
        acct["pywpem"] = meter.stop()
    meter = CpuMeter()
    xj = None
    try:
        xj = run_xtaljax(args, work)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"wpem_vs_pywpem: xtaljax failed: {msg}", file=sys.stderr)
        traceback.print_exc()
        result["errors"]["xtaljax"] = msg

    result["device"]["loadavg"]["after_xtaljax"] = load()
    acct["xtaljax"] = meter.stop()
    bac = (pw or {}).get("curve_files", {}).get("background_fit")
    if xj and bac and Path(bac).exists():  # after the timed half: not in its CPU accounting
        try:
            result["results"]["xtaljax_on_pywpem_background"] = run_xtaljax_same_background(args, work, bac, obs_x, obs_y)
        except Exception as exc:  # noqa: BLE001
            result["errors"]["xtaljax_on_pywpem_background"] = str(exc).strip().splitlines()[0]
    cmp = compare(obs_x, obs_y, xj, pw) if (xj or pw) else {}
    for key, side in (("pywpem", pw), ("xtaljax", xj)):
        if side is not None:
            r = {k: v for k, v in side.items() if not k.startswith("_")}
            if r.get("a") is not None:
                r["abs_a_minus_tutorial"] = abs(r["a"] - A_TUTORIAL)
            result["results"][key] = r
    result["results"]["scores_same_definitions"] = cmp
    if pw and xj:
        result["results"]["speed_ratio"] = {
            "pywpem_total_over_xtaljax_cold": pw["wall_seconds_total"] / xj["wall_seconds_cold"],
            "pywpem_total_over_xtaljax_warm": pw["wall_seconds_total"] / xj["wall_seconds_warm"],
            "pywpem_total_over_xtaljax_new_process_cached": pw["wall_seconds_total"] / xj["wall_seconds_new_process_cached"],
            "pywpem_total_over_xtaljax_new_process_empty_cache": (pw["wall_seconds_total"]
                                                                  / xj["wall_seconds_new_process_empty_cache"]),
            "pywpem_xrdfit_over_xtaljax_cold": (pw["xrdfit_seconds"] / xj["wall_seconds_cold"]
                                                if pw.get("xrdfit_seconds") else None),
            "pywpem_xrdfit_over_xtaljax_warm": (pw["xrdfit_seconds"] / xj["wall_seconds_warm"]
                                                if pw.get("xrdfit_seconds") else None),
            "note": "PyWPEM total = the driver subprocess wall time (interpreter start, imports incl. TensorFlow, "
                    "BackgroundFit, CIFpreprocess, XRDfit with its plots); xtaljax = one `decompose` CLI call "
                    "in-process (cold: first call, with JIT compilation; warm: second call), or a whole new "
                    "process (new_process_*: interpreter start and imports included, like PyWPEM's total); "
                    "see results.xtaljax.timing_definitions"}
    result["wall_seconds_benchmark"] = time.perf_counter() - t_start
    out_path.write_text(json.dumps(result, indent=1, default=float))

    # summary
    print(f"wrote {out_path}")
    if pw:
        rep = pw["reported"]
        print(f"PyWPEM {pw['versions'].get('pyxplore')}: {rep['iterations']} iterations, {pw['n_reflections']} reflections, "
              f"a = {pw['a']:.5f} Å; own report Rwp {rep['Rwp']:.3f} %, Rp {rep['Rp']:.3f} % (subset, updated background); "
              f"wall {pw['wall_seconds_total']:.1f} s (XRDfit {pw['xrdfit_seconds']:.1f} s)")
    if xj:
        rep = xj["reported"]
        print(f"xtaljax: {rep['n_iterations']} iterations, {xj['n_reflections']} reflections, a = {xj['a']:.5f} Å; "
              f"Rwp(1/max(y,1)) {rep['rwp_wpem']:.3f} %, subset Rwp {rep['rwp_pywpem_subset']:.3f} %; "
              f"wall cold {xj['wall_seconds_cold']:.1f} s, warm {xj['wall_seconds_warm']:.1f} s, new process "
              f"{xj['wall_seconds_new_process_cached']:.1f} s (cache) / {xj['wall_seconds_new_process_empty_cache']:.1f} s "
              f"(empty cache)")
    for name, blk in cmp.items():
        if name in ("definitions", "common_grid"):
            continue
        for bk, s in blk.items():
            print(f"  {name:18s} [{bk:17s}] wR_all {s['wR_all_w1/max(y,1)']:.3f} %  Rp_all {s['Rp_all']:.3f} %  "
                  f"subset Rwp {s.get('pywpem_2026.10_subset_Rwp', float('nan')):.3f} %  "
                  f"Rp {s.get('pywpem_2026.10_subset_Rp', float('nan')):.3f} %  (n={s.get('n_subset')})")
    same = result["results"].get("xtaljax_on_pywpem_background")
    if same:
        for label in ("caglioti_widths", "free_widths"):
            sc_ = same[label]["scores"]
            print(f"  xtaljax on PyWPEM's background ({label}): wR_all {sc_['wR_all_w1/max(y,1)']:.3f} %  "
                  f"subset Rwp {sc_.get('pywpem_2026.10_subset_Rwp', float('nan')):.3f} %  a = {same[label]['a']:.5f} Å")
    if "speed_ratio" in result["results"]:
        sr = result["results"]["speed_ratio"]
        print(f"speed: PyWPEM/xtaljax = {sr['pywpem_total_over_xtaljax_cold']:.1f}x (cold), "
              f"{sr['pywpem_total_over_xtaljax_warm']:.1f}x (warm), "
              f"{sr['pywpem_total_over_xtaljax_new_process_cached']:.1f}x (new process, cache), "
              f"{sr['pywpem_total_over_xtaljax_new_process_empty_cache']:.1f}x (new process, empty cache)")
    for k, v in result["errors"].items():
        print(f"error ({k}): {v}")
    return 1 if "xtaljax" in result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
